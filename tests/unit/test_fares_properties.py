"""Properties of the fare rules that must hold for *any* rules and any sequence of boardings.

* the total charged to a rider in a service day never exceeds the daily cap (nor the week's the weekly cap);
* no charge is ever negative;
* a free concession always charges 0;
* a boarding within the transfer window of a paid one charges 0;
* the same boarding replayed charges once (through the real ledger).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.fares.ledger import Ledger
from edge.fares.rules import (
    Boarding,
    FaresConfig,
    Outcome,
    PastFare,
    Reason,
    RiderState,
    quote,
    service_day,
    service_week,
)

T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)
ROUTES = ("12", "X1", "7")
KINDS = ("adult", "child", "senior", "free")
caps = st.none() | st.integers(0, 5_000)

rules_st = st.builds(
    FaresConfig,
    currency=st.sampled_from(["EUR", "GBP", "JPY"]),
    routes=st.fixed_dictionaries({r: st.integers(0, 1_000) for r in ROUTES}),
    default_fare_minor=st.none() | st.integers(0, 1_000),
    concessions=st.fixed_dictionaries(
        {"adult": st.integers(0, 100), "child": st.integers(0, 100), "senior": st.integers(0, 100), "free": st.just(0)}
    ),
    transfer_window_minutes=st.integers(0, 180),
    daily_cap_minor=caps,
    weekly_cap_minor=caps,
    dedupe_window_seconds=st.integers(0, 600),
    offline_credit_limit_minor=st.integers(0, 1_000_000),
    timezone=st.sampled_from(["UTC", "Europe/Dublin", "America/New_York", "Asia/Tokyo"]),
    day_starts_hour=st.integers(0, 23),
)
# Gaps between boardings: mostly minutes, sometimes within a dedupe window, sometimes days.
gaps = st.one_of(st.integers(0, 300), st.integers(300, 4 * 3600), st.integers(4 * 3600, 3 * 86400))
boardings_st = st.lists(
    st.tuples(gaps, st.sampled_from(ROUTES + ("99",)), st.sampled_from(KINDS)), min_size=1, max_size=40
)


def simulate(rules: FaresConfig, steps: list[tuple[int, str, str]]):
    """Run one rider's boardings through quote(); yield (boarding, quote, history before it)."""
    history: list[PastFare] = []
    at = T0
    for i, (gap, route, kind) in enumerate(steps):
        at += timedelta(seconds=gap)
        boarding = Boarding("r1", route, at, kind)
        unconfirmed = sum(f.amount_minor for f in history)  # offline: nothing is acknowledged
        q = quote(rules, boarding, RiderState(tuple(history), unconfirmed))
        yield boarding, q, tuple(history)
        if q.outcome is Outcome.CHARGED:
            history.append(PastFare(f"f{i}", at, q.amount_minor))


@settings(max_examples=300, deadline=None)
@given(rules_st, boardings_st)
def test_caps_never_exceeded_and_never_negative(rules: FaresConfig, steps: list) -> None:
    per_day: dict = defaultdict(int)
    per_week: dict = defaultdict(int)
    total = 0
    for boarding, q, _ in simulate(rules, steps):
        assert q.amount_minor >= 0
        assert type(q.amount_minor) is int
        if q.outcome is not Outcome.CHARGED:
            assert q.amount_minor == 0
            continue
        per_day[service_day(boarding.at, rules)] += q.amount_minor
        per_week[service_week(boarding.at, rules)] += q.amount_minor
        total += q.amount_minor
    if rules.daily_cap_minor is not None:
        assert all(v <= rules.daily_cap_minor for v in per_day.values())
    if rules.weekly_cap_minor is not None:
        assert all(v <= rules.weekly_cap_minor for v in per_week.values())
    assert total <= rules.offline_credit_limit_minor  # never acknowledged, so never above the credit limit


@settings(max_examples=200, deadline=None)
@given(rules_st, boardings_st)
def test_free_concession_always_charges_zero(rules: FaresConfig, steps: list) -> None:
    free_steps = [(gap, route, "free") for gap, route, _ in steps]
    for _, q, _ in simulate(rules, free_steps):
        assert q.amount_minor == 0
        assert q.reason in (Reason.FREE, Reason.DUPLICATE, Reason.UNKNOWN_ROUTE)


@settings(max_examples=200, deadline=None)
@given(rules_st, boardings_st)
def test_any_boarding_inside_a_transfer_window_charges_zero(rules: FaresConfig, steps: list) -> None:
    window = timedelta(minutes=rules.transfer_window_minutes)
    for boarding, q, history in simulate(rules, steps):
        opened = any(f.amount_minor > 0 and timedelta(0) <= boarding.at - f.at <= window for f in history)
        if rules.transfer_window_minutes and opened:
            assert q.amount_minor == 0


@settings(max_examples=200, deadline=None)
@given(rules_st, st.sampled_from(ROUTES), st.sampled_from(ROUTES), st.sampled_from(KINDS), st.data())
def test_transfer_after_a_paid_ride_is_free(rules: FaresConfig, first: str, second: str, kind: str, data) -> None:
    rules = rules.model_copy(update={"transfer_window_minutes": max(rules.transfer_window_minutes, 1)})
    lo = rules.dedupe_window_seconds + 1
    hi = rules.transfer_window_minutes * 60
    if lo > hi:
        rules = rules.model_copy(update={"dedupe_window_seconds": 0})
        lo = 1
    gap = data.draw(st.integers(lo, hi), label="seconds after the paid ride")
    paid = PastFare("paid", T0, data.draw(st.integers(1, 1_000), label="paid amount"))
    q = quote(rules, Boarding("r1", second, T0 + timedelta(seconds=gap), kind), RiderState((paid,)))
    assert q.amount_minor == 0
    assert q.outcome is not Outcome.DUPLICATE
    assert q.reason in (Reason.TRANSFER, Reason.FREE, Reason.UNKNOWN_ROUTE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_st, boardings_st, st.lists(st.integers(0, 39), max_size=30))
def test_same_boarding_replayed_charges_once(rules: FaresConfig, steps: list, replays: list[int]) -> None:
    """Replaying boardings (same trip, same instant) into the real ledger changes nothing."""
    events = []
    at = T0
    for i, (gap, route, kind) in enumerate(steps):
        at += timedelta(seconds=gap)
        events.append(dict(rider_id="r1", route_id=route, at=at, trip_id=f"{route}-{i}", concession=kind))
    plain = Ledger(":memory:", rules, bus_id="bus-1")
    replayed = Ledger(":memory:", rules, bus_id="bus-1")
    first: dict[int, object] = {}
    for i, ev in enumerate(events):
        first[i] = plain.charge(**ev)
        d = replayed.charge(**ev)
        assert d == first[i]
        for r in replays:
            if r <= i:  # replay an earlier boarding now
                again = replayed.charge(**events[r])
                if first[r].outcome is Outcome.CHARGED:
                    assert again.replayed and again.fare_id == first[r].fare_id
                    assert again.amount_minor == first[r].amount_minor
    rows = lambda led: sorted((f["fare_id"], f["amount_minor"]) for f in led.fares())  # noqa: E731
    assert rows(plain) == rows(replayed)
    assert len({fid for fid, _ in rows(replayed)}) == len(rows(replayed))
    assert len(replayed.outbox()) == len(rows(replayed))
    if rules.daily_cap_minor is not None:
        assert all(t.charged_minor <= rules.daily_cap_minor for t in replayed.totals("day"))
