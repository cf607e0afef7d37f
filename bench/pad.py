"""Presentation-attack detection, measured in the spirit of ISO/IEC 30107-3 on a synthetic corpus.

Genuine (bona fide) presentations are the shipped real footage of riders who smile (a man:
footage/single_face.mp4, footage/face_noface.mov; a woman outdoors: new_face_video-90.mp4, talking
then smiling, her hand-held frames steadied so that her face stays put), played *reactively*: the
rider holds a neutral face (the clip's neutral frames, played back and forth) until the door
prompts "Smile to pay",
then after a human reaction time (lognormal, median ``RT_MEDIAN`` s) the clip's own smile plays.
When the door then asks for a head turn, after another reaction time a *real* head turn plays:
frames of short_hamilton_clip.mp4 in which a man turns his head 30 degrees (``TURNS``, mirrored
for the other direction), scaled and moved so that his face lies where the rider's was (the one
clip of the project with a head turning; the cut changes the person, which the PAD check, blind
to identity, does not see).

Attack presentations are rendered from the same footage and from the London photos (neutral and
smiling photo of 40 people) onto a *card*, a plane moved in 3-D by a hand (random smooth yaw,
pitch, roll, translation; pinhole camera, f = 600 px) over a real background (frames of
new_face_video-90.mp4 with no face):

* ``photo_still``   a print of a smiling photo, held still (sub-pixel jitter only);
* ``photo_hand``    a print (halftone dots, paper tint and grain, white paper edge) of a neutral
                    photo, moved by hand, swapped for the smiling print right after the door's
                    prompt (an attacker who watches the door);
* ``photo_screen``  the same two photos on a phone (bezel, glare, pixel-grid moire), hand-held;
* ``replay_naive``  the rider's video on a hand-held phone, started at a random moment and looped;
* ``replay_adaptive`` the rider's video on a hand-held phone, paused on its first (neutral) frame
                    and played when the door prompts (an attacker reacting like a rider).

Asked to turn the head, every attacker turns the card instead: 25-45 degrees about its vertical
axis, one way or the other (random), after a reaction time; except

* ``photo_turn_swap`` the photo_hand attacker who also holds prints of a head turned left and right
                    and swaps in the one the door asks for (the turned heads are the real turns
                    of ``TURNS``, placed where the photo's face was: a print of the rider's turned
                    head in the attacker's hand).

A presentation is *accepted* when the door's PAD passes it (the smile gate plus the configured
liveness checks arm the track for identification); APCER = accepted attacks / attacks per type,
BPCER = not accepted genuine / genuine presentations. Also printed: the refusal reasons, and the
seconds from the face's arrival to acceptance, with the challenge and without it (smile gate alone,
rider smiling at once), whose difference is what the challenge adds to a boarding.

    FACEFARE_MODELS__DIR=... .venv/bin/python bench/pad.py [--n 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "facefare" / "demo" / "data"
FOOTAGE = DATA / "footage"
FPS = 30.0
W, H = 640, 480
RT_MEDIAN, RT_SIGMA = 0.45, 0.35  # simple visual RT ~0.25 s + onset of a voluntary smile (docs/presentation-attacks.md)
MAX_S = 9.0  # a presentation lasts at most this long
#: clip -> (neutral frames, smile frames: one or more ranges played in turn), from footage/README.md
CLIPS = {
    "single_face": ("single_face.mp4", (0, 15), ((16, 64),)),
    "face_noface": ("face_noface.mov", (0, 15), ((16, 61),)),
    # Talking, then a smile. Her README range 78-104 has smile-like frames at both ends (79: smile 0.56 with
    # the jaw at 0.13), so she waits with 80-98; her smile starts at 99 (a closed smile rising 0.22 -> 0.62
    # by 104), and the shot of her wide smile (234-247, 0.83-0.94) follows: her one smile rise on camera.
    "selfie": ("new_face_video-90.mp4", (80, 98), ((99, 104), (234, 247))),
}
#: hand-held clips: each frame is moved so that the face stays where it was in the first neutral frame
STEADY = {"selfie"}
#: real head turns (short_hamilton_clip.mp4 frames, inclusive): yaw ~+7 -> -25 and ~+3 -> -30 degrees
TURNS = ((88, 120), (176, 210))
ATTACKS = ("photo_still", "photo_hand", "photo_screen", "replay_naive", "replay_adaptive", "photo_turn_swap")


def read_video(path: Path, lo: int = 0, hi: int = 10**9) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        i = 0
        while i <= hi:
            ok, bgr = cap.read()
            if not ok:
                break
            if i >= lo:
                out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()
    return out


def clip(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    file, (n0, n1), smiles = CLIPS[name]
    frames = read_video(FOOTAGE / file, 0, max(hi for _, hi in smiles))
    neutral, smiling = frames[n0 : n1 + 1], [f for lo, hi in smiles for f in frames[lo : hi + 1]]
    if name in STEADY:
        target = face_box(neutral[0])
        neutral, smiling = ([place(f, face_box(f), target, f.shape) for f in part] for part in (neutral, smiling))
    return neutral, smiling


def london(i: int) -> tuple[np.ndarray, np.ndarray]:
    from edge.faces.images import load_image_file

    return (load_image_file(DATA / "london" / f"{i:03d}_neutral.jpg"),
            load_image_file(DATA / "london" / f"{i:03d}_smiling.jpg"))  # fmt: skip


def backgrounds() -> list[np.ndarray]:
    return [cv2.resize(f, (W, H)) for f in read_video(FOOTAGE / "new_face_video-90.mp4", 380, 500)[::10]]


def pingpong(frames: list[np.ndarray], i: int) -> np.ndarray:
    n = len(frames)
    if n == 1:
        return frames[0]
    k = i % (2 * n - 2)
    return frames[k if k < n else 2 * n - 2 - k]


# -- rendering ----------------------------------------------------------------------------------


def halftone_print(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A printed photo: halftone dots per channel, dot gain, paper tint and grain, white margin."""
    big = cv2.resize(img, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    h, w = big.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(2.5, 4.0)
    out = np.empty_like(big)
    for c, angle in enumerate((15, 75, 45)):
        a = math.radians(angle + rng.uniform(-3, 3))
        u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
        screen = 0.5 + 0.25 * (np.cos(2 * np.pi * u / period) + np.cos(2 * np.pi * v / period))
        out[..., c] = (big[..., c] > screen).astype(np.float32)
    out = cv2.GaussianBlur(out, (0, 0), period / 2.2)  # dot gain and the camera's blur
    paper = np.array([0.97, 0.95, 0.90], np.float32) * rng.uniform(0.85, 1.0)
    out = out * 0.8 * paper + 0.08 + rng.normal(0, 0.02, out.shape[:2])[..., None].astype(np.float32)
    m = int(0.06 * w)
    card = np.ones((h + 2 * m, w + 2 * m, 3), np.float32) * paper
    card[m : m + h, m : m + w] = out
    return np.clip(card * 255, 0, 255).astype(np.uint8)


def phone_screen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A phone showing ``img``: black bezel, screen gamma and tint, pixel grid, a glare spot."""
    h, w = img.shape[:2]
    s = 540 / max(h, w)
    content = cv2.resize(img, (int(w * s), int(h * s))).astype(np.float32) / 255
    ch, cw = content.shape[:2]
    y, x = np.mgrid[0:ch, 0:cw].astype(np.float32)
    grid = 1 - 0.25 * ((x % 3 < 1) | (y % 3 < 1))  # the pixel grid: moire once resampled by the camera
    content = (content ** rng.uniform(0.8, 1.2)) * np.array([0.92, 0.97, 1.05], np.float32) * grid[..., None]
    gx, gy, gs = rng.uniform(0.2, 0.8) * cw, rng.uniform(0.2, 0.8) * ch, rng.uniform(0.1, 0.3) * cw
    glare = rng.uniform(0.2, 0.6) * np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / (2 * gs * gs))
    content = content + glare[..., None]
    b = int(0.07 * max(ch, cw))
    card = np.full((ch + 2 * b, cw + 2 * b, 3), 0.05, np.float32)
    card[b : b + ch, b : b + cw] = content
    return np.clip(card * 255, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Hand:
    """A smooth random 3-D motion of a hand-held plane: angles in degrees, offsets in pixels."""

    yaw0: float
    pitch0: float
    amp: tuple[float, float, float]
    freq: tuple[float, float, float]
    phase: tuple[float, float, float]
    drift: tuple[float, float]
    scale: float

    @classmethod
    def random(cls, rng: np.random.Generator, still: bool = False, scale: float = 0.5) -> Hand:
        if still:
            return cls(0, 0, (0.2, 0.2, 0.1), (0.3, 0.3, 0.3), (0, 1, 2), (0.5, 0.5), scale)
        return cls(
            float(rng.uniform(-15, 15)), float(rng.uniform(-10, 10)),
            tuple(rng.uniform([3, 3, 1], [15, 12, 6])), tuple(rng.uniform(0.2, 1.0, 3)),
            tuple(rng.uniform(0, 2 * np.pi, 3)), tuple(rng.uniform(-25, 25, 2)), scale,
        )  # fmt: skip

    def homography(self, t: float, card: tuple[int, int], turn: float = 0.0) -> np.ndarray:
        """The card's homography at ``t`` s, turned ``turn`` more degrees about its vertical axis."""
        ch, cw = card
        yaw = math.radians(turn + self.yaw0 + self.amp[0] * math.sin(2 * np.pi * self.freq[0] * t + self.phase[0]))
        pitch = math.radians(self.pitch0 + self.amp[1] * math.sin(2 * np.pi * self.freq[1] * t + self.phase[1]))
        roll = math.radians(self.amp[2] * math.sin(2 * np.pi * self.freq[2] * t + self.phase[2]))
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        cr, sr = math.cos(roll), math.sin(roll)
        r = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
             @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))  # fmt: skip
        f = 600.0
        src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
        world = np.hstack([(src - [cw / 2, ch / 2]) * self.scale, np.zeros((4, 1))]) @ r.T
        world += [self.drift[0] * math.sin(0.7 * t), self.drift[1] * math.cos(0.5 * t), f]
        dst = (f * world[:, :2] / world[:, 2:3] + [W / 2, H / 2]).astype(np.float32)
        return cv2.getPerspectiveTransform(src, dst)


def sensor(img: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    """A live camera's noise (the footage is compressed: still areas repeat exactly, as no sensor does)."""
    return np.clip(img + rng.normal(0, sigma, img.shape[:2] + (1,)), 0, 255).astype(np.uint8)


def composite(card: np.ndarray, hom: np.ndarray, bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    warped = cv2.warpPerspective(card, hom, (W, H), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones(card.shape[:2], np.float32), hom, (W, H), flags=cv2.INTER_LINEAR)[..., None]
    out = warped * mask + bg * (1 - mask) + rng.normal(0, 2.0, (H, W, 1))
    return np.clip(out, 0, 255).astype(np.uint8)


# -- presentations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Door:
    """What the door shows, as a presentation sees it: the smile prompt (its time while it or a turn
    prompt is shown, and how many so far) and the turn prompt (time and direction: +1 left)."""

    smile_at: float | None = None
    smiles: int = 0
    turn_at: float | None = None
    turn_dir: int = 0


@dataclass
class Presentation:
    """Frames as a function of time and of what the door shows (a player reacting to prompts)."""

    kind: str
    frame: Callable[[float, Door], np.ndarray]


def _rt(rng: np.random.Generator) -> float:
    return float(rng.lognormal(math.log(RT_MEDIAN), RT_SIGMA))


@functools.cache
def _blazeface():
    from edge.faces.engine import FaceEngine
    from models.manifest import default_models_dir

    return FaceEngine(default_models_dir(), "cpu", 1, detector="blazeface")


def _largest(img: np.ndarray):
    return max(_blazeface().detect(img, 0), key=lambda d: d.rect.area)


def face_box(img: np.ndarray, det=None) -> tuple[float, float, float]:
    """(centre x, centre y, width) of the largest face BlazeFace finds (or of ``det``)."""
    r = (det or _largest(img)).rect
    return (r.left + r.right) / 2, (r.top + r.bottom) / 2, float(r.width)


def place(img: np.ndarray, box: tuple[float, float, float], target: tuple[float, float, float], shape) -> np.ndarray:
    """``img`` scaled and moved so that its face ``box`` lies on ``target``, in a picture of ``shape``."""
    s = target[2] / box[2]
    m = np.array([[s, 0, target[0] - s * box[0]], [0, s, target[1] - s * box[1]]], np.float32)
    return cv2.warpAffine(img, m, (shape[1], shape[0]), borderMode=cv2.BORDER_REPLICATE)


def mesh_yaw(img: np.ndarray, det=None) -> float:
    """The head yaw the door's mesh reads on the largest face of ``img`` (or ``det``; edge.faces.mesh.head_pose)."""
    from edge.faces.mesh import head_pose, roi_from_rect

    det = det or _largest(img)
    return head_pose(_blazeface().mesh.landmarks(img, roi_from_rect(det.rect, det.keypoints)).points)[0]


def head_turns() -> list[tuple[list[np.ndarray], list[tuple[float, float, float]], list[float]]]:
    """The real head turns of ``TURNS``: frames, the face box of each, the yaw of each."""
    out = []
    for lo, hi in TURNS:
        frames = read_video(DATA / "short_hamilton_clip.mp4", lo, hi)
        dets = [_largest(f) for f in frames]  # one detection per frame for its box and its yaw
        out.append((frames, [face_box(f, d) for f, d in zip(frames, dets, strict=True)],
                    [mesh_yaw(f, d) for f, d in zip(frames, dets, strict=True)]))  # fmt: skip
    return out


def turn_cut(turn, direction: int, target: tuple[float, float, float], shape: tuple[int, ...]) -> list[np.ndarray]:
    """A head turn the ``direction`` asked (+1: the rider's left; the clip's turns are to the right,
    so mirrored for +1), each frame scaled and moved so that its face box lies on ``target``: the
    head turns where the rider stands (the singer also walks and sways; that is taken out)."""
    frames, boxes, *_ = turn
    if direction > 0:
        frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
        boxes = [(f.shape[1] - 1 - cx, cy, w) for f, (cx, cy, w) in zip(frames, boxes, strict=True)]
    return [place(f, box, target, shape) for f, box in zip(frames, boxes, strict=True)]


def turned_photo(turn, direction: int, photo: np.ndarray) -> np.ndarray:
    """The most turned frame of a real head turn, its face where ``photo``'s face is: a print of a turned head."""
    return turn_cut(turn, direction, face_box(photo), photo.shape)[-1]


def turn_from(turn, direction: int, yaw: float, target: tuple[float, float, float], shape) -> list[np.ndarray]:
    """:func:`turn_cut` from its frame (in the first half) whose yaw is nearest ``yaw``."""
    yaws = [-y for y in turn[2]] if direction > 0 else turn[2]  # mirrored for the left
    start = min(range(len(yaws) // 2), key=lambda k: abs(yaws[k] - yaw))
    return turn_cut(turn, direction, target, shape)[start:]


def genuine(neutral: list[np.ndarray], smiling: list[np.ndarray], turns, rng: np.random.Generator) -> Presentation:
    """A rider who waits, smiles on the prompt and turns when asked. The turn is cut in from the
    frame of the real turn whose yaw is nearest the rider's own at that moment (a rider already
    looking 10 degrees to one side turns from there), so the cut itself adds no turn."""
    rts: list[float] = []
    turn_rt: dict[float, float] = {}
    cuts: dict[float, list[np.ndarray]] = {}  # per turn prompt
    box = face_box(neutral[0])
    which = int(rng.integers(len(turns)))
    last = [neutral[0]]  # the frame shown last

    def cut_for(direction: int) -> list[np.ndarray]:
        return turn_from(turns[which], direction, mesh_yaw(last[0]), box, neutral[0].shape)

    def frame(t: float, door: Door) -> np.ndarray:
        while len(rts) < door.smiles:
            rts.append(_rt(rng))
        if door.turn_at is not None and t >= door.turn_at + turn_rt.setdefault(door.turn_at, _rt(rng)):
            if door.turn_at not in cuts:
                cuts[door.turn_at] = cut_for(door.turn_dir)
            cut = cuts[door.turn_at]
            img = cut[min(round((t - door.turn_at - turn_rt[door.turn_at]) * FPS), len(cut) - 1)]
        elif door.smile_at is None or t < door.smile_at + rts[door.smiles - 1]:
            img = pingpong(neutral, round(t * FPS))
        else:
            img = pingpong(smiling, round((t - door.smile_at - rts[door.smiles - 1]) * FPS))
        last[0] = img
        return sensor(img, rng)

    return Presentation("genuine", frame)


def attack(
    kind: str, rng: np.random.Generator, bgs: list[np.ndarray], clips: dict, photos: list[int], turns=()
) -> Presentation:
    bg = bgs[int(rng.integers(len(bgs)))].astype(np.float32)
    hand = Hand.random(rng, still=kind == "photo_still", scale=float(rng.uniform(0.45, 0.7)))
    rt = _rt(rng)
    turn_deg, turn_sign, turn_rt = float(rng.uniform(25, 45)), int(rng.choice((-1, 1))), _rt(rng)

    def turned(t: float, door: Door) -> float:
        """Asked to turn, the attacker turns the card (over 0.4 s, after a reaction time)."""
        if door.turn_at is None:
            return 0.0
        return door.turn_dir * turn_sign * turn_deg * min(1.0, max(0.0, (t - door.turn_at - turn_rt) / 0.4))

    if kind.startswith("photo"):
        neutral, smiling = london(photos[int(rng.integers(len(photos)))])
        render = phone_screen if kind == "photo_screen" else halftone_print
        cards = [render(neutral, rng), render(smiling, rng)]
        hand = Hand(*[getattr(hand, f) for f in ("yaw0", "pitch0", "amp", "freq", "phase", "drift")], hand.scale * 0.8)
        turned_cards: dict[int, np.ndarray] = {}  # photo_turn_swap: a print of a turned head per direction

        def frame(t: float, door: Door) -> np.ndarray:
            if kind == "photo_turn_swap" and door.turn_at is not None and t >= door.turn_at + turn_rt:
                if door.turn_dir not in turned_cards:  # a real head turned the asked way, where the photo's face was
                    turn = turns[len(turned_cards) % len(turns)]
                    turned_cards[door.turn_dir] = render(turned_photo(turn, door.turn_dir, neutral), rng)
                card = turned_cards[door.turn_dir]
                return composite(card, hand.homography(t, card.shape[:2]), bg, rng)
            swap = kind == "photo_still" or (door.smile_at is not None and t >= door.smile_at + rt)
            card = cards[1 if swap else 0]
            return composite(card, hand.homography(t, card.shape[:2], turned(t, door)), bg, rng)

        return Presentation(kind, frame)
    neutral, smiling = clips[list(clips)[int(rng.integers(len(clips)))]]
    video = neutral + smiling
    cards: dict[int, np.ndarray] = {}
    start = float(rng.uniform(0, 3))

    def card_of(i: int) -> np.ndarray:
        if i not in cards:
            cards[i] = phone_screen(video[i], rng)
        return cards[i]

    def frame(t: float, door: Door) -> np.ndarray:
        if kind == "replay_naive":
            i = round(max(0.0, t - start) * FPS) % len(video) if t >= start else 0
        elif door.smile_at is not None and t >= door.smile_at + rt:  # play on the prompt, paused before it
            i = min(round((t - door.smile_at - rt) * FPS) + len(neutral), len(video) - 1)
        else:
            i = 0
        card = card_of(i)
        return composite(card, hand.homography(t, card.shape[:2], turned(t, door)), bg, rng)

    return Presentation(kind, frame)


@dataclass
class Outcome:
    kind: str
    accepted: bool
    reason: str  # "accepted" or the refusal reason, "timeout" if none within max_s
    seconds: float | None  # face arrival -> acceptance


def present(engine, p: Presentation, liveness, seed: int, max_s: float = MAX_S) -> Outcome:
    """Run one presentation through a fresh door pipeline (empty gallery: the PAD decision only)."""
    from edge.door.liveness import Liveness
    from edge.door.pipeline import MESSAGES, BusPipeline, Feedback
    from edge.faces.match import Gallery

    events: list[tuple[float, str]] = []
    now = [0.0]
    rider: list[int | None] = []  # the track the door first spoke to: the rider reads its prompts only

    def fb(f: Feedback) -> None:
        if not rider:
            rider.append(f.track_id)
        if f.track_id == rider[0]:  # a second face (a cut-in frame's background) has prompts of its own
            events.append((now[0], f.message))

    pad = Liveness(liveness, random.Random(seed)) if liveness is not None else None
    pipe = BusPipeline(engine, Gallery([], np.zeros((0, 128), np.float32)), feedback=fb, liveness=pad)
    first: float | None = None
    turns = {MESSAGES["turn_left"]: 1, MESSAGES["turn_right"]: -1}
    for i in range(int(max_s * FPS)):
        t = now[0] = i / FPS
        smiles = [ts for ts, m in events if m == MESSAGES["smile"]]
        shown = events[-1] if events else (0.0, "")
        door = Door(
            smile_at=smiles[-1] if smiles and (shown[1] == MESSAGES["smile"] or shown[1] in turns) else None,
            smiles=len(smiles), turn_at=shown[0] if shown[1] in turns else None, turn_dir=turns.get(shown[1], 0),
        )  # fmt: skip
        img = p.frame(t, door)
        decisions = pipe.process(img, t, i)
        if first is None and pipe.states:
            first = t
        if any(st.armed for st in pipe.states.values()):
            return Outcome(p.kind, True, "accepted", t - (first or 0.0))
        if decisions:
            return Outcome(p.kind, False, decisions[0].reason, None)
    return Outcome(p.kind, False, "timeout", None)


def corpus(n: int, seed: int) -> Iterator[tuple[Presentation, int]]:
    """``n`` genuine presentations and ``n`` of each attack type, with their seeds."""
    rng = np.random.default_rng(seed)
    clips = {name: clip(name) for name in CLIPS}
    bgs = backgrounds()
    turns = head_turns()
    photos = sorted(int(f.name[:3]) for f in (DATA / "london").glob("*_neutral.jpg"))
    for j in range(n):
        name = list(clips)[j % len(clips)]
        yield genuine(*clips[name], turns, np.random.default_rng(rng.integers(2**32))), int(rng.integers(2**31))
    for kind in ATTACKS:
        for _ in range(n):
            r = np.random.default_rng(rng.integers(2**32))
            yield attack(kind, r, bgs, clips, photos, turns), int(rng.integers(2**31))


def summarise(outcomes: list[Outcome]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind in ("genuine", *ATTACKS):
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        acc = [o for o in mine if o.accepted]
        secs = [o.seconds for o in acc if o.seconds is not None]
        out[kind] = {
            "n": len(mine),
            "accepted": len(acc),
            "rate": (len(mine) - len(acc)) / len(mine) if kind == "genuine" else len(acc) / len(mine),
            "reasons": Counter(o.reason for o in mine),
            "seconds": float(np.mean(secs)) if secs else float("nan"),
        }
    return out





TURN_KINDS = ("genuine", "card_turned", "turned_print_swap", "turned_video_replay")


def turn_presentation(kind: str, r: np.random.Generator, direction: int, sources: dict) -> Callable:
    """``frame(k, t)`` of one turn-stage presentation: ``k`` frames since the reaction to the
    prompt (negative before it), ``t`` seconds since the start (see :func:`turn_stage`)."""
    turn = sources["turns"][int(r.integers(len(sources["turns"])))]
    bg = sources["bgs"][int(r.integers(len(sources["bgs"])))].astype(np.float32)
    hand = Hand.random(r, scale=float(r.uniform(0.45, 0.7)) * 0.8)
    deg = direction * int(r.choice((-1, 1))) * float(r.uniform(25, 45))
    if kind in ("genuine", "turned_video_replay"):
        clips = sources["clips"]
        _, smiling = clips[list(clips)[int(r.integers(len(clips)))]]
        if kind == "genuine":
            cut: list[np.ndarray] = []

            def rider(k: int, t: float) -> np.ndarray:
                if k < 0:
                    return sensor(pingpong(smiling, round(t * FPS)), r)
                if not cut:  # the turn starts from the rider's yaw at the reaction
                    now = pingpong(smiling, round(t * FPS))
                    cut.extend(turn_from(turn, direction, mesh_yaw(now), face_box(smiling[0]), smiling[0].shape))
                return sensor(cut[min(k, len(cut) - 1)], r)

            return rider
        cut = turn_from(turn, direction, mesh_yaw(smiling[0]), face_box(smiling[0]), smiling[0].shape)
        screens = [phone_screen(f, r) for f in [smiling[0], *cut]]

        def replay(k: int, t: float) -> np.ndarray:
            card = screens[min(max(k + 1, 0), len(screens) - 1)]
            return composite(card, hand.homography(t, card.shape[:2]), bg, r)

        return replay
    photos = sources["photos"]
    neutral, smiling = london(photos[int(r.integers(len(photos)))])
    card0 = halftone_print(smiling, r)
    card1 = card0
    if kind == "turned_print_swap":
        card1 = halftone_print(turned_photo(turn, direction, neutral), r)

    def held(k: int, t: float) -> np.ndarray:
        card = card1 if k >= 0 else card0
        turned = deg * min(1.0, k / (0.4 * FPS)) if kind == "card_turned" and k >= 0 else 0.0
        return composite(card, hand.homography(t, card.shape[:2], turned), bg, r)

    return held


def turn_outcome(engine, cfg, frame: Callable, direction: int, rt: float) -> str:
    """Run one turn-stage presentation: the face is tracked with the mesh as the door does; the
    prompt comes at 1 s, asking ``direction``; ``frame`` reacts ``rt`` s later. One prompt only."""
    from edge.door.liveness import Liveness, LivenessState, outline_ratio
    from edge.door.pad_cues import moire_peak
    from edge.door.quality import face_patch
    from edge.faces.mesh import head_pose, roi_from_points, roi_from_rect

    pad, st, prev = Liveness(cfg), LivenessState(), None
    st.turns = cfg.max_turns  # one prompt: its outcome is final
    for i in range(int((1.0 + cfg.turn_max_s + 0.5) * FPS)):
        t = i / FPS
        img = frame(round((t - 1.0 - rt) * FPS), t)
        dets = engine.detect(img, 0)
        if not dets:
            prev = None
            continue
        det = max(dets, key=lambda d: d.rect.area)
        roi = roi_from_points(prev) if prev is not None else roi_from_rect(det.rect, det.keypoints)
        face = engine.mesh.landmarks(img, roi)
        prev = face.points if face.presence >= 0.5 else None
        if prev is None:
            continue
        if t < 1.0:  # before the prompt: what the smile phase collects
            st.pose.append((t, head_pose(prev)[0], outline_ratio(prev)))
            if cfg.screen_cue:
                st.moire.append(moire_peak(face_patch(img, det.rect)))
            continue
        if st.turn_at is None:
            st.turn_at, st.turn_dir = 1.0, direction
        v = pad.turn(st, t, prev)
        if v.accept or v.refuse:
            return "accepted" if v.accept else f"{v.refuse}:{v.note}"
    return "lost"


def turn_stage(engine, cfg, n: int, seed: int) -> None:
    """The head-turn check alone, on presentations that reached it (one prompt each, at 1 s).

    ``genuine``: the smiling rider, then a real head turn (``TURNS``) the asked way;
    ``card_turned``: a smiling print turned 25-45 degrees by hand; ``turned_print_swap``: a smiling
    print swapped for a print of a head turned the asked way; ``turned_video_replay``: a phone
    playing a video of a real head turning the asked way (a video of the rider turning).
    Accepted: the turn counts and the image cues pass.
    """
    rng = np.random.default_rng(seed)
    sources = {
        "clips": {name: clip(name) for name in CLIPS}, "bgs": backgrounds(), "turns": head_turns(),
        "photos": sorted(int(f.name[:3]) for f in (DATA / "london").glob("*_neutral.jpg")),
    }  # fmt: skip
    print(f"{'kind':22} {'n':>4} {'accepted':>8}  outcomes (reason:note)")
    for kind in TURN_KINDS:
        outcomes: Counter = Counter()
        for _ in range(n):
            r = np.random.default_rng(rng.integers(2**32))
            direction, rt = int(r.choice((-1, 1))), _rt(r)
            outcomes[turn_outcome(engine, cfg, turn_presentation(kind, r, direction, sources), direction, rt)] += 1
        print(f"{kind:22} {n:4d} {outcomes['accepted']:8d}  {dict(outcomes)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="presentations per type (genuine and each attack)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("genuine", *ATTACKS), help="run one presentation type")
    ap.add_argument("--turn-stage", action="store_true", help="only the head-turn check, on presentations reaching it")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every presentation's outcome")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    cfg = load_config(None)
    engine = FaceEngine(cfg.models.dir, "cpu", 1, detector="blazeface")
    if args.turn_stage:
        turn_stage(engine, cfg.liveness, args.n, args.seed)
        return
    t0 = time.perf_counter()
    outcomes = []
    for p, s in corpus(args.n, args.seed):
        if args.only and p.kind != args.only:
            continue
        outcomes.append(present(engine, p, cfg.liveness, s))
        if args.verbose:
            print(outcomes[-1])
    res = summarise(outcomes)
    print(f"liveness: {cfg.liveness.model_dump()}")
    print(f"{'type':16} {'n':>4} {'accepted':>8} {'APCER/BPCER':>11}  mean s to accept  refusal reasons")
    for kind, r in res.items():
        label = "BPCER" if kind == "genuine" else "APCER"
        print(f"{kind:16} {r['n']:4d} {r['accepted']:8d} {label} {100 * r['rate']:5.1f}%  {r['seconds']:16.2f}  "
              f"{dict(r['reasons'])}")  # fmt: skip
    if "genuine" not in res:
        return
    base = [present(engine, p, None, s) for p, s in corpus(args.n, args.seed) if p.kind == "genuine"]
    b = summarise(base)["genuine"]
    print(f"genuine without the liveness checks: BPCER {100 * b['rate']:.1f}%, mean {b['seconds']:.2f} s to accept; "
          f"the challenge adds {res['genuine']['seconds'] - b['seconds']:.2f} s")  # fmt: skip
    print(f"{len(outcomes) + len(base)} presentations in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
