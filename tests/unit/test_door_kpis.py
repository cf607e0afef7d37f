"""Door KPIs on the fleet dashboard (FleetState, fed by signed decision envelopes) and the bus's side
of them (facefare.bus.decision_event): boardings by outcome, see-the-driver rate, waits, smile attempts,
and the alert for a bus whose refusals are out of line with the fleet."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.dashboard.state import FleetState
from cloud_sync.protocol import DecisionEvent, Envelope, encode, generate_key, parse, topic_for
from edge.door.pipeline import DoorDecision, TrackState
from edge.door.tracker import IouTracker
from edge.faces.geometry import Rect
from facefare.bus import DoorTiming, decision_event
from hardware.cameras.base import Frame

NOON = int(datetime(2025, 3, 3, 12, 0, tzinfo=UTC).timestamp() * 1000)
CFG = DashboardConfig(refusal_alert_rate=0.2, refusal_alert_factor=2.0, refusal_alert_min_boardings=10)


def decide(state: FleetState, bus: str, action: str, reason: str, at_ms: int, wait_ms: int | None = None,
           smiles: int | None = None) -> None:  # fmt: skip
    d = DecisionEvent(at_ms=at_ms, action=action, reason=reason, wait_ms=wait_ms, smile_attempts=smiles,
                      rider_id="r1" if action == "charge" else None)  # fmt: skip
    state.apply(Envelope.make("decision", bus, d, sent_ms=at_ms), at_ms)


def test_door_kpis_per_bus_and_fleet() -> None:
    state = FleetState(CFG)
    for i, wait in enumerate((1000, 2000, 3000, 4000, 10_000)):
        decide(state, "bus-1", "charge", "matched", NOON + i, wait, smiles=1 + i % 2)
    decide(state, "bus-1", "see_driver", "attempts", NOON + 10, 6000, smiles=3)
    decide(state, "bus-1", "refuse", "unknown", NOON + 11, 2500)
    decide(state, "bus-2", "see_driver", "frozen", NOON + 12)  # an older bus: no wait, no smiles
    snap = state.snapshot(NOON + 1000)
    door = snap["door"]
    bus1 = next(b for b in door["buses"] if b["bus_id"] == "bus-1")
    assert (bus1["boardings"], bus1["charged"], bus1["refused"], bus1["see_driver"]) == (7, 5, 1, 1)
    assert bus1["see_driver_rate"] == 1 / 7
    assert bus1["wait_p50_s"] == 3.0 and bus1["wait_p95_s"] == 10.0
    assert bus1["smile_attempts_per_charge"] == (1 + 2 + 1 + 2 + 1) / 5  # only charges count
    assert {(r["action"], r["reason"], r["count"]) for r in bus1["by_reason"]} == {
        ("see_driver", "attempts", 1), ("refuse", "unknown", 1)}  # fmt: skip
    fleet = door["fleet"]
    assert (fleet["boardings"], fleet["charged"], fleet["see_driver"]) == (8, 5, 2)
    assert fleet["see_driver_rate"] == 2 / 8
    bus2 = next(b for b in door["buses"] if b["bus_id"] == "bus-2")
    assert bus2["wait_p50_s"] is None and bus2["smile_attempts_per_charge"] is None
    assert fleet["hours"] == [{"start_ms": NOON, "boardings": 8, "charged": 5, "refused": 1, "see_driver": 2}]
    assert "r1" not in str(door)  # KPIs never name a rider


def test_a_bus_refusing_far_more_than_the_fleet_raises_an_alert() -> None:
    state = FleetState(CFG)
    for i in range(40):  # bus-2 and bus-3 charge nearly everyone
        for bus in ("bus-2", "bus-3"):
            decide(state, bus, "refuse" if i % 20 == 0 else "charge", "unknown" if i % 20 == 0 else "matched",
                   NOON + i)  # fmt: skip
    for i in range(12):  # bus-1: a dirty lens, half its riders refused
        decide(state, "bus-1", "refuse" if i % 2 else "charge", "unknown" if i % 2 else "matched", NOON + i)
    alerts = [a for a in state.alerts(NOON + 60_000) if a.kind == "refusals"]
    assert [a.bus_id for a in alerts] == ["bus-1"]
    assert "50% of 12 boardings" in alerts[0].message and "fleet today: 5%" in alerts[0].message
    # An hour later those boardings are no longer recent: no alert.
    assert not [a for a in state.alerts(NOON + 3_700_000) if a.kind == "refusals"]


def test_the_same_share_on_every_bus_is_no_alert() -> None:
    state = FleetState(CFG)
    for i in range(20):
        for bus in ("bus-1", "bus-2"):
            decide(state, bus, "refuse" if i % 2 else "charge", "unknown" if i % 2 else "matched", NOON + i)
    assert not [a for a in state.alerts(NOON + 1000) if a.kind == "refusals"]


def test_decision_event_carries_the_wait_and_smile_attempts_and_old_events_still_parse() -> None:
    d = DoorDecision(3, 40, 2.0, "refuse", None, "unknown", "Sorry")
    event = decision_event(d, wait_s=2.345, smile_attempts=2)
    assert (event.wait_ms, event.smile_attempts) == (2345, 2)
    key = generate_key()
    topic = topic_for("decision", "bus-1")
    got = parse(topic, encode(Envelope.make("decision", "bus-1", event), key), {"bus-1": key.public_key()}.get)
    assert got.body.wait_ms == 2345
    old = decision_event(d)  # a bus that does not know these fields sends neither
    assert "wait_ms" not in old.model_dump(exclude_none=True)


def test_door_timing_measures_from_the_first_sighting_of_the_track() -> None:
    """The pipeline's own tracker and track states, stepped by hand (no faces needed)."""
    timing = DoorTiming()
    tracker, states = IouTracker(), {}
    pipeline = SimpleNamespace(tracker=tracker, states=states)  # the two attributes DoorTiming reads
    box = Rect(100, 100, 200, 200)
    (track,), _ = tracker.update([box], 1.0)
    states[track.id] = TrackState()
    timing.frame(pipeline, Frame(0, 1.0, None), [])
    tracker.update([box], 2.5)
    states[track.id].armed, states[track.id].smile.attempts = True, 1
    timing.frame(pipeline, Frame(1, 2.5, None), [])
    assert timing.take_smile_passes() == [1.5]
    tracker.update([box], 3.0)
    decision = DoorDecision(track.id, 2, 3.0, "charge", "r1", "matched", "Matched r1")
    timing.frame(pipeline, Frame(2, 3.0, None), [decision])
    assert timing.take(track.id) == (2.0, 1)
    assert timing.take(track.id) == (None, None)
    # A pipeline without tracker or states (another implementation) only loses the figures.
    timing.frame(object(), Frame(3, 4.0, None), [DoorDecision(9, 3, 4.0, "refuse", None, "unknown", "Sorry")])
    assert timing.take(9) == (None, None)


def test_every_presentation_attack_refusal_is_counted_by_its_reason() -> None:
    """Issue 17 point 6: the liveness checks' refusals reach the dashboard, each under its own reason."""
    from typing import get_args, get_type_hints

    from edge.door.liveness import Verdict
    from edge.door.pipeline import MESSAGES

    reasons = get_args(get_args(get_type_hints(Verdict)["refuse"])[0])
    state = FleetState(CFG)
    for i, reason in enumerate(reasons):
        for k in range(i + 1):  # a different count per reason
            d = DoorDecision(i, k, 1.0, "see_driver", None, reason, MESSAGES[reason])
            event = decision_event(d).model_copy(update={"at_ms": NOON + 10 * i + k})  # the bus stamps wall time
            state.apply(Envelope.make("decision", "bus-1", event, sent_ms=NOON + 10 * i + k), NOON)
    bus1 = next(b for b in state.snapshot(NOON + 1000)["door"]["buses"] if b["bus_id"] == "bus-1")
    counts = {r["reason"]: r["count"] for r in bus1["by_reason"] if r["action"] == "see_driver"}
    assert counts == {reason: i + 1 for i, reason in enumerate(reasons)}
    assert bus1["see_driver"] == sum(range(1, len(reasons) + 1))
