"""edge.door.node: capture, pipeline and ledger on their own threads; none waits for another."""

from __future__ import annotations

import ast
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.door.node import BusNode
from edge.door.pipeline import BusPipeline, Feedback
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig
from hardware.cameras import Frame, VideoFileSource
from tests.helpers import ENROLL, RIDER_CLIP, make_gallery

AT = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


class SlowLedger(Ledger):
    """A real ledger on a disk that takes ``delay`` seconds per charge (an SD card under load)."""

    delay = 1.5

    def charge(self, *args, **kwargs):  # type: ignore[override]
        self.charging = time.monotonic()
        time.sleep(self.delay)
        return super().charge(*args, **kwargs)


def test_node_charges_the_clip_rider_on_the_ledger_thread(face_engine, templates, faces_dir, tmp_path):
    ledger = Ledger(tmp_path / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bus-node")
    fed: list[Feedback] = []
    pipe = BusPipeline(face_engine, make_gallery(templates, [*ENROLL, "man"]))
    node = BusNode(pipe, ledger, feedback=fed.append, drop_frames=False, clock=lambda: AT)
    stats = node.run(VideoFileSource(faces_dir / RIDER_CLIP))
    assert stats.dropped_frames == 0 and stats.frames == 72
    charged = [d for d in stats.decisions if d.action == "charge"]
    assert [d.rider_id for d in charged] == ["man"]
    assert charged[0].fare is not None and charged[0].fare.amount_minor == 250
    assert "2.50" in charged[0].message  # the door shows the fare, not just "matched"
    assert [r[0] for r in ledger.db.execute("SELECT rider_id FROM fares")] == ["man"]
    assert any(fb.decision is charged[0] for fb in fed)
    assert len(stats.decision_ms) == len(stats.decisions) and len(stats.charge_ms) == 1


def test_no_charge_while_the_gallery_catches_up(face_engine, templates, faces_dir, tmp_path):
    ledger = Ledger(tmp_path / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bus-node")
    pipe = BusPipeline(face_engine, make_gallery(templates, ["man"]))
    node = BusNode(pipe, ledger, drop_frames=False, clock=lambda: AT, may_charge=lambda: False)
    stats = node.run(VideoFileSource(faces_dir / RIDER_CLIP))
    assert [(d.action, d.reason) for d in stats.decisions] == [("see_driver", "gallery_sync")]
    assert ledger.db.execute("SELECT count(*) FROM fares").fetchone()[0] == 0


def test_a_slow_ledger_does_not_stop_the_frame_loop(face_engine, templates, faces_dir, tmp_path):
    ledger = SlowLedger(tmp_path / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bus-node")
    pipe = BusPipeline(face_engine, make_gallery(templates, ["man"]))
    node = BusNode(pipe, ledger, drop_frames=False, clock=lambda: AT)
    processed_at: list[float] = []
    original = pipe.process

    def timed(*args):
        out = original(*args)
        processed_at.append(time.monotonic())
        return out

    pipe.process = timed  # type: ignore[method-assign]
    frames = list(VideoFileSource(faces_dir / RIDER_CLIP))
    stats = node.run(frames)
    assert [d.rider_id for d in stats.decisions if d.action == "charge"] == ["man"]
    during = [t for t in processed_at if ledger.charging < t < ledger.charging + SlowLedger.delay]
    assert len(during) >= 5, "frames must keep flowing while the ledger writes"


def test_live_camera_drops_the_oldest_frames_not_the_newest():
    gate = threading.Event()

    class Blocked:
        """A pipeline stand-in that is stuck until the camera has produced every frame."""

        ledger = None
        cfg = None
        feedback = None
        seen: list[int] = []

        def process(self, image, ts, index):
            gate.wait(5)
            self.seen.append(index)
            return []

    frames = [Frame(i, i / 30, np.zeros((4, 4, 3), np.uint8)) for i in range(50)]

    def camera():
        yield from frames
        gate.set()

    pipe = Blocked()
    stats = BusNode(pipe, None, queue_size=2, drop_frames=True).run(camera())  # type: ignore[arg-type]
    assert stats.dropped_frames >= 45
    assert pipe.seen[-1] == 49  # the freshest frame is always processed


def test_only_the_node_charges() -> None:
    """One charging path: no code outside the node's ledger thread calls ``Ledger.charge``."""
    root = Path(__file__).resolve().parents[2]
    callers = []
    for package in ("edge", "cloud_sync", "enrollment", "facefare", "hardware"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "charge":
                    callers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert callers and all(c.startswith("edge/door/node.py:") for c in callers), callers
