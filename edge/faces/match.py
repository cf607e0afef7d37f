"""1:N matching of a face embedding against the bus's gallery of enrolled riders' templates.

A rider may have several templates; a rider's distance is that of their nearest template.
The answer carries the best rider, their distance, and the margin to the best *other* rider,
so the decision stage can insist that the match is both close and unambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Match:
    rider_id: str | None  # None when the gallery is empty
    distance: float
    margin: float  # distance of the best other rider minus ``distance`` (inf if there is none)


class Gallery:
    """Templates in memory: ``embeddings`` (N, 128) float32 and the rider id of each row."""

    def __init__(self, rider_ids: list[str], embeddings: np.ndarray, names: dict[str, str] | None = None) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        width = embeddings.shape[-1] if embeddings.ndim == 2 else 128
        embeddings = embeddings.reshape(len(rider_ids), width if len(rider_ids) == 0 else -1)  # empty: (0, width)
        self.rider_ids = np.asarray(rider_ids, dtype=object)
        self.embeddings = np.ascontiguousarray(embeddings)
        self.sq_norms = np.einsum("ij,ij->i", self.embeddings, self.embeddings)
        self.names = names or {}
        codes, self._rider_index = np.unique(self.rider_ids.astype(str), return_inverse=True)
        self._riders = codes

    def __len__(self) -> int:
        return len(self.rider_ids)

    @property
    def riders(self) -> list[str]:
        return [str(r) for r in self._riders]

    def distances(self, query: np.ndarray) -> np.ndarray:
        """Euclidean distance from ``query`` (128,) to every template."""
        q = np.asarray(query, dtype=np.float32)
        sq = self.sq_norms - 2.0 * (self.embeddings @ q) + float(q @ q)
        return np.sqrt(np.maximum(sq, 0.0))

    def match(self, query: np.ndarray) -> Match:
        if len(self) == 0:
            return Match(None, float("inf"), float("inf"))
        per_template = self.distances(query)
        per_rider = np.full(len(self._riders), np.inf, dtype=np.float64)
        np.minimum.at(per_rider, self._rider_index, per_template)
        order = np.argsort(per_rider)
        best = int(order[0])
        second = float(per_rider[order[1]]) if len(order) > 1 else float("inf")
        return Match(str(self._riders[best]), float(per_rider[best]), second - float(per_rider[best]))


# -- the identification rule ---------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5  # largest distance that counts as a match (see docs/accuracy.md)
DEFAULT_MIN_MARGIN = 0.1  # second-best rider's distance minus the best, at least


@dataclass(frozen=True)
class Rule:
    """When one frame's :class:`Match` names the rider to charge: close *and* unambiguous.

    ``second_factor`` True means the face alone may not charge anyone (the gallery is larger than
    the face can serve at the error-rate target): a match then only narrows 1:N to 1:few.
    """

    threshold: float = DEFAULT_THRESHOLD
    min_margin: float = DEFAULT_MIN_MARGIN
    second_factor: bool = False

    def accepts(self, m: Match) -> bool:
        """This frame's match names ``m.rider_id`` (before any second factor)."""
        return m.rider_id is not None and m.distance <= self.threshold and m.margin >= self.min_margin

    def near(self, m: Match) -> bool:
        """Someone is within the threshold (an accepted or an ambiguous match, not an unknown face)."""
        return m.rider_id is not None and m.distance <= self.threshold

    def charges(self, m: Match) -> str | None:
        """The rider the face alone charges, or None (refused, ambiguous, or a second factor is required)."""
        return m.rider_id if self.accepts(m) and not self.second_factor else None


#: At most this many riders share one second-factor check: the face narrows 1:N to 1:few, the code picks.
SHORTLIST = 5


def shortlist(matcher, query: np.ndarray, threshold: float, k: int = SHORTLIST) -> list[tuple[str, float]]:
    """The riders within ``threshold`` of ``query``, nearest first, at most ``k``: (rider, distance).

    ``matcher`` is any gallery with ``rider_ids`` and ``distances(query)`` per template
    (:class:`Gallery`, :class:`~edge.faces.fast_match.QuantizedGallery`)."""
    per_template = np.asarray(matcher.distances(query), dtype=np.float64)
    nearest: dict[str, float] = {}
    for rider, d in zip(np.asarray(matcher.rider_ids).astype(str), per_template, strict=True):
        if d <= threshold and d < nearest.get(rider, np.inf):
            nearest[rider] = float(d)
    return sorted(nearest.items(), key=lambda item: item[1])[:k]


def identify_match(gallery: Gallery, query: np.ndarray, rule: Rule | None = None) -> str | None:
    """The single-frame identification rule the bus applies: the rider to charge, or None.

    Without ``rule``: the default config's operating point for this gallery's number of riders."""
    rule = rule or operating_point(len(gallery.riders)).rule
    return rule.charges(gallery.match(query))


# -- the operating point: the threshold a gallery of N riders can afford ---------------------------

# The lower tail of the impostor distance distribution (an enrolled template against another
# person's photo) as a normal (mu, sigma), fitted on probit scale to the lowest 25 % of the
# project's impostor pairs by bench/identification.py (docs/accuracy.md: 46 people, 2,385 pairs;
# the bootstrap over people puts mu in 0.83-0.89 and sigma in 0.085-0.117, 90 %).
IMPOSTOR_TAIL = (0.8625, 0.1018)
# Expected wrong charges per boarding (every boarding a stranger: the worst case): at most 1 in
# 1,000,000 (issue 16's target). On the fitted tail the face alone then serves galleries up to ~60
# riders at threshold >= 0.30; riders it cannot confirm confirm with their code (the second
# factor, edge.door.second_factor) or see the driver. docs/accuracy.md gives the table.
TARGET_FPIR = 1e-6
FPIR_TARGET = TARGET_FPIR
MIN_FACE_THRESHOLD = 0.30  # below this the face alone refuses too many riders (docs/accuracy.md)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def false_match_probability(threshold: float, tail: tuple[float, float] = IMPOSTOR_TAIL) -> float:
    """Chance that one other person's template lies within ``threshold`` of a face (the fitted tail)."""
    mu, sigma = tail
    return _normal_cdf((threshold - mu) / sigma)


def expected_fpir(riders: int, threshold: float, tail: tuple[float, float] = IMPOSTOR_TAIL) -> float:
    """Expected share of strangers charged to someone in a gallery of ``riders`` (margin ignored: an upper bound)."""
    p = min(false_match_probability(threshold, tail), 1.0 - 1e-16)
    return -math.expm1(max(riders, 1) * math.log1p(-p))


def threshold_for(riders: int, fpir_target: float = FPIR_TARGET, tail: tuple[float, float] = IMPOSTOR_TAIL) -> float:
    """The largest threshold whose expected FPIR for ``riders`` stays at or under ``fpir_target``."""
    mu, sigma = tail
    p = -math.expm1(math.log1p(-fpir_target) / max(riders, 1))
    return mu + sigma * NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class OperatingPoint:
    """What the bus runs for its gallery: the rule, and the error rate it expects from it."""

    riders: int
    rule: Rule
    face_threshold: float  # the threshold the face alone runs (or would need) for this gallery
    expected_fpir: float  # per boarding, face alone, at ``face_threshold``
    fpir_target: float
    derived: bool  # the threshold comes from the gallery size (not fixed by the operator)

    def describe(self) -> str:
        how = "derived from the gallery size" if self.derived else "fixed by the operator"
        mode = "face alone"
        if self.rule.second_factor:
            mode = "too many for the face alone: second factor required for every boarding"
            mode += f", face shortlist at {self.rule.threshold:.2f}"
        return (
            f"{self.riders} riders: threshold {self.face_threshold:.3f} ({how}), margin {self.rule.min_margin:.2f}, "
            f"expected wrong charges {self.expected_fpir * 1e6:.3g} per 1,000,000 boardings "
            f"(target {self.fpir_target * 1e6:.3g}); {mode}"
        )


def operating_point(
    riders: int,
    *,
    threshold: float | None = None,
    min_margin: float = DEFAULT_MIN_MARGIN,
    fpir_target: float = FPIR_TARGET,
    min_face_threshold: float = MIN_FACE_THRESHOLD,
    tail: tuple[float, float] = IMPOSTOR_TAIL,
) -> OperatingPoint:
    """The rule for a gallery of ``riders``: the threshold from the fitted tail (never above the
    default), unless the operator fixed one. The face alone may charge only while that threshold
    is at least ``min_face_threshold`` and its expected FPIR meets ``fpir_target``; otherwise
    every boarding needs the second factor (the face then only shortlists, at the default threshold)."""
    derived = threshold is None
    t = min(DEFAULT_THRESHOLD, threshold_for(riders, fpir_target, tail)) if threshold is None else threshold
    fpir = expected_fpir(riders, t, tail)
    face_alone = t >= min_face_threshold and fpir <= fpir_target * (1 + 1e-9)
    rule = Rule(t, min_margin) if face_alone else Rule(max(t, DEFAULT_THRESHOLD), min_margin, second_factor=True)
    return OperatingPoint(riders, rule, t, fpir, fpir_target, derived)


def face_alone_max_riders(
    fpir_target: float = FPIR_TARGET,
    min_face_threshold: float = MIN_FACE_THRESHOLD,
    tail: tuple[float, float] = IMPOSTOR_TAIL,
) -> int:
    """The largest gallery the face alone can serve at ``fpir_target`` (0 if none)."""
    mu, sigma = tail
    p = false_match_probability(min_face_threshold, tail)
    if p <= 0:
        return 2**31
    return max(int(math.floor(math.log1p(-fpir_target) / math.log1p(-p))), 0)


# -- lookalikes: enrolled riders too close to another enrolled rider for the face alone -------------

LOOKALIKE_DISTANCE = 0.6  # a rider whose nearest other rider's template is this close is a lookalike
LOOKALIKE_MAX_TEMPLATES = 20_000  # beyond this the all-pairs check is skipped (20,000: ~8 s on 2 cores)
LOOKALIKE_REFRESH_TEMPLATES = 2_000  # redone on a gallery change while running only up to this (~0.2 s)


def lookalikes(
    rider_ids: list[str] | np.ndarray, embeddings: np.ndarray, distance: float = LOOKALIKE_DISTANCE, chunk: int = 2048
) -> dict[str, tuple[str, float]]:
    """Riders with another rider's template within ``distance`` of one of theirs: rider -> (nearest other, distance).

    Used at enrollment (flag and audit) and on the bus (those riders confirm with the second factor
    instead of being refused as ambiguous). Templates of one rider never count against each other.
    """
    ids = np.asarray([str(r) for r in rider_ids], dtype=object)
    x = np.asarray(embeddings, np.float32).reshape(len(ids), -1) if len(ids) else np.zeros((0, 128), np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    out: dict[str, tuple[str, float]] = {}
    for start in range(0, len(ids), chunk):
        block = x[start : start + chunk]
        d2 = sq[start : start + chunk, None] - 2.0 * (block @ x.T) + sq[None]
        d2[ids[start : start + chunk, None] == ids[None]] = np.inf  # the rider's own templates
        nearest = np.argmin(d2, axis=1)
        dist = np.sqrt(np.maximum(d2[np.arange(len(block)), nearest], 0.0))
        for k in np.flatnonzero(dist <= distance):
            rider, other, dd = str(ids[start + k]), str(ids[nearest[k]]), float(dist[k])
            if rider not in out or dd < out[rider][1]:
                out[rider] = (other, dd)
    return out
