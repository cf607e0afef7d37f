"""1:N matching of a face embedding against the bus's gallery of enrolled riders' templates.

A rider may have several templates; a rider's distance is that of their nearest template.
The answer carries the best rider, their distance, and the margin to the best *other* rider,
so the decision stage can insist that the match is both close and unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def identify_match(gallery: Gallery, query: np.ndarray, rule: Rule | None = None) -> str | None:
    """The single-frame identification rule the bus applies: the rider to charge, or None."""
    return (rule or Rule()).charges(gallery.match(query))
