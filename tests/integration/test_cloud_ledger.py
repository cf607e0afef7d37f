"""The cloud ledger (cloud_sync/cloud/ledger.py) on SQLite and PostgreSQL, and settlement across buses.

* a fare is applied once: its charge entry is written once, a repeat is acknowledged and counted,
  a different fare under the same id is refused, a message applied twice applies nothing;
* entries, fares, messages and rejections are append-only (the database refuses UPDATE and DELETE);
* settlement refunds a transfer and a daily cap that only the cloud could see, once;
* properties (hypothesis): whatever the boardings, a rider's balance is the sum of their entries,
  no fare is refunded more than it was charged, a second settlement writes nothing, one bus alone
  is never refunded (the cloud agrees with a bus that saw everything), order does not matter.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync.cloud.ledger import CloudLedger, FaresMessage, Rejection, open_ledger
from cloud_sync.cloud.settlement import GroupFare, refunds_for
from cloud_sync.devservers.postgres_server import PostgresServer
from cloud_sync.protocol import Fare
from edge.fares.record import epoch_ms
from edge.fares.rules import Boarding, FaresConfig, Outcome, PastFare, RiderState, quote, service_day

T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)  # a Monday, after the service day starts
RULES = FaresConfig(routes={"12": 250, "X1": 400}, offline_credit_limit_minor=10**8, timezone="UTC")


def make_fare(bus: str, rider: str, at: datetime, amount: int, base: int = 250, concession: str = "adult",
              reason: str = "paid", recorded_at: datetime | None = None) -> Fare:  # fmt: skip
    return Fare(
        fare_id=str(uuid.uuid4()), bus_id=bus, trip_id="t", route_id="12", rider_id=rider, concession=concession,
        boarded_at=at.isoformat(), boarded_ms=epoch_ms(at), service_day=service_day(at, RULES).isoformat(),
        amount_minor=amount, base_minor=base, currency="EUR", reason=reason, rules_digest="x",
        recorded_at=(recorded_at or at).isoformat(),
    )  # fmt: skip


def msg(fares: list[Fare], sender: str | None = None) -> FaresMessage:
    return FaresMessage(sender or fares[0].bus_id, uuid.uuid4().hex, 0, fares)


@pytest.fixture(params=["sqlite", "postgres"])
def led(request: pytest.FixtureRequest, tmp_path) -> Iterator[CloudLedger]:
    url = f"sqlite:///{tmp_path / 'cloud.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_dsn")
    ledger = open_ledger(url, RULES)
    yield ledger
    ledger.close()


def test_a_fare_is_applied_exactly_once(led: CloudLedger) -> None:
    fares = [make_fare("bus-1", f"r{i}", T0 + timedelta(minutes=i), 250) for i in range(5)]
    first = led.ingest([msg(fares)])[0]
    assert (first.new, first.duplicates, sorted(first.acked)) == (5, 0, sorted(f.fare_id for f in fares))
    again = led.ingest([msg(fares[:3])])[0]  # the bus missed the ack and sends again
    assert (again.new, again.duplicates, len(again.acked)) == (0, 3, 3)
    assert led.fare_count() == 5
    assert len([e for e in led.entries() if e["kind"] == "charge"]) == 5
    assert led.rejection_counts() == {"replay": 3}


def test_a_batch_mixing_new_and_settled_fares_applies_only_the_new(led: CloudLedger) -> None:
    # The fast path writes without looking fare ids up; a settled id in the batch must send it
    # through the careful path, with nothing of the first attempt left behind.
    old = [make_fare("bus-1", f"r{i}", T0 + timedelta(minutes=i), 250) for i in range(3)]
    led.ingest([msg(old)])
    new = [make_fare("bus-2", f"n{i}", T0 + timedelta(minutes=i), 400) for i in range(4)]
    res = led.ingest([msg(new), msg([*old[1:], make_fare("bus-1", "r9", T0, 250)])])
    assert [(r.new, r.duplicates) for r in res] == [(4, 0), (1, 2)]
    assert led.fare_count() == 8
    charges = [e for e in led.entries() if e["kind"] == "charge"]
    assert len(charges) == len({e["fare_id"] for e in charges}) == 8
    assert sum(e["amount_minor"] for e in charges) == 4 * 250 + 4 * 400
    assert len(led.execute("SELECT * FROM messages")) == 3


def test_a_message_applied_twice_applies_nothing(led: CloudLedger) -> None:
    m = msg([make_fare("bus-1", "r1", T0, 250)])
    assert led.ingest([m])[0].new == 1
    res = led.ingest([m])[0]
    assert res.replayed_message and res.acked == [] and res.new == 0
    assert led.rejection_counts()["replay"] == 1


def test_another_fare_under_a_settled_id_is_refused(led: CloudLedger) -> None:
    fare = make_fare("bus-1", "r1", T0, 250)
    led.ingest([msg([fare])])
    forged = fare.model_copy(update={"amount_minor": 1})
    res = led.ingest([msg([forged])])[0]
    assert res.rejected == [(fare.fare_id, "conflict")] and res.acked == []
    assert [e["amount_minor"] for e in led.entries()] == [250]


def test_rejections_are_counted_by_reason(led: CloudLedger) -> None:
    led.record_rejections([Rejection("bus-1", "signature", "x"), Rejection("?", "malformed", "y"),
                           Rejection("bus-2", "signature", "z")])  # fmt: skip
    assert led.rejection_counts() == {"signature": 2, "malformed": 1}


def test_money_tables_are_append_only(led: CloudLedger) -> None:
    led.ingest([msg([make_fare("bus-1", "r1", T0, 250)])])
    led.record_rejections([Rejection("bus-1", "stale", "x")])
    for sql in ("UPDATE entries SET amount_minor = 0", "DELETE FROM entries", "UPDATE fares SET amount_minor = 0",
                "DELETE FROM fares", "DELETE FROM rejections", "DELETE FROM messages"):  # fmt: skip
        with pytest.raises(Exception, match="append-only"), led.transaction():
            led.execute(sql)
    assert led.balances() == {("r1", "EUR"): 250}


def test_a_charge_entry_cannot_be_negative_or_written_twice(led: CloudLedger) -> None:
    fare = make_fare("bus-1", "r1", T0, 250)
    led.ingest([msg([fare])])
    row = [fare.fare_id, "charge", 250, "EUR", "r1", "bus-1", "2025-03-03", "2025-03-03", "paid", "now"]
    cols = "fare_id, kind, amount_minor, currency, rider_id, bus_id, service_day, service_week, reason, created_at"
    marks = ", ".join([led.placeholder] * 10)
    with pytest.raises(Exception, match="(?i)unique|duplicate"), led.transaction():
        led.execute(f"INSERT INTO entries ({cols}) VALUES ({marks})", row)
    row[2] = -5
    with pytest.raises(Exception, match="(?i)check"), led.transaction():
        led.execute(f"INSERT INTO entries ({cols}) VALUES ({marks})", row)


def test_settlement_refunds_a_transfer_across_buses_once(led: CloudLedger) -> None:
    a = make_fare("bus-1", "r1", T0, 250)
    b = make_fare("bus-2", "r1", T0 + timedelta(minutes=20), 250)  # bus 2 could not know about bus 1
    led.ingest([msg([a]), msg([b])])
    assert led.settle() == 1
    refunds = [e for e in led.entries() if e["kind"] == "refund"]
    assert [(e["fare_id"], e["amount_minor"], e["reason"]) for e in refunds] == [(b.fare_id, -250, "transfer")]
    assert led.settle() == 0  # idempotent
    assert led.balances() == {("r1", "EUR"): 250}


def test_settlement_applies_the_daily_cap_across_buses(led: CloudLedger) -> None:
    fares = [make_fare(f"bus-{1 + i % 2}", "r1", T0 + timedelta(hours=2 * i), 250) for i in range(4)]
    led.ingest([msg([f]) for f in fares])
    led.settle()
    assert led.balances() == {("r1", "EUR"): 750}  # the default daily cap
    late = make_fare("bus-3", "r1", T0 + timedelta(hours=10), 250)  # arrives after the first settlement
    led.ingest([msg([late])])
    assert led.settle() == 1
    assert led.balances() == {("r1", "EUR"): 750}
    assert led.settle() == 0


def test_settlement_waits_for_a_writer_that_commits_out_of_order(postgres_dsn: str) -> None:
    """Two writers: the first fare (lower seq) commits after the second. Settlement must not step
    past it, or the transfer between them would never be refunded."""
    first = make_fare("bus-1", "r1", T0, 250)
    second = make_fare("bus-2", "r1", T0 + timedelta(minutes=20), 250)
    with (open_ledger(postgres_dsn, RULES) as slow, open_ledger(postgres_dsn, RULES) as fast,
          open_ledger(postgres_dsn, RULES) as settler):  # fmt: skip
        settled: list[int] = []
        worker = threading.Thread(target=lambda: settled.append(settler.settle()))
        with slow.transaction():  # the slow writer's transaction stays open
            slow.ingest([msg([first])])
            fast.ingest([msg([second])])  # numbered after `first`, committed before it
            worker.start()
            worker.join(1.0)
            assert worker.is_alive(), "settlement read past a fare that was not committed yet"
        worker.join(10)
        assert settled == [1]
        refunds = [e for e in settler.entries() if e["kind"] == "refund"]
        assert [(e["fare_id"], e["amount_minor"]) for e in refunds] == [(second.fare_id, -250)]
        assert settler.unsettled() == 0


def test_postgres_ledger_carries_on_after_a_server_restart() -> None:
    """The service retries a failed batch; the ledger reconnects, and the fare is applied once."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="facefare-pg-")))  # reachable by the postgres user
    try:
        led = open_ledger(server.start().create_database("restart"), RULES)
        led.ingest([msg([make_fare("bus-1", "r1", T0, 250)])])
        server.stop()
        server.start()
        fare = make_fare("bus-1", "r2", T0, 250)
        with pytest.raises(psycopg.OperationalError):
            led.ingest([msg([fare])])  # the old connection is gone: this batch fails and is retried
        assert led.ingest([msg([fare])])[0].new == 1
        assert led.fare_count() == 2
        led.close()
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_ledger_urls(tmp_path) -> None:
    with open_ledger(str(tmp_path / "a.db")) as a, open_ledger(f"sqlite:///{tmp_path / 'b.db'}") as b:
        assert a.fare_count() == b.fare_count() == 0
    with pytest.raises(ValueError, match="unsupported"):
        open_ledger("mysql://x")


# -- properties ----------------------------------------------------------------------------------


def price_on_buses(rules: FaresConfig, boardings: list[tuple[str, str, int, str]]) -> list[Fare]:
    """Price boardings (bus, rider, minute, concession) as each bus would, knowing only its own fares."""
    seen: dict[tuple[str, str], list[PastFare]] = defaultdict(list)
    out = []
    for bus, rider, minute, conc in sorted(boardings, key=lambda b: (b[2], b[0], b[1])):
        at = T0 + timedelta(minutes=minute)
        q = quote(rules, Boarding(rider, "12", at, conc), RiderState(tuple(seen[(bus, rider)])))
        if q.outcome is not Outcome.CHARGED:
            continue
        recorded = T0 + timedelta(microseconds=len(out))  # the bus records in the order it decides
        fare = make_fare(bus, rider, at, q.amount_minor, q.base_minor, conc, q.reason.value, recorded)
        seen[(bus, rider)].append(PastFare(fare.fare_id, at, q.amount_minor))
        out.append(fare)
    return out


boardings_st = st.lists(
    st.tuples(st.sampled_from(["bus-1", "bus-2", "bus-3"]), st.sampled_from(["r1", "r2"]),
              st.integers(0, 6 * 24 * 60 - 1), st.sampled_from(["adult", "adult", "child", "free"])),  # fmt: skip
    max_size=40,
)
rules_st = st.builds(
    FaresConfig,
    routes=st.just({"12": 250}),
    transfer_window_minutes=st.sampled_from([0, 30, 60, 180]),
    daily_cap_minor=st.none() | st.integers(0, 1000),
    weekly_cap_minor=st.none() | st.integers(0, 4000),
    dedupe_window_seconds=st.sampled_from([0, 120]),
    offline_credit_limit_minor=st.just(10**8),
    timezone=st.just("UTC"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rules_st, boardings=boardings_st, batches=st.integers(1, 4))
def test_settlement_properties(rules: FaresConfig, boardings: list[tuple[str, str, int, str]], batches: int) -> None:
    fares = price_on_buses(rules, boardings)
    led = open_ledger("sqlite:///:memory:", rules)
    for i in range(batches):  # fares arrive in several batches, settled in between
        part = fares[i::batches]
        if part:
            led.ingest([msg([f]) for f in part])
        led.settle()
    entries = led.entries()
    totals: dict[tuple[str, str], int] = defaultdict(int)
    per_fare: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        totals[(e["rider_id"], e["currency"])] += e["amount_minor"]
        per_fare[e["fare_id"]][0 if e["kind"] == "charge" else 1] += e["amount_minor"]
    assert led.balances() == {k: v for k, v in totals.items()}
    assert all(0 <= -refund <= charge for charge, refund in per_fare.values())
    assert sum(1 for e in entries if e["kind"] == "charge") == len(fares)
    assert led.settle() == 0


@settings(max_examples=80, deadline=None)
@given(rules=rules_st, boardings=boardings_st, seed=st.randoms())
def test_one_bus_is_never_refunded_and_order_does_not_matter(rules: FaresConfig, boardings, seed) -> None:
    def group(fares: list[Fare]) -> list[GroupFare]:
        return [GroupFare(f.fare_id, f.bus_id, f.concession, f.boarded_ms, f.service_day, f.amount_minor,
                          f.base_minor, 0, f.recorded_at) for f in fares]  # fmt: skip

    alone = price_on_buses(rules, [("bus-1", "r1", m, c) for _, _, m, c in boardings])
    assert refunds_for(rules, group(alone)) == []
    fares = group(price_on_buses(rules, [(b, "r1", m, c) for b, _, m, c in boardings]))
    shuffled = list(fares)
    seed.shuffle(shuffled)
    refunds = refunds_for(rules, fares)
    assert refunds == refunds_for(rules, shuffled)
    assert sum(r.amount_minor for r in refunds) <= sum(f.amount_minor for f in fares)
