"""Presentation-attack detection on a few presentations of bench/pad.py's corpus (real footage and
photos, synthetic prints, screens and replays): the targets of issue 17 on a small sample.

The full measurement (APCER per attack type, BPCER, added seconds) is ``bench/pad.py``; its results
and what they cannot show are in docs/presentation-attacks.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.door.liveness import LivenessConfig


@pytest.fixture(scope="module")
def presentations(pad):
    """Two genuine riders (one per clip) and the first presentation of each attack type, seed 1."""
    out: dict[str, list] = {}
    for p, seed in pad.corpus(2, 1):
        out.setdefault(p.kind, []).append((p, seed))
    return out


def test_genuine_riders_who_react_to_the_prompt_are_accepted(pad, face_engine, presentations):
    for p, seed in presentations["genuine"]:
        o = pad.present(face_engine, p, LivenessConfig(), seed, max_s=8.0)
        assert o.accepted, o  # after a smile on the prompt and a real head turn the asked way
        assert 0.3 + 0.5 <= o.seconds <= 8.0  # stable time + the shortest random delay at least


@pytest.mark.parametrize(
    "kind", ["photo_still", "photo_hand", "photo_screen", "replay_naive", "replay_adaptive", "photo_turn_swap"]
)
def test_attacks_are_refused(pad, face_engine, presentations, kind):
    p, seed = presentations[kind][0]
    o = pad.present(face_engine, p, LivenessConfig(), seed, max_s=5.0)
    assert not o.accepted, o


def test_an_adaptive_replay_passes_the_smile_gate_alone_but_not_the_screen_cue(pad, face_engine, presentations):
    p, seed = presentations["replay_adaptive"][0]
    gate_only = pad.present(face_engine, p, None, seed, max_s=5.0)
    assert gate_only.accepted  # the attack is real: the smile gate alone lets it through
    o = pad.present(face_engine, p, LivenessConfig(), seed, max_s=5.0)
    assert not o.accepted and o.reason == "screen"


def test_a_hand_moved_print_swap_that_passes_the_smile_challenge_is_refused_when_turned(pad, face_engine):
    """The attack left open before the head turn: a neutral print swapped for a smiling one on the
    prompt (bench/pad.py, --n 10 --seed 1, the second photo_hand presentation). It reacts like a
    rider, so the smile challenge accepts it; turned by hand when asked, its mesh yaw does not follow."""
    p, seed = [x for x in pad.corpus(10, 1) if x[0].kind == "photo_hand"][1]
    assert pad.present(face_engine, p, LivenessConfig(turn=False), seed).accepted
    o = pad.present(face_engine, p, LivenessConfig(), seed)
    assert not o.accepted and o.reason == "flat", o


@pytest.fixture(scope="module")
def turn_sources(pad):
    return {
        "clips": {name: pad.clip(name) for name in pad.CLIPS}, "bgs": pad.backgrounds()[:2], "turns": pad.head_turns(),
        "photos": [1, 2, 3],
    }  # fmt: skip


@pytest.mark.parametrize(
    "kind, outcome",
    [
        ("genuine", "accepted"),  # a real head turn, the asked way
        ("card_turned", "flat"),  # a print turned 25-45 degrees: narrower, its mesh yaw does not follow
        ("turned_print_swap", "turn"),  # a print of a turned head swapped in: the yaw jumps in one frame
    ],
)
def test_the_head_turn_on_its_own(pad, face_engine, turn_sources, kind, outcome):
    r = np.random.default_rng(3)
    direction, rt = 1, 0.4
    frame = pad.turn_presentation(kind, r, direction, turn_sources)
    got = pad.turn_outcome(face_engine, LivenessConfig(), frame, direction, rt)
    assert got.split(":")[0] == outcome, got


def test_a_rider_who_talks_while_waiting_and_moves_her_head_is_accepted(pad, face_engine):
    """The second genuine rider (the woman of the outdoor clip): she talks until the prompt and her
    head sways while she smiles; the smile onset counts from her last talking frame, and the turn
    from where her head is at the prompt (docs/presentation-attacks.md, "Found on the way")."""
    p, seed = next(x for i, x in enumerate(pad.corpus(60, 3)) if i == 5)  # one that the old rules refused
    assert p.kind == "genuine"
    o = pad.present(face_engine, p, LivenessConfig(), seed)
    assert o.accepted, o
