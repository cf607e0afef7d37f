"""facefare.metrics: the bus's metrics are local by default, can be turned off, and name no rider."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from facefare.config import load_config
from facefare.metrics import BusMetrics, serve


def test_the_bus_serves_metrics_on_loopback_by_default_and_port_0_turns_them_off() -> None:
    cfg = load_config(None)
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.bus_port == 9464
    assert load_config(None, metrics={"bus_port": 0}).metrics.bus_port == 0
    assert serve(BusMetrics().registry, "127.0.0.1", 0, "bus") is None  # off: nothing listens


def test_exposition_counts_decisions_by_action_and_reason_only() -> None:
    metrics = BusMetrics()
    metrics.frame(0.05, {"detect": 12.5, "embed": 30.0})
    metrics.decision("charge", "matched", 2.5, 1)
    metrics.decision("refuse", "unknown", None, None)
    metrics.set_models({"artifacts": {"face_embedder.onnx": {"sha256": "ab" * 32}}})
    server = serve(metrics.registry, "127.0.0.1", _free_port(), "bus")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip
    assert samples[("facefare_bus_decisions_total", (("action", "charge"), ("reason", "matched")))] == 1
    assert samples[("facefare_bus_decisions_total", (("action", "refuse"), ("reason", "unknown")))] == 1
    assert samples[("facefare_bus_decision_seconds_count", (("action", "charge"),))] == 1
    assert samples[("facefare_bus_stage_milliseconds", (("stage", "embed"),))] == 30.0
    assert samples[("facefare_bus_smile_attempts_total", (("action", "charge"),))] == 1
    assert samples[("facefare_bus_models_info", (("face_embedder_onnx", "ab" * 32),))] == 1
    labels = {k for (_name, items) in samples for k, _v in items}
    assert not labels & {"rider", "rider_id", "fare_id"}, labels


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
