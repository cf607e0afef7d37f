"""The bus process, ``facefare bus run``: everything one bus runs, wired from one config.

::

    camera (hardware.cameras) -> BusNode (edge.door.node: pipeline thread, ledger thread) -> door feedback
                                     |                                                (hardware.door)
                                     +-> Ledger (edge.fares.ledger) -> outbox -> BusSync (cloud_sync.bus_sync)
                                                                          <- acks, gallery deltas (MQTT)
    BusGallery (cloud_sync.gallery.bus): the encrypted templates the pipeline matches against;
    deltas from the cloud replace it atomically.

Fares flow one way, camera to cloud; gallery changes flow back. Charging never waits for the
network: BusSync reads the outbox through its own ledger connection on its own thread. After a
(re)connection no one is charged until the gallery holds the cloud's newest delta (erasures made
while the bus was away come first) or ``enrollment.sync_timeout_s`` passes. systemd's watchdog is
pinged while frames are being processed (hardware.watchdog).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from facefare import wiring
from facefare.config import FacefareConfig

log = logging.getLogger(__name__)

#: When a video file ends, how long the bus waits for the cloud to acknowledge its outbox.
DRAIN_S = 30.0
#: No processed frame for this long and the watchdog stops being pinged (systemd restarts the bus).
STALL_S = 30.0


def disk_status(path: Path, min_free_bytes: int) -> dict[str, Any]:
    """The heartbeat's disk fields for the file system holding ``path``."""
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return {"disk": {"ok": False, "detail": f"cannot read disk usage: {exc}"[:200]}}
    ok = free >= min_free_bytes
    detail = "" if ok else f"{free // 2**20} MiB free, charges stop below {min_free_bytes // 2**20} MiB"
    return {"disk": {"ok": ok, "detail": detail}, "disk_free_bytes": free}


def run_bus(cfg: FacefareConfig, *, source: Any = None, stop: threading.Event | None = None) -> Any:
    """Run the bus until the camera ends, ``stop`` is set, or SIGTERM/SIGINT; returns the node's stats."""
    from edge.door.messages import to_door
    from edge.door.node import BusNode
    from edge.door.pipeline import BusPipeline
    from hardware.cameras import NirPairSource, camera_status, open_source
    from hardware.door import open_door
    from hardware.watchdog import Watchdog

    stop = stop or threading.Event()
    engine = wiring.face_engine(cfg)
    manifest = engine.verify_all()
    gallery = wiring.bus_gallery(cfg, engine.embedder_sha256)
    ledger = wiring.bus_ledger(cfg, charging=True)  # the ledger thread's (clock and integrity checked)
    sync_ledger = wiring.bus_ledger(cfg)  # the sync thread's own connection (WAL: they never block charges)
    if source is None:
        source = open_source(cfg.camera)
        if cfg.camera_nir is not None:  # the NIR picture rides on each colour frame (frame.nir)
            source = NirPairSource(source, open_source(cfg.camera_nir))
    if cfg.liveness.nir and cfg.camera_nir is None:
        log.warning("[liveness] nir is on but no [camera_nir]: no frame has a NIR picture, nobody can pay")
    door = open_door(cfg.feedback)
    show = to_door(door)
    data_dir = Path(cfg.data_dir)

    sync_health = SyncSupervisor(cfg.ledger.bus_id)

    def status() -> dict[str, Any]:
        return {
            "gallery_version": gallery.version,
            "pending_erasures": gallery.pending_erasures,
            "route_id": cfg.pipeline.route_id,
            **camera_status(source),
            **disk_status(data_dir, cfg.ledger.min_free_bytes),
            **sync_health.status(),  # issue 19: sync thread restarts
            "clock": {"ok": ledger.clock_fault is None, "detail": ledger.clock_fault or ""},  # issue 19: clock steps
            **({"disk": {"ok": False, "detail": f"ledger corrupt, no charges: {ledger.corrupt}"[:200]}}
               if ledger.corrupt else {}),  # issue 19: a ledger that failed its integrity check
        }

    sync = wiring.bus_sync(cfg, sync_ledger, status_fields=status, configure=gallery.attach)
    pipeline = BusPipeline(engine, gallery, cfg.pipeline, quality=cfg.quality, smile=cfg.smile,
                           second_factor=wiring.second_factor(cfg, gallery), liveness=cfg.liveness)  # fmt: skip
    last_frame = [time.monotonic()]
    door_timing = DoorTiming()
    metrics, metrics_server, metrics_ledger = None, None, None
    if cfg.metrics.bus_port:
        from facefare.metrics import BusMetrics, serve

        metrics = BusMetrics()
        metrics.set_models(manifest)
        metrics_ledger = wiring.bus_ledger(cfg, readonly=True)  # the scrape's own connection
        metrics.watch(backlog=_backlog_reader(metrics_ledger), gallery=gallery, sync=sync, data_dir=data_dir,
                      bus_id=cfg.ledger.bus_id, route_id=cfg.pipeline.route_id, status=status)  # fmt: skip
        metrics_server = serve(metrics.registry, cfg.metrics.host, cfg.metrics.bus_port, f"bus {cfg.ledger.bus_id}")

    def frame_done(frame: Any, decisions: list) -> None:
        last_frame[0] = time.monotonic()
        door_timing.frame(pipeline, frame, decisions)
        if metrics is not None:
            ms = node.stats.frame_ms[-1] if node.stats.frame_ms else 0.0
            metrics.frame(ms / 1000, dict(getattr(pipeline, "stage_ms", None) or {}))
            for wait_s in door_timing.take_smile_passes():
                metrics.smile_pass_seconds.observe(wait_s)

    def feedback(fb: Any) -> None:
        show(fb)
        if fb.decision is not None:
            wait_s, attempts = door_timing.take(fb.decision.track_id)
            if metrics is not None:
                metrics.decision(fb.decision.action, str(fb.decision.reason), wait_s, attempts)
            sync.report_decision(decision_event(fb.decision, wait_s=wait_s, smile_attempts=attempts))

    node = BusNode(pipeline, ledger, feedback=feedback, drop_frames=cfg.camera.type != "file",
                   on_frame=frame_done, may_charge=lambda: gallery.ready)  # fmt: skip
    # The watchdog is pinged only while frames flow and the sync thread is making rounds.
    watchdog = Watchdog(healthy=lambda: time.monotonic() - last_frame[0] < STALL_S and sync_health.alive(sync))
    sync_thread = threading.Thread(target=sync_health.run, args=(sync, stop), name="sync", daemon=True)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("bus %s: signal %d, stopping", cfg.ledger.bus_id, signum)
        stop.set()  # the stopper thread below stops the node

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    sync_thread.start()
    # Start charging with the newest gallery when the cloud can be reached soon, else offline at once.
    wait_s = cfg.enrollment.sync_timeout_s
    if sync.connected.wait(wait_s) and not gallery.wait_ready(wait_s):
        log.warning("bus %s: gallery not in sync after %.0f s; charging with version %d", cfg.ledger.bus_id,
                    wait_s, gallery.version)  # fmt: skip
    watchdog.start(f"bus {cfg.ledger.bus_id}: gallery v{gallery.version}")
    log.info("bus %s: running (camera %s, gallery v%d with %d riders)", cfg.ledger.bus_id, cfg.camera.type,
             gallery.version, len(gallery.riders))  # fmt: skip
    stopper = threading.Thread(target=lambda: (stop.wait(), node.stop()), name="stopper", daemon=True)
    stopper.start()
    try:
        stats = node.run(source)
        if not stop.is_set():  # the source ended (a video file): hand the outbox over before leaving
            _drain(cfg, stop, DRAIN_S)
    finally:
        watchdog.stop()
        stop.set()
        sync_thread.join(timeout=10)
        door.close()
        if metrics_server is not None:
            metrics_server.close()
        if metrics_ledger is not None:
            metrics_ledger.close()
        ledger.close()
        sync_ledger.close()
        gallery.close()
    log.info("bus %s: stopped after %d frames, %d decisions", cfg.ledger.bus_id, stats.frames, len(stats.decisions))
    return stats


class SyncSupervisor:
    """Runs the sync thread and starts it again if it ever dies; its health for the heartbeat and the watchdog.

    ``BusSync.run`` already survives failing rounds (logged, backed off, retried); this catches
    what escapes it (a broken start, a bug), so the outbox never silently stops draining.
    """

    def __init__(self, bus_id: str, backoff_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        self.bus_id = bus_id
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.restarts = 0

    def run(self, sync: Any, stop: threading.Event) -> None:
        delay = self.backoff_s
        while not stop.is_set():
            try:
                sync.run(stop)
                return
            except Exception:
                self.restarts += 1
                log.exception("bus %s: the sync thread died; restarting it in %.0f s", self.bus_id, delay)
                if stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_backoff_s)

    def alive(self, sync: Any) -> bool:
        """The sync made a round recently (rounds come every 0.1 s, or every backoff when failing)."""
        return time.monotonic() - sync.last_round_at < STALL_S + self.max_backoff_s

    def status(self) -> dict[str, Any]:
        return {"sync_restarts": self.restarts}


def _drain(cfg: FacefareConfig, stop: threading.Event, timeout_s: float) -> int:
    """Wait until the outbox is empty (the cloud acknowledged every fare) or ``timeout_s``; rows left."""

    end = time.monotonic() + timeout_s
    with wiring.bus_ledger(cfg, readonly=True) as reader:
        while True:
            left = len(reader.outbox())
            if left == 0 or time.monotonic() > end or stop.is_set():
                break
            time.sleep(0.2)
    if left:
        log.warning("bus %s: %d fares still in the outbox; they go out at the next start", cfg.ledger.bus_id, left)
    return left


def decision_event(d: Any, *, wait_s: float | None = None, smile_attempts: int | None = None) -> Any:
    """The fleet's view of a door decision (``edge.door.pipeline.DoorDecision``): who, what, why; never an image.

    ``wait_s`` (face found to decision) and ``smile_attempts`` feed the dashboard's door KPIs."""
    from cloud_sync.protocol import DecisionEvent

    fare = d.fare
    extra: dict[str, int] = {}
    if wait_s is not None:
        extra["wait_ms"] = max(0, min(int(wait_s * 1000), 3_600_000))
    if smile_attempts is not None:
        extra["smile_attempts"] = max(0, min(int(smile_attempts), 1000))
    return DecisionEvent(
        at_ms=time.time_ns() // 1_000_000,
        action=d.action,
        reason=str(d.reason)[:200],
        rider_id=d.rider_id,
        fare_id=fare.fare_id if fare is not None else None,
        amount_minor=fare.amount_minor if fare is not None else 0,
        currency=fare.currency if fare is not None else None,
        **extra,
    )


def _backlog_reader(reader: Any) -> Any:
    """``() -> (outbox rows, oldest queue time in ms or None)`` on a read-only ledger, for scrapes."""
    from datetime import datetime

    lock = threading.Lock()

    def backlog() -> tuple[int, int | None]:
        with lock:
            count = reader.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            first = reader.outbox(limit=1)
        oldest = int(datetime.fromisoformat(first[0]["queued_at"]).timestamp() * 1000) if first else None
        return int(count), oldest

    return backlog


class DoorTiming:
    """How long riders wait at the door, from the pipeline's tracks, read after each frame.

    A track's ``first_ts`` (camera time, when its face was first found) to the frame of its
    decision is the rider's wait; the smile gate's attempts on that track come with it. Read
    through ``getattr`` so that a pipeline without ``tracker`` or ``states`` only loses these figures.
    Called on the pipeline thread (``frame``) and from the feedback of either node thread (``take``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}
        self._armed: set[int] = set()
        self._passes: list[float] = []
        self._decided: dict[int, tuple[float | None, int | None]] = {}

    def frame(self, pipeline: Any, frame: Any, decisions: list) -> None:
        tracks = getattr(getattr(pipeline, "tracker", None), "tracks", None) or {}
        states = getattr(pipeline, "states", None) or {}
        with self._lock:
            for tid, track in tracks.items():
                self._first.setdefault(tid, float(getattr(track, "first_ts", frame.ts)))
            for tid, st in states.items():
                if getattr(st, "armed", False) and tid not in self._armed and tid in self._first:
                    self._armed.add(tid)
                    self._passes.append(float(frame.ts) - self._first[tid])
            for d in decisions:
                first = self._first.get(d.track_id)
                smile = getattr(states.get(d.track_id), "smile", None)
                attempts = getattr(smile, "attempts", None)
                self._decided[d.track_id] = (None if first is None else float(d.ts) - first, attempts)
            for tid in [t for t in self._first if t not in tracks and t not in self._decided]:
                del self._first[tid]  # the track ended
            self._armed &= set(tracks)
            while len(self._decided) > 1000:  # decisions whose feedback never came
                del self._decided[next(iter(self._decided))]

    def take_smile_passes(self) -> list[float]:
        with self._lock:
            out, self._passes = self._passes, []
        return out

    def take(self, track_id: int | None) -> tuple[float | None, int | None]:
        with self._lock:
            if track_id is None:
                return None, None
            self._first.pop(track_id, None)
            return self._decided.pop(track_id, (None, None))
