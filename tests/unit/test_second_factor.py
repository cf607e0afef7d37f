"""The second factor: keyed code hashes, attempt limits, lockout, the keypad, and the pipeline's hook."""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import pytest

from edge.door.pipeline import BusPipeline, PipelineConfig, TrackState
from edge.door.second_factor import SecondFactor, SecondFactorConfig, code_hash, valid_code
from edge.faces.match import Match
from hardware.keypad import open_keypad
from hardware.keypad.console import ConsoleKeypad

KEY = b"k" * 32
CODE = "4711"


class ListKeypad:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def poll(self) -> str | None:
        return self.entries.pop(0) if self.entries else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(cfg: SecondFactorConfig | None = None):
    pad, clock = ListKeypad(), Clock()
    hashes = {"alice": code_hash(KEY, "alice", CODE), "bob": code_hash(KEY, "bob", "9999")}
    return SecondFactor(pad, hashes.get, KEY, cfg or SecondFactorConfig(), clock), pad, clock


def test_code_hash_is_keyed_and_bound_to_the_rider():
    h = code_hash(KEY, "alice", CODE)
    assert len(h) == 32 and h == code_hash(KEY, "alice", CODE)
    assert h != code_hash(b"x" * 32, "alice", CODE) and h != code_hash(KEY, "bob", CODE)
    assert CODE.encode() not in h
    with pytest.raises(ValueError):
        code_hash(b"short", "alice", CODE)
    assert valid_code("1234") and not valid_code("123") and not valid_code("12a4") and not valid_code("１２３４")


def test_right_code_confirms_the_rider_the_face_named(caplog):
    sf, pad, _ = make()
    caplog.set_level(logging.DEBUG)
    pad.entries.append("0000")  # typed before the prompt: dropped
    assert sf.start(1, "alice")
    assert sf.poll(1) == "pending"
    pad.entries.append("1234")
    assert sf.poll(1) == "wrong"
    pad.entries.append(CODE)
    assert sf.poll(1) == "ok"
    assert CODE not in caplog.text and "1234" not in caplog.text  # nothing of a code is ever logged
    assert CODE not in repr(sf)


def test_another_riders_code_does_not_confirm():
    sf, pad, _ = make()
    assert sf.start(1, "alice")
    pad.entries.append("9999")  # bob's code
    assert sf.poll(1) == "wrong"


def test_attempts_per_track_then_see_the_driver():
    sf, pad, _ = make(SecondFactorConfig(max_attempts=2))
    assert sf.start(1, "alice")
    pad.entries += ["1111", "2222", CODE]
    assert [sf.poll(1), sf.poll(1)] == ["wrong", "refused"]
    assert sf.poll(1) == "refused"  # the track is done, even with the right code now


def test_failures_per_rider_lock_the_code_across_tracks_for_the_window():
    sf, pad, clock = make(SecondFactorConfig(max_attempts=3, max_failures=4, lockout_s=600))
    for track in (1, 2):
        assert sf.start(track, "alice")
        pad.entries += ["1111", "2222"]
        assert sf.poll(track) == "wrong"
        assert sf.poll(track) in ("wrong", "refused")
    assert sf.locked("alice") and not sf.start(3, "alice")  # 4 failures within the window
    assert sf.start(4, "bob")  # another rider is not affected
    clock.now += 601
    assert not sf.locked("alice") and sf.start(5, "alice")
    pad.entries.append(CODE)
    assert sf.poll(5) == "ok"


def test_timeout_and_riders_without_a_code():
    sf, pad, clock = make(SecondFactorConfig(timeout_s=10))
    assert not sf.start(1, "carol")  # no code enrolled: the driver
    assert sf.start(2, "alice")
    clock.now += 11
    pad.entries.append(CODE)
    assert sf.poll(2) == "refused"


def test_console_keypad_reads_lines():
    pad = ConsoleKeypad(io.StringIO("1234\n 5678 \n"))
    deadline = time.monotonic() + 2
    got = []
    while len(got) < 2 and time.monotonic() < deadline:
        entry = pad.poll()
        if entry is not None:
            got.append(entry)
    assert got == ["1234", "5678"]
    assert open_keypad("none") is None


def test_pipeline_charges_only_after_the_code_checks_out():
    sf, pad, _ = make()
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = PipelineConfig()
    pipe.second_factor = sf
    prompts = []
    pipe.feedback = prompts.append
    pipe.states = {}
    st = pipe.states.setdefault(7, TrackState())
    named = Match("alice", 0.42, 0.3)
    assert sf.start(7, "alice")
    st.awaiting_code = named
    assert pipe._step(None, 7, None, st, 1.0, 10) is None  # nothing typed yet: no landmarks, no charge
    pad.entries.append("0000")
    assert pipe._step(None, 7, None, st, 1.1, 11) is None
    assert prompts[-1].message.startswith("Wrong code")
    pad.entries.append(CODE)
    decision = pipe._step(None, 7, None, st, 1.2, 12)
    assert decision.action == "charge" and decision.rider_id == "alice" and decision.distance == 0.42
    assert CODE not in repr(decision)


def test_pipeline_sends_to_the_driver_when_the_code_fails():
    sf, pad, _ = make(SecondFactorConfig(max_attempts=1))
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = PipelineConfig()
    pipe.second_factor = sf
    pipe.feedback = lambda fb: None
    pipe.states = {}
    st = pipe.states.setdefault(3, TrackState())
    assert sf.start(3, "alice")
    st.awaiting_code = Match("alice", 0.42, 0.3)
    pad.entries.append("0000")
    decision = pipe._step(None, 3, None, st, 1.0, 10)
    assert decision.action == "see_driver" and decision.rider_id is None and decision.reason == "second_factor"


# -- the code's way from enrollment to the bus ----------------------------------------------------


def test_code_travels_keyed_per_bus_and_is_checked_offline(tmp_path):
    from enrollment.store import RiderRecord, StoreError, TemplateStore
    from tests.helpers import MODEL, Fleet, vectors

    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    store.add_rider(RiderRecord(rider_id="alice"), [vectors(1)[0]], model_sha256=MODEL)
    store.add_rider(RiderRecord(rider_id="bob"), [vectors(2)[1]], model_sha256=MODEL)
    with pytest.raises(StoreError):
        store.set_code("alice", "12")  # too short
    store.set_code("alice", CODE)
    assert CODE not in str(store.audit_log("alice")) and "code_set" in str(store.audit_log("alice"))
    assert CODE.encode() not in (tmp_path / "store.db").read_bytes()
    fleet = Fleet(tmp_path, store, ("bus-1", "bus-2"))
    fleet.dist.sync()
    assert all(o == "applied" for o in fleet.deliver())
    b1, b2 = fleet.buses["bus-1"], fleet.buses["bus-2"]
    assert b1.code_hash("bob") is None
    h1, h2 = b1.code_hash("alice"), b2.code_hash("alice")
    assert h1 == code_hash(b1.code_key, "alice", CODE) and h1 != h2  # keyed for each bus
    assert h1 not in b1.stored_bytes()  # sealed at rest in the bus's encrypted gallery
    pad = ListKeypad()
    sf = SecondFactor(pad, b1.code_hash, b1.code_key)
    assert sf.start(1, "alice")
    pad.entries.append(CODE)
    assert sf.poll(1) == "ok"
    # a new code reaches the bus with the next sync; erasure removes it
    store.set_code("alice", "2468")
    fleet.dist.sync()
    fleet.deliver()
    assert b1.code_hash("alice") == code_hash(b1.code_key, "alice", "2468")
    fleet.dist.erase("alice")
    fleet.deliver()
    assert b1.code_hash("alice") is None and store.code_digest("alice") is None


def test_wiring_builds_the_second_factor_only_with_a_keypad(tmp_path):
    from facefare import wiring
    from facefare.config import FacefareConfig

    class G:
        code_key = KEY

        def code_hash(self, rider_id):
            return None

    assert wiring.second_factor(FacefareConfig(), G()) is None  # default: no keypad, the driver instead
    cfg = FacefareConfig(second_factor={"keypad": "console"})
    sf = wiring.second_factor(cfg, G())
    assert isinstance(sf, SecondFactor) and sf.key == KEY


def test_set_code_command_never_echoes_the_code(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from enrollment.store import RiderRecord, TemplateStore
    from facefare.cli import main
    from tests.helpers import MODEL, vectors

    monkeypatch.setenv("FACEFARE_HOME", str(tmp_path))
    monkeypatch.setenv("FACEFARE_ENROLLMENT__STORE", str(tmp_path / "store.db"))
    monkeypatch.setenv("FACEFARE_ENROLLMENT__KEY_FILE", str(tmp_path / "store.key"))
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    store.add_rider(RiderRecord(rider_id="alice"), [vectors(1)[0]], model_sha256=MODEL)
    store.close()
    result = CliRunner().invoke(main, ["enrollment", "set-code", "alice"], input=f"{CODE}\n{CODE}\n")
    assert result.exit_code == 0, result.output
    assert CODE not in result.output and "code set for alice" in result.output
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    assert store.code_digest("alice") is not None


def test_the_code_picks_one_rider_of_the_faces_shortlist():
    """1:N becomes 1:few: the face names a few close riders, the typed code says which one it is."""
    sf, pad, _ = make()
    assert sf.start(1, "alice", ["bob", "carol"])  # carol has no code: left out
    assert sf.waiting() == {1: "alice"}
    pad.entries.append("9999")  # bob's code
    assert sf.poll(1) == "ok" and sf.confirmed(1) == "bob" and sf.confirmed(1) is None
    assert sf.start(2, "alice", ["bob"])
    pad.entries.append("5555")
    assert sf.poll(2) == "wrong" and sf.locked("bob") is False  # failures count against the face's nearest


def test_two_riders_of_a_shortlist_with_the_same_code_charge_nobody():
    pad, clock = ListKeypad(), Clock()
    hashes = {"alice": code_hash(KEY, "alice", CODE), "dave": code_hash(KEY, "dave", CODE)}
    sf = SecondFactor(pad, hashes.get, KEY, SecondFactorConfig(), clock)
    assert sf.start(1, "alice", ["dave"])
    pad.entries.append(CODE)
    assert sf.poll(1) == "wrong" and sf.confirmed(1) is None


def test_shortlist_is_the_nearest_few_within_the_threshold():
    from edge.faces.match import Gallery, shortlist

    g = Gallery(["a", "a", "b", "c", "d"], np.array([[0.1, 0], [0.5, 0], [0.3, 0], [0.45, 0], [2.0, 0]]))
    assert shortlist(g, np.zeros(2), threshold=0.5) == [("a", pytest.approx(0.1)), ("b", pytest.approx(0.3)),
                                                        ("c", pytest.approx(0.45))]  # fmt: skip
    assert [r for r, _ in shortlist(g, np.zeros(2), threshold=0.5, k=2)] == ["a", "b"]


def test_pipeline_charges_the_shortlisted_rider_whose_code_was_typed():
    sf, pad, _ = make()
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = PipelineConfig()
    pipe.second_factor = sf
    pipe.feedback = lambda fb: None
    pipe.states = {}
    st = pipe.states.setdefault(5, TrackState())
    assert sf.start(5, "alice", ["bob"])
    st.awaiting_code, st.shortlist = Match("alice", 0.41, 0.02), [("alice", 0.41), ("bob", 0.43)]
    pad.entries.append("9999")
    decision = pipe._step(None, 5, None, st, 1.0, 10)
    assert decision.action == "charge" and decision.rider_id == "bob"
    assert decision.distance == pytest.approx(0.43) and decision.margin == pytest.approx(-0.02)
