"""The presentation-attack checks of edge.door.liveness on synthetic inputs (no models, milliseconds).

The measurement on real footage and the synthetic attack corpus is tests/unit/test_pad.py and
bench/pad.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from edge.door.liveness import Liveness, LivenessConfig, LivenessState, outline_ratio
from edge.door.pipeline import MESSAGES

FPS = 30.0
CFG = LivenessConfig(
    stable_s=0.3, delay_min_s=0.5, delay_max_s=2.0, reaction_min_s=0.15, reaction_max_s=1.5, turn=False
)  # the smile challenge alone; the turn has its own tests below
POINTS = np.zeros((478, 3))


def run(cfg: LivenessConfig, smile_at, seconds: float = 6.0, seed: int = 0, rise_frames: int = 3):
    """Feed frames; ``smile_at(prompt_at) -> ts`` says when the smile starts (None: never).

    A smile: ``rise_frames`` 'between' frames, then smiling frames; the gate passes on the third.
    Returns (verdicts, state)."""
    pad = Liveness(cfg, random.Random(seed))
    st = LivenessState()
    out = []
    start = None
    for i in range(int(seconds * FPS)):
        ts = i / FPS
        if start is None and st.prompt_at is not None:
            start = smile_at(st.prompt_at)
        k = -1 if start is None or ts < start else int(round((ts - start) * FPS))
        neutral = k < 0
        smiling = k >= rise_frames
        passed = k == rise_frames + 2
        v = pad.update(st, ts, POINTS, neutral, passed, smiling)
        out.append(v)
        if v.accept or v.refuse:
            break
        if v.note:  # the rider relaxes and waits for the next prompt
            start = None
    return out, st


def test_a_smile_that_reacts_to_the_prompt_is_accepted():
    verdicts, st = run(CFG, lambda p: p + 0.4)
    assert verdicts[-1].accept and verdicts[-1].refuse is None
    assert CFG.reaction_min_s <= st.onset - st.prompt_at <= CFG.reaction_max_s
    assert not verdicts[0].prompted  # "look at the camera" first


def test_the_prompt_comes_after_a_random_delay():
    delays = set()
    for seed in range(20):
        _, st = run(CFG, lambda p: None, seconds=3.0, seed=seed)
        assert CFG.delay_min_s <= st.delay <= CFG.delay_max_s
        assert st.prompt_at == pytest.approx(CFG.stable_s + st.delay, abs=1.5 / FPS)
        delays.add(round(st.delay, 2))
    assert len(delays) >= 15


@pytest.mark.parametrize(
    "when, note",
    [
        (lambda p: p - 0.1 if p else None, "already"),  # under way when the prompt came
        (lambda p: 0.1, "early"),  # a recording that smiles on its own schedule, before any prompt
        (lambda p: p + 0.05 if p else None, "early"),  # faster than a human can react
        (lambda p: p + 2.0 if p else None, "late"),
    ],
)
def test_smiles_not_reacting_to_the_prompt_do_not_count(when, note):
    pad = Liveness(CFG.model_copy(update={"max_challenges": 1}), random.Random(0))
    st = LivenessState()
    verdict = None
    start = None
    for i in range(int(8 * FPS)):
        ts = i / FPS
        if start is None:
            start = when(st.prompt_at)
        k = -1 if start is None or ts < start else int(round((ts - start) * FPS))
        verdict = pad.update(st, ts, POINTS, k < 0, k == 5, k >= 3)
        if verdict.note or verdict.accept or verdict.refuse:
            break
    assert verdict is not None and not verdict.accept
    assert verdict.note == note
    # a smile before the first prompt was due only schedules it; after a prompt the one challenge is spent
    assert verdict.refuse == ("challenge" if st.challenges >= 1 and verdict.prompted else None) or note == "early"


def test_a_swapped_photo_smiles_in_one_frame_and_does_not_count():
    verdicts, _ = run(CFG.model_copy(update={"max_challenges": 1}), lambda p: p + 0.4, rise_frames=0)
    assert verdicts[-1].note == "instant" and verdicts[-1].refuse == "challenge"


def test_a_smile_that_starts_in_time_but_reaches_full_too_late_does_not_count():
    # onset 0.4 s after the prompt, but 40 frames (1.33 s) of rise: full 1.7 s after it
    verdicts, _ = run(CFG.model_copy(update={"max_challenges": 1}), lambda p: p + 0.4, rise_frames=40)
    assert verdicts[-1].note == "late" and not verdicts[-1].accept


def test_a_missed_challenge_is_reissued_then_bounded():
    pad = Liveness(CFG.model_copy(update={"max_challenges": 2}), random.Random(1))
    st = LivenessState()
    notes = []
    for i in range(int(10 * FPS)):
        ts = i / FPS
        smile_now = st.prompt_at is not None and ts > st.prompt_at - 0.2  # always early: a replay
        k = int((ts - (st.prompt_at - 0.2)) * FPS) if smile_now else -1
        v = pad.update(st, ts, POINTS, k < 0, k == 5, k >= 3)
        if v.note:
            notes.append(v.note)
        if v.refuse:
            break
    assert v.refuse == "challenge" and len(notes) == 2 and st.challenges == 2
    assert MESSAGES["challenge"] and MESSAGES["wait"]


def _head(yaw_deg: float, plane: bool, squeeze: float = 1.0) -> np.ndarray:
    """Mesh output for a face: a real head turned by ``yaw_deg`` (its 3-D points rotate), or a
    photo turned so (the mesh sees the same frontal face, ``squeeze``d narrower: its yaw stays)."""
    pts = np.zeros((478, 3))
    # forehead 10, chin 152, right cheek 234, left cheek 454, nose tip 1 (x, y, z in px; z away from the camera)
    pts[[10, 152, 234, 454, 1]] = [[0, -90, 20], [0, 90, 20], [-70, 0, 60], [70, 0, 60], [0, 10, -30]]
    if plane:
        pts[:, 0] *= squeeze
        return pts + [320, 240, 0]
    a = -math.radians(yaw_deg)  # edge.faces.mesh.head_pose then reads +yaw_deg
    r = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return pts @ r.T + [320, 240, 0]


def turn_run(cfg: LivenessConfig, yaw_of, plane: bool = False, seconds: float = 10.0, seed: int = 0):
    """Smile on the first prompt (0.4 s after it), then answer turn prompts with
    ``yaw_of(dir, seconds since the turn prompt) -> degrees`` (a photo: squeezed by the turn, yaw 0)."""
    pad = Liveness(cfg, random.Random(seed))
    st = LivenessState()
    asked: list[tuple[float, int]] = []
    v = None
    for i in range(int(seconds * FPS)):
        ts = i / FPS
        if st.turning:
            if not asked or asked[-1][0] != st.turn_at:
                asked.append((st.turn_at, st.turn_dir))
            yaw = yaw_of(st.turn_dir, ts - st.turn_at)
            pts = _head(0, True, math.cos(math.radians(yaw))) if plane else _head(yaw, False)
            v = pad.turn(st, ts, pts)
        else:
            k = -1 if st.prompt_at is None or ts < st.prompt_at + 0.4 else int(round((ts - st.prompt_at - 0.4) * FPS))
            v = pad.update(st, ts, _head(0, False), k < 0, k == 5, k >= 3)
        if v.accept or v.refuse:
            break
    return v, st, asked


def _ramp(delay: float, deg: float = 25.0, over: float = 0.3):
    return lambda d, t: d * deg * min(1.0, max(0.0, (t - delay) / over))


def test_a_head_that_turns_the_asked_way_passes_the_second_challenge():
    v, st, asked = turn_run(CFG.model_copy(update={"turn": True}), _ramp(0.4))
    assert v.accept and len(asked) == 1 and st.turns == 1
    assert {turn_run(CFG.model_copy(update={"turn": True}), _ramp(0.4), seed=s)[2][0][1] for s in range(12)} == {-1, 1}


def test_a_face_that_already_turned_on_its_own_is_still_asked():
    """A head that looked around while waiting (or a replayed video of one) has shown depth, but
    not that anyone answers the door now: the turn is asked all the same."""
    cfg = CFG.model_copy(update={"turn": True})
    pad = Liveness(cfg, random.Random(0))
    st = LivenessState()
    for i in range(30):  # 20 degrees, held
        pad.update(st, i / FPS, _head(20 if i >= 15 else 0, False), True, False)
    st.prompt_at, st.challenges, st.last_neutral, st.first_smile = 0.5, 1, 1.0, 1.1
    v = pad.update(st, 1.2, _head(0, False), False, True, True)
    assert not v.accept and v.ask in ("turn_left", "turn_right") and st.turning


@pytest.mark.parametrize(
    "yaw_of, plane, refuse, note",
    [
        (_ramp(0.4), True, "flat", "none"),  # a photo turned 25 degrees: narrower, but its mesh yaw stays
        (lambda d, t: 0.0, False, "turn", "none"),  # a rider (or a photo) that does not turn
        (lambda d, t: -d * 25.0 * min(1.0, t / 0.3), False, "turn", "wrong_way"),
        (lambda d, t: d * 25.0, False, "turn", "early"),  # turned before the prompt: not a reaction
        (lambda d, t: d * 25.0 * (t >= 0.6), False, "turn", "instant"),  # a swapped photo of a turned head
    ],
)
def test_faces_that_do_not_turn_like_a_head_are_refused(yaw_of, plane, refuse, note):
    v, st, asked = turn_run(CFG.model_copy(update={"turn": True, "max_turns": 1}), yaw_of, plane)
    assert v.refuse == refuse and v.note == note, v
    assert len(asked) == st.turns == 1


def test_turn_prompts_are_bounded():
    v, st, asked = turn_run(CFG.model_copy(update={"turn": True}), lambda d, t: 0.0)
    assert v.refuse == "turn" and len(asked) == st.turns == CFG.max_turns == 2  # a new random prompt, then the driver


def test_a_head_that_moves_while_waiting_or_goes_the_wrong_way_first_still_passes():
    # swaying 8 degrees as the prompt comes, then the wrong way, then round the asked way in time
    def yaw_of(d, t):
        return 8.0 * math.sin(6 * t) - d * 10.0 * (0.2 < t < 0.8) + d * 25.0 * min(1.0, max(0.0, (t - 1.0) / 0.6))

    v, st, asked = turn_run(CFG.model_copy(update={"turn": True, "max_turns": 1}), yaw_of)
    assert v.accept, v


def test_outline_ratio_narrows_when_a_photo_turns():
    assert outline_ratio(_head(0, True, math.cos(math.radians(25)))) == pytest.approx(
        outline_ratio(_head(0, True)) * math.cos(math.radians(25)), rel=1e-6
    )


def test_config_rejects_inverted_windows():
    with pytest.raises(ValidationError):
        LivenessConfig(delay_min_s=2.0, delay_max_s=1.0)
    with pytest.raises(ValidationError):
        LivenessConfig(reaction_min_s=1.0, reaction_max_s=0.5)


def test_every_liveness_refusal_has_a_rider_message():
    from typing import get_args, get_type_hints

    from edge.door.liveness import Verdict

    literal = get_args(get_type_hints(Verdict)["refuse"])[0]
    reasons = get_args(literal)
    assert set(reasons) == {"turn", "flat", "screen", "bezel", "glare", "colour", "nir", "challenge"}
    for reason in reasons:
        assert "driver" in MESSAGES[reason]
    assert MESSAGES["wait"] == "Look at the camera"
    assert "left" in MESSAGES["turn_left"] and "right" in MESSAGES["turn_right"]


def test_a_head_already_turned_to_one_side_is_asked_to_turn_the_other_way():
    cfg = CFG.model_copy(update={"turn": True})
    for yaw, side in ((12.0, -1), (-12.0, 1)):
        for seed in range(6):
            pad, st = Liveness(cfg, random.Random(seed)), LivenessState()
            st.pose.extend((i / FPS, yaw, 1.0) for i in range(3))
            assert pad._ask_turn(st, 0.1).ask == ("turn_left" if side > 0 else "turn_right")
