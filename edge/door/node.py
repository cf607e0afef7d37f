"""The bus node's threads: capture, the face pipeline and the ledger never wait on each other.

::

    camera thread --frames--> pipeline thread --charge requests--> ledger thread --> door feedback
    (FrameSource)  (bounded)  (BusPipeline,     (queue)            (Ledger.charge)
                              no ledger)

* The **camera thread** only decodes frames and puts them in a small bounded queue. With
  ``drop_frames`` (a live camera) a full queue drops its *oldest* frame, so the pipeline always
  works on the freshest picture and capture never blocks; without it (a video file) nothing is
  dropped and capture waits for the pipeline.
* The **pipeline thread** detects and tracks every frame and embeds only tracks that passed the
  quality and smile gates (see :mod:`edge.door.pipeline`). It decides *whom* to charge but never
  touches the ledger: a charge decision is queued for the ledger thread.
* The **ledger thread** records the fare (an fsync'd SQLite transaction) and then gives the
  rider the final word (fare and balance, or the refusal) through ``feedback``. The network
  (outbox -> MQTT) is another process's or thread's business and reads the ledger on its own.

    >>> from edge.door.node import BusNode  # doctest: +SKIP
    >>> node = BusNode(pipeline, ledger, feedback=print)  # doctest: +SKIP
    >>> node.run(VideoFileSource("clip.mp4"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from edge.door.pipeline import BusPipeline, DoorDecision, Feedback
from edge.fares.ledger import Ledger

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class NodeStats:
    """What one run of the node did; latencies in milliseconds."""

    frames: int = 0
    dropped_frames: int = 0
    decisions: list[DoorDecision] = field(default_factory=list)
    frame_ms: list[float] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)  # frame captured -> decision made
    charge_ms: list[float] = field(default_factory=list)  # decision made -> fare on disk


class BusNode:
    """Runs a :class:`BusPipeline` on a frame source with three threads; the only code that charges.

    The pipeline decides whom to charge; this class's ledger thread records the fare.
    ``on_frame(frame, decisions)`` is called on the pipeline thread after each frame.
    ``may_charge()`` is asked before each charge: while it is False (the gallery is catching up
    with erasures after a reconnection) a matched rider is sent to the driver, never charged.
    ``feedback`` receives every prompt and every final decision (from whichever thread made it;
    it must be quick and thread-safe, as door LEDs and consoles are).
    """

    def __init__(
        self,
        pipeline: BusPipeline,
        ledger: Ledger | None,
        *,
        feedback: Callable[[Feedback], None] = lambda fb: None,
        queue_size: int = 2,
        drop_frames: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_frame: Callable[[object, list[DoorDecision]], None] | None = None,
        may_charge: Callable[[], bool] = lambda: True,
    ) -> None:
        self.pipeline = pipeline
        self.ledger = ledger
        self.feedback = feedback
        self.drop_frames = drop_frames
        self.clock = clock
        self.on_frame = on_frame
        self.may_charge = may_charge
        self.frames: queue.Queue = queue.Queue(maxsize=queue_size)
        self.charges: queue.Queue = queue.Queue()
        self.stats = NodeStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        pipeline.feedback = self._from_pipeline

    # -- public ----------------------------------------------------------------------------

    def run(self, source: Iterable) -> NodeStats:
        """Process every frame of ``source`` (or until :meth:`stop`); return when all is charged."""
        camera = threading.Thread(target=self._capture, args=(source,), name="camera", daemon=True)
        charger = threading.Thread(target=self._charge_loop, name="ledger", daemon=True)
        camera.start()
        charger.start()
        try:
            self._pipeline_loop()
        finally:
            self._stop.set()
            self.charges.put(_DONE)
            charger.join()
            camera.join(timeout=5)
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    # -- threads ---------------------------------------------------------------------------

    def _capture(self, source: Iterable) -> None:
        try:
            for frame in source:
                if self._stop.is_set():
                    break
                item = (frame, time.monotonic())
                if not self.drop_frames:
                    while not self._stop.is_set():
                        try:
                            self.frames.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    continue
                while True:
                    try:
                        self.frames.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            self.frames.get_nowait()
                            with self._lock:
                                self.stats.dropped_frames += 1
                        except queue.Empty:
                            pass
        except Exception:
            log.exception("camera thread failed")
        finally:
            self._put_done()

    def _put_done(self) -> None:
        while True:
            try:
                self.frames.put(_DONE, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def _pipeline_loop(self) -> None:
        while True:
            try:
                item = self.frames.get(timeout=0.5)
            except queue.Empty:  # a silent camera: look at the stop flag now and then
                if self._stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            frame, captured = item
            started = time.monotonic()
            nir = getattr(frame, "nir", None)  # a NIR camera's picture (hardware.cameras.nir), if any
            args = (frame.image, frame.ts, frame.index) if nir is None else (frame.image, frame.ts, frame.index, nir)
            decisions = self.pipeline.process(*args)
            done = time.monotonic()
            self.stats.frames += 1
            self.stats.frame_ms.append((done - started) * 1000)
            if self.on_frame is not None:  # e.g. the demo's annotated video; runs on this thread
                self.on_frame(frame, decisions)
            for d in decisions:
                self.stats.decision_ms.append((done - captured) * 1000)
                if d.action == "charge" and self.ledger is not None:
                    self.charges.put((d, done))
                else:
                    self._record(d)
                    self.feedback(Feedback(d.track_id, d.message, d))
            if self._stop.is_set():
                return

    def _charge_loop(self) -> None:
        while True:
            item = self.charges.get()
            if item is _DONE:
                return
            d, decided = item
            assert self.ledger is not None and d.rider_id is not None
            if not self.may_charge():
                log.warning("track %d: %s not charged: the gallery is not up to date", d.track_id, d.rider_id)
                final = replace(d, action="see_driver", rider_id=None, reason="gallery_sync", fare=None,
                                message="Please see the driver")  # fmt: skip
                self._record(final)
                self.feedback(Feedback(final.track_id, final.message, final))
                continue
            cfg = self.pipeline.cfg
            fare = self.ledger.charge(d.rider_id, cfg.route_id, self.clock(), trip_id=cfg.trip_id)
            self.stats.charge_ms.append((time.monotonic() - decided) * 1000)
            final = replace(
                d,
                action="charge" if fare.may_board else "refuse",
                reason="matched" if fare.may_board else str(fare.reason.value),
                message=fare.rider_message,
                fare=fare,
            )
            self._record(final)
            self.feedback(Feedback(final.track_id, final.message, final))

    # -- helpers ---------------------------------------------------------------------------

    def _from_pipeline(self, fb: Feedback) -> None:
        if fb.decision is None:  # prompts go straight to the door; decisions are routed by the loop
            self.feedback(fb)

    def _record(self, d: DoorDecision) -> None:
        with self._lock:
            self.stats.decisions.append(d)
