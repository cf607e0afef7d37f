"""Presentation-attack defence from what the door has: the timing of its own prompt and the mesh.

The checks, each run per track next to the smile gate (edge.door.smile), each able only to
*refuse* (docs/presentation-attacks.md gives the measurement, bench/pad.py):

* **Challenge and response.** The door does not say "Smile to pay" when the face appears. Once the
  face has passed quality for ``stable_s``, it waits a random ``delay_min_s``..``delay_max_s`` (the
  rider cannot predict it), then prompts. A smile counts only if it *starts* (the last neutral
  frame before it) between ``reaction_min_s`` and ``reaction_max_s`` after the prompt: a human
  reaction to the door, not a recording that happens to smile; its first full smiling frame must
  also come within ``reaction_max_s`` of the prompt. A smile already under way at the
  prompt, or one before it, or a late one, does not count: the challenge is re-issued with a new
  random delay, at most ``max_challenges`` times, then "see the driver".
* **Turn (flatness).** A photo or a screen is a plane: turned by a hand, it shows the same
  frontal face, narrower; a real head that turns shows its profile. The mesh's own depth sees the
  difference: its head yaw (edge.faces.mesh.head_pose) follows a real turn (15-45 degrees on the
  footage) but moves at most ~10 degrees when a printed or on-screen face is turned 30-45 degrees
  (bench/pad.py). After the smile, the face is asked to turn its head a little to the left or the
  right, at random (a head already turned half a turn to one side is asked the other way); the
  turn counts when the yaw (median of 3 frames) moves ``turn_min_deg`` the asked way from where it
  was at the prompt within ``turn_max_s``, starting no sooner than ``reaction_min_s`` after the
  prompt and not from half to full between two frames: a swapped print of a turned head jumps
  (the mesh re-fits over one or two frames); a real turn that fast (7.5 degrees in one frame at
  30 fps, 225 degrees a second) is taken for one too, and asked again.
  After ``max_turns`` prompts: "flat" when the face's outline was turned (its width/height ratio
  changed by ``flat_shape``) but its yaw did not follow, else "turn".
* **Near-infrared.** With a NIR camera beside the colour one (hardware.cameras.nir, ``nir``), the
  face followed in colour must also be found, at the mapped place, in most of the NIR pictures: a
  screen emits no 850 nm light.
* **Image cues** (edge.door.pad_cues), over the track's last 45 frames: a display's moire
  (``screen_cue``, on), a bezel or paper edge enclosing the face (``bezel_cue``), glare
  (``glare_cue``), a washed-out face (``colour_cue``); the last three are off until measured on
  the door's own footage.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.door.pad_cues import (
    BEZEL_SIDES,
    GLARE_AREA,
    MAX_SATURATION,
    border_lines,
    enclosing_sides,
    face_saturation,
    glare_area,
    moire_peak,
)
from edge.faces.geometry import Rect, iou
from edge.faces.mesh import FOREHEAD, LEFT_CHEEK, NOSE_TIP, RIGHT_CHEEK, head_pose

log = logging.getLogger(__name__)

Ask = Literal["wait", "smile", "turn_left", "turn_right"]


class LivenessConfig(BaseModel):
    """The ``[liveness]`` section: presentation-attack defence (docs/presentation-attacks.md)."""

    model_config = ConfigDict(extra="forbid")

    challenge: bool = Field(
        True, description="Prompt to smile at a random moment and count only smiles that react to it; "
        "then, with 'turn', ask for a head turn. Off for recorded footage, whose riders never saw a prompt"
    )  # fmt: skip
    stable_s: float = Field(0.3, ge=0, description="Seconds of good-quality face before the random delay starts")
    delay_min_s: float = Field(0.5, ge=0, description="Shortest random delay before the prompt")
    delay_max_s: float = Field(2.0, ge=0, description="Longest random delay before the prompt")
    reaction_min_s: float = Field(
        0.15, ge=0, description="A smile or turn starting sooner after its prompt is not a reaction to it "
        "(visual reaction-time floor)"
    )  # fmt: skip
    reaction_max_s: float = Field(
        1.5, gt=0, description="A smile starting later is not counted; the challenge is re-issued"
    )
    max_challenges: int = Field(3, ge=1, description="Prompts without a reacting smile before 'see the driver'")
    rise_min_s: float = Field(
        0.06, ge=0, description="A smile (or turn) going from neutral to full faster (one frame: a swapped photo) "
        "does not count"
    )  # fmt: skip
    turn: bool = Field(
        True, description="After the smile, ask the face to turn a little left or right (random): a photo or a "
        "screen turned by hand does not turn the mesh's head yaw (needs 'challenge')"
    )  # fmt: skip
    turn_min_deg: float = Field(
        15.0, gt=0, le=25, description="Head-yaw change that counts as a turn (real turns on the footage 15-45; "
        "printed and on-screen faces turned 30-45 degrees by hand: at most ~10)"
    )  # fmt: skip
    turn_max_s: float = Field(2.5, gt=0, description="Seconds after the turn prompt to complete the turn")
    max_turns: int = Field(2, ge=1, description="Turn prompts without a turn before 'see the driver'")
    flat_shape: float = Field(
        0.08, gt=0, description="Change of the face's width/height ratio that shows it was turned; turned so "
        "without its yaw following, it is refused as 'flat' (a plane) rather than 'turn'"
    )  # fmt: skip
    screen_cue: bool = Field(True, description="Refuse a face whose patch shows a display's moire (edge.door.pad_cues)")
    screen_peak: float = Field(
        3.2, gt=0, description="Median spectral peak over the track's frames at least this: a screen "
        "(genuine footage: frames <= 3.0, track medians <= 2.1; synthetic screens: medians >= 3.5)"
    )
    screen_min_frames: int = Field(5, ge=1, description="Frames of the track needed before an image cue is used")
    bezel_cue: bool = Field(
        False, description="Refuse a face enclosed by straight edges that keep their place around it (a phone's "
        "bezel, a card's paper edge; edge.door.pad_cues.enclosing_sides). Off until measured on the door's own "
        "footage (bench/pad_cues.py --genuine): a door opening framing the rider could look the same"
    )  # fmt: skip
    bezel_sides: int = Field(
        BEZEL_SIDES, ge=1, le=4, description="Sides of the face (of 4) with such an edge over the track's last 45 "
        "frames at least this: a card or screen (genuine footage <= 2; synthetic prints and phones 3-4)"
    )  # fmt: skip
    glare_cue: bool = Field(
        False, description="Refuse a face under a large bright colourless region (a screen's or glossy print's "
        "glare; edge.door.pad_cues.glare_area). Off: thin margin on genuine footage"
    )  # fmt: skip
    glare_area: float = Field(
        GLARE_AREA, gt=0, le=1, description="Median share of the face box under the largest glare region at "
        "least this: glare (genuine 45-frame medians <= 0.06; synthetic phones 0-0.52)"
    )  # fmt: skip
    colour_cue: bool = Field(
        False, description="Refuse a washed-out face (a screen's tint and gamut; edge.door.pad_cues.face_saturation). "
        "Off: dim night lighting may wash out real faces too"
    )  # fmt: skip
    min_saturation: float = Field(
        MAX_SATURATION, ge=0, le=255, description="Median HSV saturation of the face box at most this: a screen "
        "(genuine 45-frame medians >= 57; synthetic screens 11-71, prints 55-104)"
    )  # fmt: skip
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
        if self.turn_max_s <= self.reaction_min_s:
            raise ValueError("liveness: turn_max_s must be > reaction_min_s")
        return self


@dataclass
class LivenessState:
    """Per-track state of the challenges."""

    stable_since: float | None = None
    prompt_at: float | None = None  # when the smile prompt is (or was) shown
    delay: float | None = None
    challenges: int = 0
    last_neutral: float | None = None  # ts of the last frame the smile was back at the track's neutral
    first_smile: float | None = None  # ts of the first smiling frame after it
    onset: float | None = None  # start of the accepted smile
    pose: deque = field(default_factory=lambda: deque(maxlen=300))  # (ts, yaw, width/height) per frame
    turn_at: float | None = None  # when the current turn prompt was shown (None: not asked)
    turn_dir: int = 0  # +1: the rider's left (mesh yaw rises), -1: the rider's right
    turns: int = 0
    moire: deque = field(default_factory=lambda: deque(maxlen=45))  # moire_peak per frame
    borders: deque = field(default_factory=lambda: deque(maxlen=45))  # border_lines per frame
    glare: deque = field(default_factory=lambda: deque(maxlen=45))  # glare_area per frame
    saturation: deque = field(default_factory=lambda: deque(maxlen=45))  # face_saturation per frame
    nir: deque = field(default_factory=lambda: deque(maxlen=45))  # face found in NIR, per frame with a NIR picture

    @property
    def turning(self) -> bool:
        """The smile was accepted and the door is asking for a head turn."""
        return self.turn_at is not None


@dataclass(frozen=True)
class Verdict:
    """What the liveness checks say on one frame.

    ``ask``: what the door shows ("wait": look at the camera; "smile"; "turn_left"/"turn_right");
    ``accept``: the face passed every challenge and check; ``refuse``: a final reason, None to go
    on; ``note``: why a smile or turn was not counted ("early", "late", "already", "instant",
    "wrong_way", "none"), for the log.
    """

    ask: Ask
    accept: bool = False
    refuse: Literal["turn", "flat", "screen", "bezel", "glare", "colour", "nir", "challenge"] | None = None
    note: str = ""

    @property
    def prompted(self) -> bool:
        return self.ask != "wait"


def outline_ratio(points: np.ndarray) -> float:
    """Width (cheek to cheek) over height (forehead to nose tip) of the face in the image: a plane
    turned about its vertical axis gets narrower, about its horizontal axis shorter."""
    p = np.asarray(points, np.float64)[:, :2]
    return float(np.linalg.norm(p[LEFT_CHEEK] - p[RIGHT_CHEEK]) / (np.linalg.norm(p[NOSE_TIP] - p[FOREHEAD]) + 1e-9))


class Liveness:
    """The challenges and the cues; one :class:`LivenessState` per track."""

    def __init__(self, cfg: LivenessConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.SystemRandom()

    def _image_cue(self, st: LivenessState) -> str | None:
        """The image cues over the track's recent frames: the first that refuses, or None."""
        cfg = self.cfg
        if len(st.moire) >= cfg.screen_min_frames and (peak := float(np.median(st.moire))) >= cfg.screen_peak:
            log.warning("screen: median moire peak %.2f over %d frames", peak, len(st.moire))
            return "screen"
        if len(st.borders) >= cfg.screen_min_frames and (sides := enclosing_sides(list(st.borders))) >= cfg.bezel_sides:
            log.warning("bezel: straight edges on %d sides of the face over %d frames", sides, len(st.borders))
            return "bezel"
        if len(st.glare) >= cfg.screen_min_frames and (area := float(np.median(st.glare))) >= cfg.glare_area:
            log.warning("glare: %.2f of the face box over %d frames", area, len(st.glare))
            return "glare"
        if len(st.saturation) >= cfg.screen_min_frames and (
            sat := float(np.median(st.saturation))
        ) <= cfg.min_saturation:
            log.warning("colour: face saturation %.0f over %d frames", sat, len(st.saturation))
            return "colour"
        return None

    def _no_nir(self, st: LivenessState) -> bool:
        if not self.cfg.nir:
            return False
        seen = sum(st.nir) / len(st.nir) if st.nir else 0.0
        if seen < self.cfg.nir_min_fraction:
            log.warning("no face in near-infrared: %d of %d NIR frames", sum(st.nir), len(st.nir))
            return True
        return False

    def _cues(self, st: LivenessState) -> Verdict | None:
        if cue := self._image_cue(st):
            return Verdict("smile", refuse=cue)
        if self._no_nir(st):
            return Verdict("smile", refuse="nir")
        return None

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

    def _ask_turn(self, st: LivenessState, ts: float) -> Verdict:
        """Ask for a turn: at random, except that a head already turned half a turn to one side is
        asked to go the other way (a rider looking left has little left to turn)."""
        yaw = float(np.median([y for _, y, _ in list(st.pose)[-3:]]))
        side = self.rng.choice((-1, 1)) if abs(yaw) < self.cfg.turn_min_deg / 2 else -int(np.sign(yaw))
        st.turn_at, st.turn_dir = ts, side
        st.turns += 1
        log.info("asking for a head turn to the %s (%d of %d)", "left" if st.turn_dir > 0 else "right",
                 st.turns, self.cfg.max_turns)  # fmt: skip
        return Verdict("turn_left" if st.turn_dir > 0 else "turn_right")

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
        rgb: np.ndarray | None = None,
        rect: Rect | None = None,
    ) -> Verdict:
        """One good-quality frame of a track, before the smile was accepted.

        ``points``: the face's mesh points (478, 3), image pixels; ``neutral``: the smile gate
        sees the track not smiling on this frame (at its own neutral, or talking: a rider who
        talks while waiting starts the smile after the last talking frame); ``passed``: the smile gate passed on it;
        ``smiling``: the gate counts this frame as a smiling one; ``patch``: the face box as a
        150x150 grey image (edge.door.quality.face_patch), for the screen cue; ``nir_face``:
        :meth:`nir_agrees` on this frame (None: no NIR picture); ``rgb`` and ``rect``: the frame and
        the face's box, for the bezel, glare and colour cues. Once a turn is asked
        (``st.turning``), frames go to :meth:`turn` instead.
        """
        cfg = self.cfg
        points = np.asarray(points, np.float64)
        st.pose.append((ts, head_pose(points)[0], outline_ratio(points)))
        if cfg.screen_cue and patch is not None and min(patch.shape[:2]) >= 128:
            st.moire.append(moire_peak(patch))
        if rgb is not None and rect is not None:
            if cfg.bezel_cue:
                st.borders.append(border_lines(rgb, rect))
            if cfg.glare_cue:
                st.glare.append(glare_area(rgb, rect))
            if cfg.colour_cue:
                st.saturation.append(face_saturation(rgb, rect))
        if nir_face is not None:
            st.nir.append(nir_face)
        if neutral:
            st.last_neutral, st.first_smile = ts, None
        elif smiling and st.first_smile is None:
            st.first_smile = ts
        if not cfg.challenge:
            if passed and (refused := self._cues(st)):
                return refused
            return Verdict("smile", accept=passed)
        if st.stable_since is None:
            st.stable_since = ts
        if st.prompt_at is None and ts - st.stable_since >= cfg.stable_s:
            self._schedule(st, ts)
        prompted = st.prompt_at is not None and ts >= st.prompt_at
        ask: Ask = "smile" if prompted else "wait"
        if not passed:
            return Verdict(ask)
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
                return Verdict(ask, refuse="challenge", note=note)
            self._schedule(st, ts)  # a new unpredictable prompt; the gate needs a new neutral first
            return Verdict("wait", note=note)
        st.onset = onset
        if refused := self._cues(st):
            return refused
        if cfg.turn:
            # always asked: a head that turned on its own (or a replayed video of one) proves
            # depth but not that anyone is answering the door now
            return self._ask_turn(st, ts)
        return Verdict("smile", accept=True)

    def turn(self, st: LivenessState, ts: float, points: np.ndarray) -> Verdict:
        """One frame while a head turn is asked (any quality: a turned head fails the pose gate)."""
        cfg = self.cfg
        assert st.turn_at is not None
        points = np.asarray(points, np.float64)
        st.pose.append((ts, head_pose(points)[0], outline_ratio(points)))
        ask: Ask = "turn_left" if st.turn_dir > 0 else "turn_right"
        # the face at the prompt: its last 3 frames (a rider's head is rarely still; a longer
        # baseline would start a moving head's turn from where it was, not where it is)
        before = [(y, r) for t, y, r in st.pose if t <= st.turn_at][-3:] or [st.pose[-1][1:]]
        yaw0 = float(np.median([y for y, _ in before]))
        ratio0 = float(np.median([r for _, r in before]))
        after = [(t, st.turn_dir * (y - yaw0), r) for t, y, r in st.pose if t > st.turn_at]
        note = ""
        if len(after) >= 3 and float(np.median([d for _, d, _ in after[-3:]])) >= cfg.turn_min_deg:
            # the rise that got there: it starts after the last frame under a quarter of the turn
            # (a swaying head crosses that often), and goes from half to full in more than one frame
            below = [i for i, (_, d, _) in enumerate(after) if d < cfg.turn_min_deg / 4]
            rise = after[below[-1] + 1 :] if below else after
            half = next(t for t, d, _ in rise if d >= cfg.turn_min_deg / 2)
            full = next(t for t, d, _ in rise if d >= cfg.turn_min_deg)
            if rise[0][0] - st.turn_at < cfg.reaction_min_s:
                note = "early"  # under way before the rider could have read the prompt
            elif full - half < cfg.rise_min_s:
                note = "instant"  # half to full turn between two frames: a swapped photo
            else:
                st.turn_at = None
                return self._cues(st) or Verdict(ask, accept=True)
        if not note and ts - st.turn_at <= cfg.turn_max_s:
            return Verdict(ask)  # a head that went the wrong way first may still come round in time
        held = [float(np.median([d for _, d, _ in after[i : i + 3]])) for i in range(len(after) - 2)]
        note = note or ("wrong_way" if held and min(held) <= -cfg.turn_min_deg else "none")
        ratios = [r for _, _, r in after]
        held_ratios = [float(np.median(ratios[i : i + 3])) for i in range(len(ratios) - 2)]
        shape = max((abs(r / ratio0 - 1) for r in held_ratios), default=0.0)
        log.info("turn not counted (%s): %d of %d, outline changed %.2f", note, st.turns, cfg.max_turns, shape)
        if st.turns >= cfg.max_turns:
            flat = shape >= cfg.flat_shape and note == "none"  # turned as a picture: no yaw followed
            return Verdict(ask, refuse="flat" if flat else "turn", note=note)
        return Verdict(self._ask_turn(st, ts).ask, note=note)
