"""Metrics in Prometheus's format for the long-running processes (``prometheus_client``).

Each process gets its own :class:`~prometheus_client.CollectorRegistry` (never the global one, so
a test or the demo can run several buses in one Python process). What can be counted as it
happens (frames, decisions, latencies) is a counter or histogram updated from the bus's
callbacks; what is a state (outbox backlog, gallery, disk, sync) is read when Prometheus scrapes,
by a collector that asks the live objects. docs/operations.md explains every metric.

No metric names a rider: labels are bounded sets (actions, reasons, stages, refusal reasons,
bus ids), never a rider id, fare id or face.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

#: Seconds from a face found at the door to the door's decision (a rider's wait).
DECISION_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
#: Seconds the pipeline spends on one frame.
FRAME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class MetricsConfig(BaseModel):
    """The ``[metrics]`` section: where each process serves its metrics in Prometheus's format."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = Field(
        "127.0.0.1", description="Address the metrics endpoints listen on (loopback: only this machine may scrape)"
    )
    bus_port: int = Field(9464, ge=0, le=65535, description="'bus run' serves /metrics on this port (0: off)")
    cloud_port: int = Field(9465, ge=0, le=65535, description="'cloud run' serves /metrics on this port (0: off)")


class MetricsServer:
    """``/metrics`` of one registry on ``host:port`` (a daemon thread); :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> MetricsServer | None:
    """Start serving ``registry``; a port that cannot be bound is logged, never fatal (the bus keeps charging)."""
    if port == 0:
        return None
    try:
        server = MetricsServer(registry, host, port)
    except OSError as exc:
        log.error("%s: cannot serve metrics on %s:%d: %s", what, host, port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", what, host, server.port)
    return server


class _Callback(Collector):
    """A collector that calls ``fn()`` at scrape time for its metric families."""

    def __init__(self, fn: Callable[[], Iterable[Any]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Any]:
        try:
            yield from self.fn()
        except Exception:  # a scrape must never take the process down
            log.exception("metrics collection failed")


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=math.nan if value is None else float(value))


# -- the bus -----------------------------------------------------------------------------------


class BusMetrics:
    """The bus's metrics; fed by ``facefare.bus`` from the node's callbacks, read by a scrape."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.frames = Counter("facefare_bus_frames", "Frames the door pipeline processed", registry=r)
        self.frame_seconds = Histogram("facefare_bus_frame_seconds", "Pipeline time per frame", buckets=FRAME_BUCKETS,
                                       registry=r)  # fmt: skip
        self.stage_ms = Gauge("facefare_bus_stage_milliseconds", "Milliseconds per pipeline stage on the last frame",
                              ["stage"], registry=r)  # fmt: skip
        self.decisions = Counter("facefare_bus_decisions", "Final door decisions by action and reason",
                                 ["action", "reason"], registry=r)  # fmt: skip
        self.decision_seconds = Histogram(
            "facefare_bus_decision_seconds", "Seconds from a face found at the door to the door's decision",
            ["action"], buckets=DECISION_BUCKETS, registry=r)  # fmt: skip
        self.smile_pass_seconds = Histogram(
            "facefare_bus_smile_gate_pass_seconds", "Seconds from a face found at the door to the smile gate passing",
            buckets=DECISION_BUCKETS, registry=r)  # fmt: skip
        self.smile_attempts = Counter("facefare_bus_smile_attempts", "Smiles counted by the smile gate on decided "
                                      "tracks, by the decision's action", ["action"], registry=r)  # fmt: skip
        self.models = Info("facefare_bus_models", "SHA-256 of each model artefact the bus verified", registry=r)
        self.up_since = Gauge("facefare_bus_start_time_seconds", "When this bus process started (epoch seconds)",
                              registry=r)  # fmt: skip
        self.up_since.set(time.time())
        self.last_frame = Gauge("facefare_bus_last_frame_timestamp_seconds",
                                "When the pipeline last finished a frame (epoch seconds)", registry=r)  # fmt: skip
        self._times: deque[float] = deque(maxlen=300)
        self._lock = threading.Lock()

    # -- fed by the bus --------------------------------------------------------------------

    def frame(self, seconds: float, stage_ms: dict[str, float]) -> None:
        self.frames.inc()
        self.frame_seconds.observe(seconds)
        self.last_frame.set(time.time())
        for stage, ms in stage_ms.items():
            self.stage_ms.labels(str(stage)[:40]).set(ms)
        with self._lock:
            self._times.append(time.monotonic())

    def decision(self, action: str, reason: str, wait_s: float | None, smile_attempts: int | None) -> None:
        self.decisions.labels(action, reason[:40]).inc()
        if wait_s is not None:
            self.decision_seconds.labels(action).observe(max(0.0, wait_s))
        if smile_attempts:
            self.smile_attempts.labels(action).inc(smile_attempts)

    def fps(self, window_s: float = 10.0) -> float:
        """Frames per second over the last ``window_s`` (0 when no frame came)."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._times if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(1e-6, recent[-1] - recent[0])

    def set_models(self, manifest: dict[str, Any]) -> None:
        arts = manifest.get("artifacts", {}) if isinstance(manifest, dict) else {}
        self.models.info({_label(n): str(a.get("sha256", ""))[:64] for n, a in arts.items() if isinstance(a, dict)})

    def watch(
        self,
        *,
        backlog: Callable[[], tuple[int, int | None]],
        gallery: Any,
        sync: Any,
        data_dir: Path,
        bus_id: str,
        route_id: str,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Read the bus's state at scrape time: outbox, gallery, sync, clock, disk, and the heartbeat's
        ``status()`` fields (camera health, and the sync restarts issue 19 adds) where present."""

        def collect() -> Iterable[Any]:
            yield _gauge("facefare_bus_fps", "Frames per second over the last 10 s", self.fps())
            info = GaugeMetricFamily("facefare_bus_info", "This bus (value 1)", labels=["bus_id", "route_id"])
            info.add_metric([bus_id, route_id], 1)
            yield info
            count, oldest_ms = backlog()
            yield _gauge("facefare_bus_outbox_backlog", "Fares in the outbox not yet acknowledged by the cloud", count)
            age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
            yield _gauge("facefare_bus_outbox_oldest_unsent_age_seconds",
                         "Age of the oldest fare waiting in the outbox (0: empty)", age)  # fmt: skip
            yield _gauge("facefare_bus_gallery_version", "Gallery version the bus holds", gallery.version)
            yield _gauge("facefare_bus_gallery_riders", "Riders in the bus's gallery", len(gallery.riders))
            yield _gauge("facefare_bus_gallery_pending_erasures", "Erasures received but not yet applied",
                         gallery.pending_erasures)  # fmt: skip
            yield _gauge("facefare_bus_gallery_ready", "1 when the gallery holds the cloud's newest delta",
                         1 if gallery.ready else 0)  # fmt: skip
            yield _gauge("facefare_bus_sync_connected", "1 while the sync thread is connected to the broker",
                         1 if sync.connected.is_set() else 0)  # fmt: skip
            if hasattr(sync, "last_error"):  # the sync thread's own health (issue 19)
                yield _gauge("facefare_bus_sync_healthy", "1 while the sync thread's rounds succeed",
                             1 if getattr(sync, "last_error", None) is None else 0)  # fmt: skip
            yield from _sync_stats(sync)
            skew = _clock_skew_s(sync)
            yield _gauge("facefare_bus_clock_skew_seconds",
                         "Bus clock minus the cloud's, from the cloud's signed messages (NaN: not yet known)",
                         skew)  # fmt: skip
            try:
                free = shutil.disk_usage(data_dir).free
            except OSError:
                free = None
            yield _gauge("facefare_bus_disk_free_bytes", "Free bytes on the file system of the data directory", free)
            fields = status() if status is not None else {}
            for field, metric, doc in (
                ("camera", "facefare_bus_camera_ok", "1 while the camera delivers frames"),
                ("disk", "facefare_bus_disk_ok", "1 while the disk has room for charges"),
                ("clock", "facefare_bus_clock_ok", "1 unless the bus's clock stepped since it started (issue 19)"),
            ):
                health = fields.get(field)
                if isinstance(health, dict) and "ok" in health:
                    yield _gauge(metric, doc, 1 if health["ok"] else 0)
            if isinstance(fields.get("sync_restarts"), int):
                fam = CounterMetricFamily("facefare_bus_sync_restarts", "Times the sync thread was restarted")
                fam.add_metric([], fields["sync_restarts"])
                yield fam

        self.registry.register(_Callback(collect))


def _label(name: str) -> str:
    """An artefact file name as a Prometheus label name."""
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out if not out[:1].isdigit() else "_" + out


def _sync_stats(sync: Any) -> Iterable[Any]:
    stats = getattr(sync, "stats", None)
    if stats is None:
        return
    for name, field, doc in (
        ("fares_published", "published_fares", "Fares published to the cloud (resends included)"),
        ("fares_acked", "acked_fares", "Fares the cloud acknowledged"),
        ("messages_refused", "refused_messages", "Cloud messages the bus refused"),
        ("connects", "connects", "Connections to the broker"),
        ("fares_quarantined", "quarantined_fares", "Outbox rows the protocol refuses, set aside (issue 19)"),
    ):
        value = getattr(stats, field, None)
        if isinstance(value, int):
            fam = CounterMetricFamily(f"facefare_bus_sync_{name}", doc)
            fam.add_metric([], value)
            yield fam
    rejected = getattr(stats, "rejected_by_cloud", None)
    if isinstance(rejected, list):
        fam = CounterMetricFamily("facefare_bus_sync_fares_rejected_by_cloud", "Fares the cloud refused for good")
        fam.add_metric([], len(rejected))
        yield fam


def _clock_skew_s(sync: Any) -> float | None:
    """The sync thread's clock skew estimate, in seconds, if it keeps one (issue 19 adds it)."""
    for name, scale in (("clock_skew_ms", 1000.0), ("clock_skew_s", 1.0)):
        value = getattr(sync, name, None)
        if value is None:
            value = getattr(getattr(sync, "stats", None), name, None)
        if isinstance(value, int | float):
            return value / scale
    return None


# -- the cloud ledger service ----------------------------------------------------------------------


def cloud_registry(service: Any) -> tuple[CollectorRegistry, Callable[[Any], None]]:
    """The cloud ledger service's metrics; returns the registry and a handler that records a bus as seen."""
    registry = CollectorRegistry()
    last_seen: dict[str, float] = {}
    lock = threading.Lock()

    def seen(env: Any) -> None:
        at = min(time.time(), env.sent_ms / 1000)  # a retained status was sent long ago
        with lock:
            last_seen[str(env.sender)] = max(last_seen.get(str(env.sender), 0.0), at)

    def collect() -> Iterable[Any]:
        with service._stats_lock:
            applied, batches, db_s = service.applied_fares, service.batches, service.db_seconds
            counts = dict(service.counts)
        fam = CounterMetricFamily("facefare_cloud_fares_ingested", "New fares committed to the cloud ledger")
        fam.add_metric([], applied)
        yield fam
        fam = CounterMetricFamily("facefare_cloud_messages_refused", "Messages refused, by reason", labels=["reason"])
        for reason, n in sorted(counts.items()):
            fam.add_metric([reason], n)
        yield fam
        yield SummaryMetricFamily("facefare_cloud_batch_commit_seconds",
                                  "Database time of the fares batches (one transaction each)",
                                  count_value=batches, sum_value=db_s)  # fmt: skip
        settled = getattr(service, "last_settled_at", None)
        yield _gauge("facefare_cloud_settlement_lag_seconds", "Seconds since settlement last completed (NaN: never)",
                     None if settled is None else max(0.0, time.time() - settled))  # fmt: skip
        yield _gauge("facefare_cloud_connected", "1 while the service is connected to the broker",
                     1 if service.connected.is_set() else 0)  # fmt: skip
        doc = "When a verified message of the bus last arrived (epoch seconds)"
        fam = GaugeMetricFamily("facefare_cloud_bus_last_seen_timestamp_seconds", doc, labels=["bus"])
        with lock:
            for bus, at in sorted(last_seen.items()):
                fam.add_metric([bus], at)
        yield fam

    registry.register(_Callback(collect))
    return registry, seen


# -- enrollment ----------------------------------------------------------------------------------


def watch_enrollment(registry: CollectorRegistry, store: Any) -> None:
    """Enrollment figures read from the template store at scrape time (its audit log and erasure targets)."""

    def collect() -> Iterable[Any]:
        with store.lock:
            actions = dict(store.db.execute(
                "SELECT action, COUNT(*) FROM audit WHERE action IN ('enroll', 'duplicate_flagged', 'erase') "
                "GROUP BY action").fetchall())  # fmt: skip
            try:
                pending = store.db.execute(
                    "SELECT bus_id, COUNT(*) FROM erasure_targets WHERE confirmed_at IS NULL GROUP BY bus_id"
                ).fetchall()
            except Exception:  # no distribution tables yet: no bus registered
                pending = []
        for name, action, doc in (
            ("facefare_enrollment_enrollments", "enroll", "Riders enrolled (audit log)"),
            ("facefare_enrollment_duplicates_flagged", "duplicate_flagged", "Enrollments flagged as duplicates"),
            ("facefare_enrollment_erasures", "erase", "Riders erased in the cloud"),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], int(actions.get(action, 0)))
            yield fam
        fam = GaugeMetricFamily("facefare_enrollment_erasures_pending", "Erasures a bus has not confirmed yet",
                                labels=["bus"])  # fmt: skip
        for bus, n in pending:
            fam.add_metric([str(bus)], int(n))
        yield fam

    registry.register(_Callback(collect))


def enrollment_registry(store: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    watch_enrollment(registry, store)
    return registry


def mount_enrollment_metrics(app: Any, store: Any) -> None:
    """Serve the store's enrollment metrics at ``/metrics`` of the enrollment API (a FastAPI app)."""
    from prometheus_client import make_asgi_app

    app.mount("/metrics", make_asgi_app(registry=enrollment_registry(store)))
