"""The smile gate: the rider's consent to pay, and a basic liveness check.

The measure is MediaPipe's blendshape model (edge.faces.mesh): ``smile`` = the mean of
``mouthSmileLeft`` and ``mouthSmileRight``, with ``jawOpen`` to tell a smile from talking. All
thresholds are blendshape scores in [0, 1], chosen by measurement on the shipped footage and the
London photos (docs/thresholds.md, bench/smile_scores.py).

Consent = the *same tracked face* goes from its own neutral to a smile:

* a frame counts as smiling when ``smile >= smile_min`` (the absolute floor), ``smile`` has risen
  by at least ``rise_min`` over the track's own baseline (its lowest smile over the last
  ``window_s`` seconds: the rider's neutral face, which for some people already scores 0.3-0.8),
  and ``smile - jawOpen >= smile_over_jaw`` (talking opens the jaw while the mouth corners barely
  move; a grin does the opposite);
* ``confirm_frames`` such frames in a row make one smile; the first smile of a track that has a
  neutral baseline in the window passes, unless the track is frozen;
* a face whose crop stops changing (a repeated video frame, a photo on a stand) is marked frozen
  and never passes; a printed photo held in the hand shows one unchanging expression, so it has
  no rise to show;
* after ``max_attempts`` smiles that did not pass, the rider is told to see the driver.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class SmileConfig(BaseModel):
    """The ``[smile]`` section. Scores are MediaPipe blendshape scores in [0, 1] (docs/thresholds.md)."""

    model_config = ConfigDict(extra="forbid")

    meter: Literal["blendshapes"] = Field(
        "blendshapes", description="Smile measure: MediaPipe's blendshapes (the Haar meter measured talking)"
    )
    smile_min: float = Field(
        0.55, ge=0, le=1, description="Absolute floor of mean(mouthSmileLeft, mouthSmileRight) (clip talking <= 0.53)"
    )
    rise_min: float = Field(
        0.20, ge=0, le=1, description="Smile must exceed the track's own neutral baseline by this much"
    )
    smile_over_jaw: float = Field(
        0.42, ge=-1, le=1, description="smile - jawOpen at least (talking <= 0.38, wide grins >= 0.46 on the footage)"
    )
    window_s: float = Field(4.0, gt=0, description="The neutral baseline is the lowest smile within this many seconds")
    confirm_frames: int = Field(3, ge=1, description="Consecutive smiling frames needed")
    max_attempts: int = Field(3, ge=1, description="Smiles without a charge before 'see the driver'")
    frozen_diff: float = Field(0.5, ge=0, description="Mean abs change of the face (grey levels) that counts as frozen")
    frozen_frames: int = Field(5, ge=2, description="Consecutive frozen frames that mark a track frozen")


@dataclass
class SmileState:
    """Per-track smile history."""

    history: deque = field(default_factory=lambda: deque(maxlen=300))  # (ts, smile)
    smiling_frames: int = 0
    in_smile: bool = False
    attempts: int = 0
    frozen_run: int = 0
    frozen: bool = False
    last_grey: np.ndarray | None = None
    baseline: float | None = None


@dataclass(frozen=True)
class SmileResult:
    score: float  # smile = mean(mouthSmileLeft, mouthSmileRight)
    #: neutral: near the track's baseline; smile: a consenting smile frame; talking: smile score
    #: high but jawOpen too (smile - jawOpen < smile_over_jaw); no_rise: a smile with no neutral
    #: of the track's own below it in the window (e.g. a face first seen mid-grin); between: else
    state: Literal["neutral", "between", "smile", "talking", "no_rise"]
    passed: bool  # a fresh neutral -> smile transition just completed
    frozen: bool
    exhausted: bool  # too many attempts: see the driver
    baseline: float = 0.0  # the track's neutral (lowest smile in the window)
    jaw_open: float = 0.0


class SmileGate:
    def __init__(self, cfg: SmileConfig) -> None:
        self.cfg = cfg

    def update(self, st: SmileState, smile: float, jaw_open: float, grey: np.ndarray, ts: float) -> SmileResult:
        """One frame of a track: its smile and jawOpen scores and a grey copy of its face."""
        cfg = self.cfg
        if st.last_grey is not None and st.last_grey.shape == grey.shape and (
            float(np.abs(grey - st.last_grey).mean()) < cfg.frozen_diff
        ):
            st.frozen_run += 1
            if st.frozen_run + 1 >= cfg.frozen_frames and not st.frozen:
                st.frozen = True
                log.warning("face track frozen: %d identical frames (photo or stuck camera?)", st.frozen_run + 1)
        else:
            st.frozen_run = 0
        st.last_grey = grey

        while st.history and st.history[0][0] < ts - cfg.window_s:
            st.history.popleft()
        baseline = min((s for _, s in st.history), default=None)
        st.history.append((ts, smile))
        st.baseline = baseline
        passed = False
        rise_ok = baseline is not None and smile - baseline >= cfg.rise_min
        if smile >= cfg.smile_min and smile - jaw_open < cfg.smile_over_jaw:
            label = "talking"
            st.smiling_frames = 0
        elif smile >= cfg.smile_min and rise_ok:
            label = "smile"
            st.smiling_frames += 1
            if st.smiling_frames == cfg.confirm_frames and not st.in_smile:
                st.in_smile = True
                passed = not st.frozen
                st.attempts += 1
        elif smile >= cfg.smile_min:
            label = "no_rise"
            st.smiling_frames = 0
        elif baseline is None or smile - baseline < cfg.rise_min / 2:
            label = "neutral"
            st.smiling_frames, st.in_smile = 0, False
        else:
            label = "between"
            st.smiling_frames = 0
        exhausted = st.attempts >= cfg.max_attempts and not passed
        return SmileResult(smile, label, passed, st.frozen, exhausted, baseline or smile, jaw_open)
