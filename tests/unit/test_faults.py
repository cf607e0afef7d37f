"""Issue 19: faults that broke FaceFare, without a broker (real SQLite; PostgreSQL where it matters).

* defect 1: the protocol refuses every fare the cloud ledger could not store (real dates,
  ``boarded_ms`` on its service day, int64, no NUL), checked as a property against SQLite; a fare
  that still cannot be stored is refused alone, and the rest of the batch goes on;
* defect 3 (part): gallery versions are bounded to int64;
* defect 8: the bus's config refuses a route or bus id the protocol would refuse;
* also: fares the cloud refused for good are kept apart from acknowledged ones in the bus ledger.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_sync import protocol
from cloud_sync.cloud.ledger import FaresMessage, open_ledger
from cloud_sync.cloud.service import CloudService, _Item
from cloud_sync.mqtt import MqttConfig
from cloud_sync.protocol import Envelope, Fare, Fares, GalleryAck, GalleryDelta, ProtocolError, topic_for
from edge.fares.ledger import Ledger
from edge.fares.record import epoch_ms
from edge.fares.rules import FaresConfig
from facefare.config import ConfigError, load_config

KEY = protocol.generate_key()
AT = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def fare_dict(**changes: Any) -> dict[str, Any]:
    data = dict(fare_id=str(uuid.uuid4()), bus_id="bus-1", trip_id="t", route_id="12", rider_id="r1",
                concession="adult", boarded_at=AT.isoformat(), boarded_ms=epoch_ms(AT), service_day="2025-03-03",
                amount_minor=250, base_minor=250, currency="EUR", reason="paid", rules_digest="x",
                recorded_at=AT.isoformat())  # fmt: skip
    data.update(changes)
    return data


def signed(body: dict[str, Any]) -> bytes:
    """A correctly signed fares message around ``body`` (built without validating it, as an attacker would)."""
    raw = {"v": 1, "type": "fares", "sender": "bus-1", "msg_id": uuid.uuid4().hex, "sent_ms": protocol.now_ms(),
           "body": {"fares": [body]}}  # fmt: skip
    raw["sig"] = base64.b64encode(KEY.sign(protocol.canonical_json(raw))).decode()
    return protocol.canonical_json(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"service_day": "2025-13-45"},  # the wedge: not a date
        {"service_day": "2025-02-30"},
        {"boarded_ms": 2**63},  # the wedge: beyond int64
        {"boarded_ms": 2**63 - 1},  # int64, but no date of it exists
        {"boarded_ms": epoch_ms(AT) + 5 * 86_400_000},  # not on its service day
        {"route_id": "12\x00"},  # PostgreSQL TEXT cannot hold NUL
    ],
    ids=["month13", "feb30", "int64+1", "int64max", "other-day", "nul"],
)
def test_protocol_refuses_a_signed_fare_the_ledger_could_not_store(changes: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.parse(topic_for("fares", "bus-1"), signed(fare_dict(**changes)), {"bus-1": KEY.public_key()}.get)
    assert err.value.reason == "schema"
    # the unchanged fare passes
    protocol.parse(topic_for("fares", "bus-1"), signed(fare_dict()), {"bus-1": KEY.public_key()}.get)


def test_gallery_versions_are_bounded_to_int64() -> None:
    with pytest.raises(ValidationError):
        GalleryAck(version=2**63)
    with pytest.raises(ValidationError):
        GalleryDelta(base_version=0, version=2**63, model_sha256="0" * 64, nonce="n", ciphertext="c")
    assert GalleryAck(version=2**63 - 1).version == 2**63 - 1


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def any_ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "sqlite":
        led = open_ledger(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'cloud.db'}")
    else:
        led = open_ledger(request.getfixturevalue("postgres_server").create_database("test_fare_property"))
    yield led
    led.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    day=st.one_of(st.dates().map(date.isoformat), st.from_regex(r"\d{4}-\d{2}-\d{2}", fullmatch=True)),
    offset_ms=st.one_of(st.integers(-3 * 86_400_000, 4 * 86_400_000), st.integers(-(2**64), 2**64)),
    text=st.text(max_size=5) | st.sampled_from(["\x00", "a\x00b", "\ud800", "\U0010ffff", "é" * 200]),
    amount=st.integers(0, 10**9),
)
def test_every_fare_the_protocol_accepts_the_cloud_ledger_stores(any_ledger, day: str, offset_ms: int, text: str,
                                                                  amount: int) -> None:  # fmt: skip
    """Property (SQLite and PostgreSQL): whatever passes the fare schema, the cloud ledger stores."""
    try:
        start = epoch_ms(datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC))
    except (ValueError, OverflowError):
        start = 0
    data = fare_dict(service_day=day, boarded_ms=start + offset_ms, route_id=text, reason=text, amount_minor=amount)
    try:
        fare = Fare.model_validate(data)
    except ValidationError:
        return
    (res,) = any_ledger.ingest([FaresMessage("bus-1", uuid.uuid4().hex, 0, [fare])])
    assert res.acked == [fare.fare_id]


# -- the cloud service: one unstorable fare does not wedge the batch ----------------------------


def _item(fares: list[Any], sender: str) -> _Item:
    env = Envelope.model_construct(type="fares", sender=sender, msg_id=uuid.uuid4().hex, sent_ms=protocol.now_ms(),
                                   body=Fares.model_construct(fares=fares))  # fmt: skip
    return _Item(topic_for("fares", sender), 1, 1, False, env, None)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_fare_the_ledger_cannot_store_is_refused_alone_and_every_other_fare_goes_in(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Defect 1: the old service retried such a batch forever (and the broker redelivered it after
    every restart); now the one fare is refused as ``unstorable`` and the rest is applied."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_dsn")
    led = open_ledger(url)
    service = CloudService(led, protocol.generate_key(), MqttConfig())
    # Past the protocol (as an older bus software or a bug could produce): the database refuses it.
    bad = Fare.model_construct(**fare_dict(boarded_ms=2**63))
    good_same_msg = Fare.model_validate(fare_dict())
    other_bus = Fare.model_validate(fare_dict(bus_id="bus-2"))
    stop = threading.Event()
    timer = threading.Timer(5.0, stop.set)  # the old code never returns: give up after 5 s
    timer.start()
    try:
        service._process([_item([bad, good_same_msg], "bus-1"), _item([other_bus], "bus-2")], led, stop)
    finally:
        timer.cancel()
    try:
        assert not stop.is_set(), "the service kept retrying a batch it can never apply"
        stored = set(led.fares_of_bus("bus-1"))
        assert good_same_msg.fare_id in stored and bad.fare_id not in stored
        assert other_bus.fare_id in led.fares_of_bus("bus-2")
        assert led.rejection_counts().get("unstorable") == 1
        assert service.counts["unstorable"] == 1
        # The same message delivered again (after a crash) applies nothing twice.
        service._process([_item([good_same_msg], "bus-1")], led, stop)
        assert sorted(e["amount_minor"] for e in led.entries()) == [250, 250]
    finally:
        led.close()


# -- the bus: config held to the protocol; refused fares kept apart -----------------------------


@pytest.mark.parametrize(
    "override",
    [{"pipeline": {"route_id": "r" * 201}}, {"pipeline": {"trip_id": "t" * 201}}, {"ledger": {"bus_id": "bus 7"}},
     {"ledger": {"bus_id": "b" * 65}}],  # fmt: skip
    ids=["route", "trip", "bus-space", "bus-long"],
)
def test_config_refuses_ids_the_protocol_refuses(override: dict[str, Any]) -> None:
    section, values = next(iter(override.items()))
    key = next(iter(values))
    with pytest.raises(ConfigError, match=f"{section}"):
        load_config(None, **override)
    assert key


def test_fares_refused_by_the_cloud_are_not_recorded_as_acknowledged() -> None:
    led = Ledger(":memory:", FaresConfig(routes={"12": 250}), bus_id="bus-1")
    ok = led.charge("r1", "12", AT, trip_id="t").fare_id
    refused = led.charge("r2", "12", AT, trip_id="t").fare_id
    bad = led.charge("r3", "12", AT + timedelta(hours=1), trip_id="t").fare_id
    assert led.ack([ok], {refused: "conflict"}) == 2
    assert led.quarantine(bad, "protocol refuses route_id")
    st_ = led.stats()
    assert (st_["outbox"], st_["acks"], st_["rejected_by_cloud"], st_["quarantined"]) == (0, 1, 1, 1)
    assert [(r["fare_id"], r["source"], r["reason"]) for r in led.rejections()] == [
        (refused, "cloud", "conflict"), (bad, "bus", "protocol refuses route_id")]  # fmt: skip
    assert led.balance("r2").charged_minor == 250  # the charge itself is kept


def test_the_cloud_flags_fares_whose_times_cannot_be_right_and_keeps_them(tmp_path: Path) -> None:
    """Defect 5: the cloud kept a stepped bus's fares trusting its times; now they are flagged."""
    led = open_ledger(f"sqlite:///{tmp_path / 'cloud.db'}")
    service = CloudService(led, protocol.generate_key(), MqttConfig())
    ahead = datetime.now(UTC) + timedelta(days=1)
    late = Fare.model_validate(fare_dict(boarded_ms=epoch_ms(ahead), service_day=ahead.date().isoformat()))
    fine = Fare.model_validate(fare_dict())
    service._process([_item([late, fine], "bus-1")], led, threading.Event())
    assert {late.fare_id, fine.fare_id} <= set(led.fares_of_bus("bus-1"))
    assert led.rejection_counts().get("implausible_time") == 1 and service.counts["implausible_time"] == 1
    led.close()



def test_ledger_show_lists_fares_refused_by_the_cloud_and_quarantined(tmp_path: Path) -> None:
    """Also: 'facefare ledger show' could not tell fares the cloud refused for good from acknowledged ones."""
    from click.testing import CliRunner

    from facefare.cli import main

    path = tmp_path / "ledger.db"
    with Ledger(path, FaresConfig(routes={"12": 250}), bus_id="bus-1") as led:
        ok = led.charge("r1", "12", AT, trip_id="t").fare_id
        refused = led.charge("r2", "12", AT, trip_id="t").fare_id
        led.ack([ok], {refused: "conflict"})
    out = CliRunner().invoke(main, ["ledger", "show", "--db", str(path)])
    assert out.exit_code == 0, out.output
    assert "acknowledged 1" in out.output and "refused by the cloud 1" in out.output
    assert refused in out.output and "conflict" in out.output and ok not in out.output


def test_the_dashboard_shows_a_bus_clock_skew_and_a_failing_sync() -> None:
    """Defects 2 and 6: the skew and the sync's health reach the fleet page and its alerts."""
    from cloud_sync.dashboard.state import FleetState
    from cloud_sync.protocol import Heartbeat

    state = FleetState()
    now = protocol.now_ms()
    hb = Heartbeat(outbox_backlog=3, clock_skew_ms=7_200_000, sync={"ok": False, "detail": "OperationalError: locked"})
    state.apply(Envelope.make("heartbeat", "bus-1", hb, sent_ms=now + 7_200_000), now)
    bus = state.snapshot(now)["buses"][0]
    assert bus["clock_skew_ms"] == 7_200_000 and bus["sync"] == {"ok": False, "detail": "OperationalError: locked"}
    kinds = {a.kind for a in state.alerts(now)}
    assert {"clock", "sync"} <= kinds
    # An older bus without the fields: the dashboard measures the skew itself from a live heartbeat.
    state.apply(Envelope.make("heartbeat", "bus-2", Heartbeat(outbox_backlog=0), sent_ms=now - 90_000), now)
    assert state.snapshot(now)["buses"][1]["clock_skew_ms"] == -90_000


def test_the_supervisor_restarts_a_sync_that_cannot_even_start(tmp_path: Path) -> None:
    """Defect 2: nothing restarted the sync thread once it ended. A start that fails (here: the
    broker's CA file is missing) is retried with a doubling pause, and counted in the heartbeat."""
    from cloud_sync.bus_sync import BusSync
    from facefare.bus import SyncSupervisor

    led = Ledger(tmp_path / "ledger.db", FaresConfig(routes={"12": 250}), bus_id="bus-1")
    sync = BusSync("bus-1", led, protocol.generate_key(), protocol.generate_key().public_key(),
                   MqttConfig(tls=True, ca_file=tmp_path / "missing-ca.pem"))  # fmt: skip
    supervisor = SyncSupervisor("bus-1", backoff_s=0.05, max_backoff_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(sync, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while supervisor.restarts < 3 and time.monotonic() < deadline:
        stop.wait(0.05)
    assert supervisor.restarts >= 3 and thread.is_alive()
    assert supervisor.status() == {"sync_restarts": supervisor.restarts}
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    led.close()
