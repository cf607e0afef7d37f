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
    engine.verify_all()
    gallery = wiring.bus_gallery(cfg, engine.embedder_sha256)
    ledger = wiring.bus_ledger(cfg)  # the ledger thread's connection
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

    def status() -> dict[str, Any]:
        return {
            "gallery_version": gallery.version,
            "pending_erasures": gallery.pending_erasures,
            "route_id": cfg.pipeline.route_id,
            **camera_status(source),
            **disk_status(data_dir, cfg.ledger.min_free_bytes),
        }

    sync = wiring.bus_sync(cfg, sync_ledger, status_fields=status, configure=gallery.attach)
    pipeline = BusPipeline(
        engine, gallery, cfg.pipeline, quality=cfg.quality, smile=cfg.smile, liveness=cfg.liveness
    )
    last_frame = [time.monotonic()]

    def frame_done(frame: Any, decisions: list) -> None:
        last_frame[0] = time.monotonic()

    def feedback(fb: Any) -> None:
        show(fb)
        if fb.decision is not None:
            sync.report_decision(decision_event(fb.decision))

    node = BusNode(pipeline, ledger, feedback=feedback, drop_frames=cfg.camera.type != "file",
                   on_frame=frame_done, may_charge=lambda: gallery.ready)  # fmt: skip
    watchdog = Watchdog(healthy=lambda: time.monotonic() - last_frame[0] < STALL_S)
    sync_thread = threading.Thread(target=sync.run, args=(stop,), name="sync", daemon=True)

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
        ledger.close()
        sync_ledger.close()
        gallery.close()
    log.info("bus %s: stopped after %d frames, %d decisions", cfg.ledger.bus_id, stats.frames, len(stats.decisions))
    return stats


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


def decision_event(d: Any) -> Any:
    """The fleet's view of a door decision (``edge.door.pipeline.DoorDecision``): who, what, why; never an image."""
    from cloud_sync.protocol import DecisionEvent

    fare = d.fare
    return DecisionEvent(
        at_ms=time.time_ns() // 1_000_000,
        action=d.action,
        reason=str(d.reason)[:200],
        rider_id=d.rider_id,
        fare_id=fare.fare_id if fare is not None else None,
        amount_minor=fare.amount_minor if fare is not None else 0,
        currency=fare.currency if fare is not None else None,
    )
