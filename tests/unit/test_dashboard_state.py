"""The dashboard's fleet model and feed validation, without MQTT: heartbeats, wills, money, alerts, refusals."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.dashboard.feed import FleetFeed, load_bus_keys
from cloud_sync.dashboard.state import FleetState
from cloud_sync.protocol import (
    DecisionEvent,
    Envelope,
    Fare,
    Fares,
    Heartbeat,
    Offline,
    encode,
    generate_key,
    public_key_text,
    topic_for,
)

NOON = int(datetime(2025, 3, 3, 12, 0, tzinfo=UTC).timestamp() * 1000)  # service day 2025-03-03 in Dublin
DAY = "2025-03-03"
KEYS = {b: generate_key() for b in ("bus-1", "bus-2", "bus-3")}
CFG = DashboardConfig(offline_after_s=60, backlog_alert_min=50, backlog_rising_beats=3, recent_decisions=5)


def fare(bus: str = "bus-1", route: str = "12", amount: int = 250, at_ms: int = NOON, day: str = DAY) -> Fare:
    return Fare(
        fare_id=str(uuid.uuid4()), bus_id=bus, trip_id="t1", route_id=route, rider_id="rider-1", concession="adult",
        boarded_at="2025-03-03T12:00:00.000+00:00", boarded_ms=at_ms, service_day=day, amount_minor=amount,
        base_minor=amount, currency="EUR", reason="paid", rules_digest="d", recorded_at="2025-03-03T12:00:00.000+00:00",
    )  # fmt: skip


def env(msg_type: str, bus: str, body, sent_ms: int = NOON) -> Envelope:
    return Envelope.make(msg_type, bus, body, sent_ms=sent_ms)


def payload(msg_type: str, bus: str, body, sent_ms: int = NOON, key=None) -> tuple[str, bytes]:
    return topic_for(msg_type, bus), encode(env(msg_type, bus, body, sent_ms), key or KEYS[bus])


@pytest.fixture
def state() -> FleetState:
    return FleetState(CFG)


@pytest.fixture
def feed(state: FleetState) -> FleetFeed:
    public = {b: k.public_key() for b, k in KEYS.items()}
    clock = {"now": NOON}
    f = FleetFeed(state, public.get, clock=lambda: clock["now"])
    f.clock_box = clock  # type: ignore[attr-defined]
    return f


def test_heartbeats_show_each_bus_with_its_health(state: FleetState) -> None:
    for i, bus in enumerate(KEYS):
        hb = Heartbeat(outbox_backlog=i, gallery_version=7, route_id="12", disk_free_bytes=10**9)
        state.apply(env("heartbeat", bus, hb), NOON)
    state.apply(env("heartbeat", "bus-2", Heartbeat(outbox_backlog=4, camera={"ok": False, "detail": "no frames"})),
                NOON + 1000)  # fmt: skip
    snap = state.snapshot(NOON + 2000)
    assert [b["bus_id"] for b in snap["buses"]] == ["bus-1", "bus-2", "bus-3"]
    assert [b["state"] for b in snap["buses"]] == ["online"] * 3 and snap["online"] == 3
    assert snap["buses"][0]["gallery_version"] == 7 and snap["buses"][0]["route_id"] == "12"
    assert snap["buses"][1]["outbox_backlog"] == 4
    assert snap["buses"][1]["camera"] == {"ok": False, "detail": "no frames"}
    assert snap["buses"][1]["last_seen_ms"] == NOON + 1000
    assert [a["id"] for a in snap["alerts"]] == ["camera:bus-2"]
    json.dumps(snap)  # the page gets exactly this


def test_last_will_makes_a_bus_offline_until_its_next_heartbeat(state: FleetState) -> None:
    state.apply(env("heartbeat", "bus-1", Heartbeat(outbox_backlog=0)), NOON)
    state.apply(env("offline", "bus-1", Offline(), sent_ms=NOON - 3_600_000), NOON + 5000)
    snap = state.snapshot(NOON + 5000)
    assert snap["buses"][0]["state"] == "offline"
    (alert,) = snap["alerts"]
    assert alert["id"] == "offline:bus-1" and alert["severity"] == "critical" and "last will" in alert["message"]
    state.apply(env("heartbeat", "bus-1", Heartbeat(outbox_backlog=0), sent_ms=NOON + 9000), NOON + 9000)
    assert state.snapshot(NOON + 9000)["alerts"] == []


def test_silence_longer_than_the_timeout_is_offline(state: FleetState) -> None:
    state.apply(env("heartbeat", "bus-3", Heartbeat(outbox_backlog=0)), NOON)
    assert state.alerts(NOON + 60_000) == []
    (alert,) = state.alerts(NOON + 61_000)
    assert alert.kind == "offline" and "no heartbeat" in alert.message
    assert state.snapshot(NOON + 61_000)["buses"][0]["state"] == "offline"


def test_registered_bus_never_heard_from_is_unknown_without_alert() -> None:
    state = FleetState(CFG, known_buses=["bus-9"])
    snap = state.snapshot(NOON)
    assert snap["buses"][0]["state"] == "unknown" and snap["alerts"] == []


def test_an_older_heartbeat_does_not_overwrite_a_newer_one(state: FleetState) -> None:
    state.apply(env("heartbeat", "bus-1", Heartbeat(outbox_backlog=9), sent_ms=NOON), NOON)
    state.apply(env("heartbeat", "bus-1", Heartbeat(outbox_backlog=1), sent_ms=NOON - 5000), NOON + 10)
    assert state.buses["bus-1"].outbox_backlog == 9


@pytest.mark.parametrize(
    ("backlogs", "alert"),
    [([10, 60, 80], True), ([60, 60, 61], True), ([80, 80, 80], False), ([90, 70, 95], False), ([1, 2, 3], False)],
)
def test_growing_backlog_alert(state: FleetState, backlogs: list[int], alert: bool) -> None:
    for i, n in enumerate(backlogs):
        state.apply(env("heartbeat", "bus-1", Heartbeat(outbox_backlog=n), sent_ms=NOON + i), NOON + i)
    kinds = [a.kind for a in state.alerts(NOON + 10)]
    assert kinds == (["backlog"] if alert else [])


def test_pending_erasures_alert(state: FleetState) -> None:
    state.apply(env("heartbeat", "bus-2", Heartbeat(outbox_backlog=0, pending_erasures=2)), NOON)
    (alert,) = state.alerts(NOON)
    assert alert.kind == "erasures" and "2 erasure" in alert.message


def test_revenue_today_per_bus_and_route_counts_each_fare_once(state: FleetState) -> None:
    a, b, c = fare("bus-1", "12", 250), fare("bus-1", "X1", 400), fare("bus-2", "12", 125, at_ms=NOON + 600_000)
    old = fare("bus-2", "12", 999, at_ms=NOON - 86_400_000, day="2025-03-02")
    state.apply(env("fares", "bus-1", Fares(fares=[a, b])), NOON)
    state.apply(env("fares", "bus-1", Fares(fares=[a])), NOON)  # sent again before the cloud acked it
    state.apply(env("fares", "bus-2", Fares(fares=[c, old])), NOON)
    snap = state.snapshot(NOON + 700_000)
    assert snap["service_day"] == DAY and snap["fares_today"] == 3
    assert snap["revenue_today"] == [{"currency": "EUR", "minor": 775, "text": "EUR 7.75"}]
    by_bus = {x["bus_id"]: (x["fares_today"], x["revenue_today"][0]["minor"]) for x in snap["buses"]}
    assert by_bus == {"bus-1": (2, 650), "bus-2": (1, 125)}
    by_route = {r["route_id"]: (r["fares_today"], r["revenue_today"][0]["text"]) for r in snap["routes"]}
    assert by_route == {"12": (2, "EUR 3.75"), "X1": (1, "EUR 4.00")}
    points = [(p["start_ms"] - NOON, p["money"][0]["minor"]) for p in snap["chart"]["points"]]
    assert points == [(0, 650), (600_000, 125)]  # 5-minute buckets
    assert all(isinstance(m["minor"], int) for m in snap["revenue_today"])
    # The next service day starts at zero.
    assert state.snapshot(NOON + 86_400_000)["fares_today"] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["12", "X1", "7"])), min_size=1, max_size=30),
       st.randoms())  # fmt: skip
def test_revenue_is_the_sum_of_distinct_fares_however_they_arrive(items, rnd) -> None:
    state = FleetState(CFG)
    fares = [fare("bus-1", route, amount) for amount, route in items]
    sent = fares + rnd.sample(fares, k=len(fares) // 2)  # some sent twice, in any order
    rnd.shuffle(sent)
    for i in range(0, len(sent), 7):
        state.apply(env("fares", "bus-1", Fares(fares=sent[i : i + 7])), NOON)
    snap = state.snapshot(NOON)
    assert snap["fares_today"] == len(fares)
    assert snap["revenue_today"][0]["minor"] == sum(f.amount_minor for f in fares)
    assert sum(r["revenue_today"][0]["minor"] for r in snap["routes"]) == sum(f.amount_minor for f in fares)


def test_recent_decisions_newest_first_bounded_and_without_images(state: FleetState) -> None:
    for i in range(7):
        paid = i % 2 == 1
        d = DecisionEvent(at_ms=NOON + i, action="charge" if paid else "refuse",
                          reason="matched" if paid else "unknown", rider_id="rider-1" if paid else None,
                          amount_minor=250 if paid else 0, currency="EUR" if paid else None)  # fmt: skip
        state.apply(env("decision", "bus-1", d), NOON)
    decisions = state.snapshot(NOON)["decisions"]
    assert [d["at_ms"] - NOON for d in decisions] == [6, 5, 4, 3, 2]
    assert decisions[1]["amount"] == "EUR 2.50" and decisions[0]["reason"] == "unknown"
    fields = {"at_ms", "bus_id", "action", "reason", "rider_id", "amount_minor", "currency", "amount"}
    assert set(decisions[0]) == fields  # what the door decided, never a picture


# -- the feed: what is refused is counted, never applied -----------------------------------------


def test_feed_applies_signed_messages(feed: FleetFeed, state: FleetState) -> None:
    assert feed.handle(*payload("heartbeat", "bus-1", Heartbeat(outbox_backlog=3))) is not None
    assert state.buses["bus-1"].outbox_backlog == 3 and not state.rejects


def test_feed_counts_forged_and_broken_messages_per_bus_and_reason(feed: FleetFeed, state: FleetState) -> None:
    intruder = generate_key()
    assert feed.handle(*payload("fares", "bus-2", Fares(fares=[fare("bus-2")]), key=intruder)) is None
    assert feed.handle(*payload("heartbeat", "bus-2", Heartbeat(outbox_backlog=0), key=intruder)) is None
    assert feed.handle(topic_for("heartbeat", "bus-3"), b"{not json") is None
    topic, data = payload("heartbeat", "bus-1", Heartbeat(outbox_backlog=0))
    assert feed.handle(topic_for("heartbeat", "bus-3"), data) is None  # bus-1's message on bus-3's topic
    mallory = Envelope.make("heartbeat", "bus-66", Heartbeat(outbox_backlog=0), sent_ms=NOON)
    assert feed.handle(topic_for("heartbeat", "bus-66"), encode(mallory, intruder)) is None
    assert dict(state.rejects) == {("bus-2", "signature"): 2, ("bus-3", "malformed"): 1, ("bus-3", "topic"): 1,
                                   ("bus-66", "unknown_sender"): 1}  # fmt: skip
    assert "bus-2" not in state.buses and "bus-66" not in state.buses and state.snapshot(NOON)["fares_today"] == 0
    alerts = {a.id: a for a in state.alerts(NOON)}
    assert alerts["rejected:bus-2"].severity == "critical" and "signature 2" in alerts["rejected:bus-2"].message
    assert alerts["rejected:bus-3"].severity == "critical"  # a message on the wrong topic is a forgery attempt


def test_feed_refuses_replays_and_stale_live_messages(feed: FleetFeed, state: FleetState) -> None:
    topic, data = payload("fares", "bus-1", Fares(fares=[fare()]))
    assert feed.handle(topic, data) is not None
    assert feed.handle(topic, data) is None
    stale = payload("decision", "bus-1", DecisionEvent(at_ms=0, action="refuse", reason="x"), sent_ms=NOON - 3_600_000)
    assert feed.handle(*stale) is None
    assert dict(state.rejects) == {("bus-1", "replay"): 1, ("bus-1", "stale"): 1}
    assert state.snapshot(NOON)["fares_today"] == 1


def test_feed_accepts_an_old_retained_status_and_an_old_will(feed: FleetFeed, state: FleetState) -> None:
    hour_ago = NOON - 3_600_000
    assert feed.handle(*payload("heartbeat", "bus-1", Heartbeat(outbox_backlog=0), sent_ms=hour_ago), retained=True)
    assert state.buses["bus-1"].last_seen_ms == hour_ago
    assert [a.id for a in state.alerts(NOON)] == ["offline:bus-1"]  # heard of, but not for an hour
    assert feed.handle(*payload("heartbeat", "bus-2", Heartbeat(outbox_backlog=0), sent_ms=NOON))
    assert feed.handle(*payload("offline", "bus-2", Offline(), sent_ms=hour_ago))  # the broker sends it late
    assert state.snapshot(NOON)["buses"][1]["state"] == "offline" and not state.rejects


def test_acknowledged_alert_comes_back_when_the_situation_changes(feed: FleetFeed, state: FleetState) -> None:
    bad = payload("heartbeat", "bus-1", Heartbeat(outbox_backlog=0), key=generate_key())
    feed.handle(*bad)
    assert not state.acknowledge("rejected:nobody", NOON)
    assert state.acknowledge("rejected:bus-1", NOON)
    assert state.alerts(NOON)[0].acknowledged
    feed.handle(*payload("heartbeat", "bus-1", Heartbeat(outbox_backlog=0), key=generate_key()))
    (alert,) = state.alerts(NOON)
    assert not alert.acknowledged and alert.stamp == 2


def test_bus_keys_file(tmp_path) -> None:
    path = tmp_path / "keys.txt"
    lines = [f"{b} {public_key_text(k.public_key())}  # depot A\n" for b, k in KEYS.items()]
    path.write_text("# fleet\n" + "".join(lines))
    keys = load_bus_keys(path)
    assert sorted(keys) == ["bus-1", "bus-2", "bus-3"]
    path.write_text("bus-1 not-base64!\n")
    with pytest.raises(ValueError, match="keys.txt:1"):
        load_bus_keys(path)
