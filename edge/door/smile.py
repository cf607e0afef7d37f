"""The smile gate: consent to pay, and a basic liveness check.

A charge needs the *same tracked face* to go from neutral to smiling within ``window_s``
seconds. A printed photo or a frozen video frame shows one unchanging expression, so it never
makes that transition; on top of that, a track whose face chips stop changing at all (a frozen
frame repeated) is marked frozen and cannot pass. After ``max_attempts`` smiles that did not
lead to a charge the track is told to see the driver.

Smile measures (``SmileMeter``), chosen by config:

* ``haar`` (default): OpenCV's Haar smile cascade (shipped in opencv-python's ``cv2.data``) run on
  the mouth region of the aligned chip, which the 5-point landmarks fix in place. The score is
  the number of raw cascade hits; needs no 68-point model. Measured on the fixtures
  (docs/thresholds.md) it responds to an open mouth (talking, singing, grinning) rather than to a
  smile as such: it tells a still face from a changing one, but is no proof of consent.
* ``mouth68``: mouth width over eye-corner distance from the 68-point landmarks. The 68-point
  model's training data licence excludes commercial use (see the model manifest).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class SmileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meter: Literal["haar", "mouth68"] = Field("haar", description="Smile measure (mouth68 needs the 68-point model)")
    neutral_max: float = Field(10.0, description="Score at or below which a face is neutral (docs/thresholds.md)")
    smile_min: float = Field(100.0, description="Score at or above which a face is smiling (docs/thresholds.md)")
    window_s: float = Field(4.0, gt=0, description="Neutral must be seen at most this long before the smile")
    confirm_frames: int = Field(2, ge=1, description="Consecutive smiling frames needed")
    max_attempts: int = Field(3, ge=1, description="Smiles without a charge before 'see the driver'")
    frozen_diff: float = Field(0.5, ge=0, description="Mean abs chip change (grey levels) that counts as frozen")
    frozen_frames: int = Field(5, ge=2, description="Consecutive frozen frames that mark a track frozen")


class SmileMeter(Protocol):
    def score(self, chip: np.ndarray, landmarks68: np.ndarray | None = None) -> float: ...


class HaarSmileMeter:
    """Raw hit count of OpenCV's smile cascade on the mouth region of a 150x150 aligned chip."""

    # Mouth region of a chip made with padding 0.25 (rows, cols), measured on the fixture photos.
    ROWS = slice(92, 142)
    COLS = slice(30, 120)

    def __init__(self) -> None:
        path = cv2.data.haarcascades + "haarcascade_smile.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the smile cascade from {path} (needs opencv-python 4.x)")

    def score(self, chip: np.ndarray, landmarks68: np.ndarray | None = None) -> float:
        mouth = cv2.cvtColor(chip[self.ROWS, self.COLS], cv2.COLOR_RGB2GRAY)
        mouth = cv2.equalizeHist(mouth)
        hits = self.cascade.detectMultiScale(mouth, scaleFactor=1.05, minNeighbors=0, minSize=(30, 12))
        return float(len(hits))


class Mouth68SmileMeter:
    """Mouth width / outer-eye-corner distance, scaled by 10 (68-point landmarks)."""

    def score(self, chip: np.ndarray, landmarks68: np.ndarray | None = None) -> float:
        if landmarks68 is None:
            raise ValueError("the mouth68 smile meter needs 68-point landmarks")
        p = np.asarray(landmarks68, dtype=np.float64)
        mouth = np.hypot(*(p[54] - p[48]))
        eyes = np.hypot(*(p[45] - p[36]))
        return float(10.0 * mouth / eyes) if eyes > 0 else 0.0


def make_meter(kind: str) -> SmileMeter:
    if kind == "haar":
        return HaarSmileMeter()
    if kind == "mouth68":
        return Mouth68SmileMeter()
    raise ValueError(f"unknown smile meter {kind!r}")


@dataclass
class SmileState:
    """Per-track smile history."""

    last_neutral_ts: float | None = None
    smiling_frames: int = 0
    in_smile: bool = False
    attempts: int = 0
    frozen_run: int = 0
    frozen: bool = False
    last_grey: np.ndarray | None = None
    scores: deque = field(default_factory=lambda: deque(maxlen=60))


@dataclass(frozen=True)
class SmileResult:
    score: float
    state: Literal["neutral", "between", "smile"]
    passed: bool  # a fresh neutral -> smile transition just completed
    frozen: bool
    exhausted: bool  # too many attempts: see the driver


class SmileGate:
    def __init__(self, cfg: SmileConfig, meter: SmileMeter | None = None) -> None:
        self.cfg = cfg
        self.meter = meter or make_meter(cfg.meter)

    def update(self, st: SmileState, chip: np.ndarray, ts: float, landmarks68: np.ndarray | None = None) -> SmileResult:
        cfg = self.cfg
        grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.int16)
        if st.last_grey is not None and float(np.abs(grey - st.last_grey).mean()) < cfg.frozen_diff:
            st.frozen_run += 1
            if st.frozen_run + 1 >= cfg.frozen_frames and not st.frozen:
                st.frozen = True
                log.warning("face track frozen: %d identical frames (photo or stuck camera?)", st.frozen_run + 1)
        else:
            st.frozen_run = 0
        st.last_grey = grey

        score = self.meter.score(chip, landmarks68)
        st.scores.append(score)
        passed = False
        if score <= cfg.neutral_max:
            label = "neutral"
            st.last_neutral_ts, st.smiling_frames, st.in_smile = ts, 0, False
        elif score >= cfg.smile_min:
            label = "smile"
            st.smiling_frames += 1
            if st.smiling_frames == cfg.confirm_frames and not st.in_smile:
                st.in_smile = True
                fresh = st.last_neutral_ts is not None and ts - st.last_neutral_ts <= cfg.window_s
                if fresh and not st.frozen:
                    passed = True
                st.attempts += 1
        else:
            label = "between"
            st.smiling_frames = 0
        exhausted = st.attempts >= cfg.max_attempts and not passed
        return SmileResult(score, label, passed, st.frozen, exhausted)
