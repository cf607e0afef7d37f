"""Presentation-attack defence from what the door has: the timing of its own prompt and the mesh.

Three checks, each run per track next to the smile gate (edge.door.smile), each able only to
*refuse* (docs/presentation-attacks.md gives the measurement, bench/pad.py):

* **Challenge and response.** The door does not say "Smile to pay" when the face appears. Once the
  face has passed quality for ``stable_s``, it waits a random ``delay_min_s``..``delay_max_s`` (the
  rider cannot predict it), then prompts. A smile counts only if it *starts* (the last neutral
  frame before it) between ``reaction_min_s`` and ``reaction_max_s`` after the prompt: a human
  reaction to the door, not a recording that happens to smile; its first full smiling frame must
  also come within ``reaction_max_s`` of the prompt. A smile already under way at the
  prompt, or one before it, or a late one, does not count: the challenge is re-issued with a new
  random delay, at most ``max_challenges`` times, then "see the driver".
* **Flatness.** A photo or a screen is a plane: as it moves, the mesh's rigid points (eye corners,
  nose, brows, temples, cheeks; not the mouth or jaw) move from frame to frame by a homography,
  while a real head shows parallax between the nose and the cheeks that no homography explains.
  Over the track's frames, for each pair (first kept frame, later frame) we fit a similarity
  (what any in-plane motion explains) and a homography, residuals in units of the inter-ocular
  distance. A pair is *informative* when the similarity leaves at least ``flat_min_motion`` (the
  face moved out of its plane); a face is flat when at least ``flat_min_pairs`` informative pairs
  exist and the homography explains them down to ``flat_ratio`` of the similarity's residual.
  A face that never moves out of plane is not judged flat (a rider standing still is the common
  case); the photo held perfectly still is left to the smile gate's frozen check.
* **Near-infrared.** With a NIR camera beside the colour one (hardware.cameras.nir, ``nir``), the
  face followed in colour must also be found, at the mapped place, in most of the NIR pictures: a
  screen emits no 850 nm light.
* **Screen cue.** The median over the track's frames of :func:`edge.door.pad_cues.moire_peak`
  (a display's pixel grid beating against the camera's) refuses a face shown on a screen.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.door.pad_cues import moire_peak
from edge.faces.geometry import Rect, iou

log = logging.getLogger(__name__)

#: Mesh points that move rigidly with the skull: eye corners, brows, nose bridge and tip, nose
#: wings, temples, cheek contour (MediaPipe's canonical face mesh). Mouth and jaw are left out: a
#: smile or speech moves them non-rigidly on a photo-realistic video replay too.
RIGID = np.array([33, 133, 362, 263, 70, 300, 105, 334, 168, 6, 197, 195, 4, 1, 98, 327, 127, 356, 234, 454,
                  93, 323, 10, 151, 9, 8])  # fmt: skip
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263


class LivenessConfig(BaseModel):
    """The ``[liveness]`` section: presentation-attack defence (docs/presentation-attacks.md)."""

    model_config = ConfigDict(extra="forbid")

    challenge: bool = Field(True, description="Prompt to smile at a random moment; count only smiles that react to it")
    stable_s: float = Field(0.3, ge=0, description="Seconds of good-quality face before the random delay starts")
    delay_min_s: float = Field(0.5, ge=0, description="Shortest random delay before the prompt")
    delay_max_s: float = Field(2.0, ge=0, description="Longest random delay before the prompt")
    reaction_min_s: float = Field(
        0.15, ge=0, description="A smile starting sooner after the prompt is not a reaction to it (visual RT floor)"
    )
    reaction_max_s: float = Field(
        1.5, gt=0, description="A smile starting later is not counted; the challenge is re-issued"
    )
    max_challenges: int = Field(3, ge=1, description="Prompts without a reacting smile before 'see the driver'")
    rise_min_s: float = Field(
        0.06, ge=0, description="A smile going from neutral to full faster (one frame: a swapped photo) does not count"
    )
    flatness: bool = Field(
        False, description="Refuse a face whose rigid mesh points move as a plane. Off: on real footage of moving "
        "heads 58% of 45-frame windows were judged flat (bench/pad.py --cues, docs/presentation-attacks.md)"
    )
    flat_window: int = Field(45, ge=3, description="Frames of the track kept for the flatness test")
    flat_min_motion: float = Field(
        0.012, gt=0, description="Similarity residual (x inter-ocular distance) that makes a frame pair informative"
    )
    flat_ratio: float = Field(
        0.75, gt=0, le=1, description="Homography residual / similarity residual at most this on a flat face "
        "(genuine footage 0.82-0.98, hand-moved synthetic prints and screens 0.53-0.80)"
    )
    flat_min_pairs: int = Field(10, ge=1, description="Informative frame pairs needed before a face can be judged flat")
    screen_cue: bool = Field(True, description="Refuse a face whose patch shows a display's moire (edge.door.pad_cues)")
    screen_peak: float = Field(
        3.2, gt=0, description="Median spectral peak over the track's frames at least this: a screen "
        "(genuine footage: frames <= 3.0, track medians <= 2.1; synthetic screens: medians >= 3.5)"
    )
    screen_min_frames: int = Field(5, ge=1, description="Frames of the track needed before the screen cue is used")
    nir: bool = Field(
        False, description="Require the face in the near-infrared camera's picture too (hardware.cameras.nir); "
        "fails closed: with no NIR frames, nobody passes"
    )
    nir_map: tuple[float, float, float, float, float, float] = Field(
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        description="Affine map colour pixels -> NIR pixels (a b c d e f: x' = a x + b y + c, y' = d x + e y + f), "
        "measured at installation",
    )
    nir_min_iou: float = Field(0.3, gt=0, le=1, description="A NIR face must overlap the mapped colour box this much")
    nir_min_fraction: float = Field(
        0.5, gt=0, le=1, description="Fraction of the track's NIR frames that must show the face"
    )

    @model_validator(mode="after")
    def _ordered(self) -> LivenessConfig:
        if self.delay_max_s < self.delay_min_s:
            raise ValueError("liveness: delay_max_s must be >= delay_min_s")
        if self.reaction_max_s <= self.reaction_min_s:
            raise ValueError("liveness: reaction_max_s must be > reaction_min_s")
        return self


@dataclass
class LivenessState:
    """Per-track state of the challenge and the flatness test."""

    stable_since: float | None = None
    prompt_at: float | None = None  # when the prompt is (or was) shown
    delay: float | None = None
    challenges: int = 0
    last_neutral: float | None = None  # ts of the last frame the smile was back at the track's neutral
    first_smile: float | None = None  # ts of the first smiling frame after it
    points: deque = field(default_factory=lambda: deque(maxlen=300))  # rigid (n, 2) per frame
    flat: Flatness | None = None
    onset: float | None = None  # start of the accepted smile
    moire: deque = field(default_factory=lambda: deque(maxlen=45))  # moire_peak per frame
    nir: deque = field(default_factory=lambda: deque(maxlen=45))  # face found in NIR, per frame with a NIR picture


@dataclass(frozen=True)
class Flatness:
    pairs: int  # informative frame pairs
    ratio: float  # median homography / similarity residual over them (nan if none)
    motion: float  # largest similarity residual seen (x inter-ocular distance)
    flat: bool


@dataclass(frozen=True)
class Verdict:
    """What the liveness checks say on one frame.

    ``prompted``: the door is now asking for the smile (before that, "look at the camera");
    ``accept``: a smile that passed the smile gate also passed the challenge;
    ``refuse``: a final reason ("flat" or "challenge"), None to go on;
    ``note``: why a passed smile was not counted ("early", "late", "already"), for the log.
    """

    prompted: bool
    accept: bool = False
    refuse: Literal["flat", "screen", "nir", "challenge"] | None = None
    note: str = ""


def _iod(p: np.ndarray) -> float:
    return float(np.linalg.norm(p[0] - p[3])) + 1e-9  # RIGID[0], RIGID[3]: outer eye corners


def _similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual of the least-squares similarity a -> b (complex form z' = s z + t)."""
    za = a[:, 0] + 1j * a[:, 1]
    zb = b[:, 0] + 1j * b[:, 1]
    m = np.stack([za, np.ones_like(za)], 1)
    coef, *_ = np.linalg.lstsq(m, zb, rcond=None)
    return float(np.sqrt(np.mean(np.abs(m @ coef - zb) ** 2)))


def _homography_residual(a: np.ndarray, b: np.ndarray) -> float:
    h, _ = cv2.findHomography(a.astype(np.float64), b.astype(np.float64), 0)
    if h is None:
        return float("inf")
    pa = np.hstack([a, np.ones((len(a), 1))]) @ h.T
    pa = pa[:, :2] / pa[:, 2:3]
    return float(np.sqrt(np.mean(np.sum((pa - b) ** 2, 1))))


def flatness(frames: list[np.ndarray], cfg: LivenessConfig) -> Flatness:
    """The flatness test over a track's rigid points (a list of (n, 2) arrays, oldest first)."""
    if len(frames) < 2:
        return Flatness(0, float("nan"), 0.0, False)
    ref = frames[0]
    ratios: list[float] = []
    motion = 0.0
    step = max(1, (len(frames) - 1) // cfg.flat_window)
    for cur in frames[1::step]:
        scale = _iod(ref)
        sim = _similarity_residual(ref, cur) / scale
        motion = max(motion, sim)
        if sim < cfg.flat_min_motion:
            continue
        ratios.append(_homography_residual(ref, cur) / scale / sim)
    ratio = float(np.median(ratios)) if ratios else float("nan")
    flat = len(ratios) >= cfg.flat_min_pairs and ratio <= cfg.flat_ratio
    return Flatness(len(ratios), ratio, motion, flat)


class Liveness:
    """The challenge and the flatness test; one :class:`LivenessState` per track."""

    def __init__(self, cfg: LivenessConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.SystemRandom()

    def _flat(self, st: LivenessState) -> bool:
        """The flatness test over the last ``flat_window`` frames (run only when a smile passes)."""
        if not self.cfg.flatness:
            return False
        st.flat = flatness(list(st.points)[-self.cfg.flat_window :], self.cfg)
        if st.flat.flat:
            log.warning("flat face: homography explains %.2f of the motion over %d frame pairs",
                        st.flat.ratio, st.flat.pairs)  # fmt: skip
        return st.flat.flat

    def _screen(self, st: LivenessState) -> bool:
        """The screen cue: the median moire peak over the track's recent frames."""
        if not self.cfg.screen_cue or len(st.moire) < self.cfg.screen_min_frames:
            return False
        peak = float(np.median(st.moire))
        if peak >= self.cfg.screen_peak:
            log.warning("screen: median moire peak %.2f over %d frames", peak, len(st.moire))
            return True
        return False

    def _no_nir(self, st: LivenessState) -> bool:
        if not self.cfg.nir:
            return False
        seen = sum(st.nir) / len(st.nir) if st.nir else 0.0
        if seen < self.cfg.nir_min_fraction:
            log.warning("no face in near-infrared: %d of %d NIR frames", sum(st.nir), len(st.nir))
            return True
        return False

    def nir_agrees(self, detect: Callable[[np.ndarray], list], nir: np.ndarray | None, rect: Rect) -> bool | None:
        """Is a face at ``rect`` (colour pixels) in the NIR picture? None without NIR or with the check off.

        ``detect``: a face detector on an RGB image returning objects with ``.rect`` (the engine's)."""
        if not self.cfg.nir or nir is None:
            return None
        a = np.asarray(self.cfg.nir_map, np.float64).reshape(2, 3)
        xy = np.array([[rect.left, rect.top, 1.0], [rect.right, rect.bottom, 1.0]]) @ a.T
        mapped = Rect(int(xy[:, 0].min()), int(xy[:, 1].min()), int(xy[:, 0].max()), int(xy[:, 1].max()))
        grey = nir if nir.ndim == 2 else nir[..., 0]
        found = detect(np.ascontiguousarray(np.repeat(grey[..., None], 3, 2)))
        return any(iou(d.rect, mapped) >= self.cfg.nir_min_iou for d in found)

    def _schedule(self, st: LivenessState, ts: float) -> None:
        st.delay = self.rng.uniform(self.cfg.delay_min_s, self.cfg.delay_max_s)
        st.prompt_at = ts + st.delay
        st.challenges += 1

    def update(
        self,
        st: LivenessState,
        ts: float,
        points: np.ndarray,
        neutral: bool,
        passed: bool,
        smiling: bool = False,
        patch: np.ndarray | None = None,
        nir_face: bool | None = None,
    ) -> Verdict:
        """One good-quality frame of a track.

        ``points``: the face's mesh points (478, >=2), image pixels; ``neutral``: the smile gate
        sees the track at its own neutral on this frame; ``passed``: the smile gate passed on it;
        ``smiling``: the gate counts this frame as a smiling one; ``patch``: the face box as a
        150x150 grey image (edge.door.quality.face_patch), for the screen cue; ``nir_face``:
        :meth:`nir_agrees` on this frame (None: no NIR picture).
        """
        cfg = self.cfg
        if cfg.flatness:
            st.points.append(np.asarray(points, np.float64)[RIGID, :2])
        if cfg.screen_cue and patch is not None and min(patch.shape[:2]) >= 128:
            st.moire.append(moire_peak(patch))
        if nir_face is not None:
            st.nir.append(nir_face)
        if neutral:
            st.last_neutral, st.first_smile = ts, None
        elif smiling and st.first_smile is None:
            st.first_smile = ts
        if not cfg.challenge:
            if passed and self._screen(st):
                return Verdict(True, refuse="screen")
            if passed and self._no_nir(st):
                return Verdict(True, refuse="nir")
            if passed and self._flat(st):
                return Verdict(True, refuse="flat")
            return Verdict(True, accept=passed)
        if st.stable_since is None:
            st.stable_since = ts
        if st.prompt_at is None and ts - st.stable_since >= cfg.stable_s:
            self._schedule(st, ts)
        prompted = st.prompt_at is not None and ts >= st.prompt_at
        if not passed:
            return Verdict(prompted)
        # The smile gate passed on this frame: did the smile start as a reaction to the prompt?
        onset = st.last_neutral
        note = ""
        if not prompted or st.prompt_at is None:
            note = "early"
        elif onset is None or onset < st.prompt_at:
            note = "already"  # under way when the prompt came (or no neutral seen at all)
        elif onset - st.prompt_at < cfg.reaction_min_s:
            note = "early"
        elif onset - st.prompt_at > cfg.reaction_max_s or (
            st.first_smile is not None and st.first_smile - st.prompt_at > cfg.reaction_max_s
        ):
            note = "late"  # started, or reached a full smile, too long after the prompt
        elif st.first_smile is not None and st.first_smile - onset < cfg.rise_min_s:
            note = "instant"  # neutral to full smile between two frames: a swapped photo, not a face
        if note:
            log.info("smile not counted (%s): onset %s, prompt at %s", note, onset, st.prompt_at)
            if st.challenges >= cfg.max_challenges:
                return Verdict(prompted, refuse="challenge", note=note)
            self._schedule(st, ts)  # a new unpredictable prompt; the gate needs a new neutral first
            return Verdict(False, note=note)
        st.onset = onset
        if self._screen(st):
            return Verdict(True, refuse="screen")
        if self._no_nir(st):
            return Verdict(True, refuse="nir")
        if self._flat(st):
            return Verdict(True, refuse="flat")
        return Verdict(True, accept=True)
