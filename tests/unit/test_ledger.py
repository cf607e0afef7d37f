"""The SQLite ledger (edge/fares/ledger.py) and its CLI (facefare/cli/ledger.py)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.fares.ledger import SCHEMA_VERSION, Ledger, LedgerError
from edge.fares.record import fare_id_for
from edge.fares.rules import FaresConfig, Outcome, Reason
from facefare import wiring
from facefare.cli import main
from facefare.config import load_config

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # Monday
RULES = FaresConfig(routes={"12": 250, "X1": 400})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path):
    with Ledger(path, RULES, bus_id="bus-7") as led:
        yield led


def board(led: Ledger, rider: str = "r1", minutes: int = 0, route: str = "12", **kw):
    return led.charge(rider, route, T0 + timedelta(minutes=minutes), trip_id=kw.pop("trip_id", f"{route}-{minutes}"),
                      **kw)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- file settings and schema --------------------------------------------------------------


def test_wal_full_sync_and_schema_version(ledger: Ledger, path: Path) -> None:
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ledger.schema_version == SCHEMA_VERSION
    rows = raw(path).execute("SELECT version, name FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    ledger.close()
    with Ledger(path, RULES) as again:  # reopening applies nothing twice
        assert again.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_refused(path: Path) -> None:
    Ledger(path).close()
    raw(path).execute("INSERT INTO schema_migrations VALUES (99, 'from the future', '2030-01-01')")
    with pytest.raises(LedgerError, match="newer"):
        Ledger(path)


def test_readonly(path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(path, readonly=True)
    with Ledger(path, RULES) as led:
        board(led)
    with Ledger(path, RULES, readonly=True) as ro:
        assert ro.stats()["fares"] == 1
        with pytest.raises(LedgerError, match="read-only"):
            ro.ack(["x"])


@pytest.mark.parametrize("sql", [
    "UPDATE fares SET amount_minor = 0", "DELETE FROM fares", "DELETE FROM outbox",
    "UPDATE acks SET acked_at = ''", "DELETE FROM deny_events",
])  # fmt: skip
def test_append_only(ledger: Ledger, path: Path, sql: str) -> None:
    d = board(ledger)
    ledger.ack([board(ledger, "r2").fare_id])
    ledger.deny("r3")
    with pytest.raises(sqlite3.IntegrityError):
        raw(path).execute(sql)
    assert ledger.fare(d.fare_id)["amount_minor"] == 250


def test_strict_tables_refuse_float_money(ledger: Ledger, path: Path) -> None:
    d = board(ledger)
    row = dict(ledger.fare(d.fare_id), fare_id="other", amount_minor=2.5)
    cols = ", ".join(row)
    with pytest.raises(sqlite3.IntegrityError):
        raw(path).execute(f"INSERT INTO fares ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


# -- charging ------------------------------------------------------------------------------


def test_charge_records_fare_and_outbox(ledger: Ledger) -> None:
    d = board(ledger)
    assert (d.outcome, d.amount_minor, d.currency, d.replayed) == (Outcome.CHARGED, 250, "EUR", False)
    assert d.rider_message == "Paid EUR 2.50. Have a good trip!"
    fare = ledger.fare(d.fare_id)
    assert fare["bus_id"] == "bus-7" and fare["service_day"] == "2025-03-03" and fare["reason"] == "paid"
    [item] = ledger.outbox()
    assert item["fare_id"] == d.fare_id and item["payload"]["amount_minor"] == 250


def test_replay_charges_once_and_returns_original(ledger: Ledger) -> None:
    first = board(ledger)
    again = board(ledger)
    assert again.replayed and (again.fare_id, again.amount_minor, again.reason) == (first.fare_id, 250, Reason.PAID)
    # An explicit id replayed with other details still returns the original decision.
    a = ledger.charge("r9", "X1", T0, trip_id="t", fare_id="018f-given-id")
    b = ledger.charge("r9", "12", T0 + timedelta(hours=3), trip_id="t2", fare_id="018f-given-id")
    assert (b.replayed, b.amount_minor) == (True, a.amount_minor)
    assert ledger.stats()["fares"] == 2 and len(ledger.outbox()) == 2


def test_fare_id_is_deterministic() -> None:
    a = fare_id_for("bus-7", "t", "r1", T0)
    assert a == fare_id_for("bus-7", "t", "r1", T0 + timedelta(milliseconds=999))
    assert a != fare_id_for("bus-7", "t", "r1", T0 + timedelta(seconds=1))
    assert a != fare_id_for("bus-8", "t", "r1", T0)
    assert fare_id_for("a", "b|c", "d", T0) != fare_id_for("a|b", "c", "d", T0)


def test_lingering_rider_is_not_charged_twice(ledger: Ledger) -> None:
    first = board(ledger)
    linger = ledger.charge("r1", "12", T0 + timedelta(seconds=40), trip_id="12-0")
    assert (linger.outcome, linger.fare_id, linger.amount_minor) == (Outcome.DUPLICATE, first.fare_id, 0)
    assert linger.may_board and linger.rider_message.startswith("Already paid")
    assert ledger.stats()["fares"] == 1


def test_transfer_and_caps_through_ledger(ledger: Ledger) -> None:
    assert board(ledger, minutes=0).amount_minor == 250
    assert board(ledger, minutes=30, route="X1").reason is Reason.TRANSFER
    assert board(ledger, minutes=120, route="X1").amount_minor == 400
    assert board(ledger, minutes=240).amount_minor == 100  # daily cap 7.50: 6.50 spent
    assert board(ledger, minutes=400).amount_minor == 0
    assert ledger.balance("r1").charged_minor == 750


def test_failure_between_fare_and_outbox_stores_neither(ledger: Ledger, path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    raw(path).execute("CREATE TRIGGER break_outbox BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'boom'); END")
    d = board(ledger)
    assert (d.outcome, d.reason) == (Outcome.REFUSED, Reason.UNAVAILABLE)
    assert "cannot take payments" in d.rider_message
    assert ledger.stats()["fares"] == 0
    assert any(r.levelname == "ERROR" for r in caplog.records)


def test_deny_list(ledger: Ledger) -> None:
    ledger.deny("r1", "erased")
    d = board(ledger)
    assert (d.outcome, d.reason, d.may_board) == (Outcome.REFUSED, Reason.DENIED, False)
    assert ledger.deny_list()[0]["rider_id"] == "r1" and ledger.is_denied("r1")
    ledger.allow("r1")
    assert board(ledger, minutes=5).amount_minor == 250
    assert ledger.deny_list() == []
    assert ledger.db.execute("SELECT COUNT(*) FROM deny_events").fetchone()[0] == 2  # both events kept
    assert Ledger(":memory:", FaresConfig(deny=["r5"])).is_denied("r5")


def test_offline_credit_limit_and_ack(path: Path) -> None:
    rules = FaresConfig(offline_credit_limit_minor=500, daily_cap_minor=None, transfer_window_minutes=0)
    with Ledger(path, rules) as led:
        assert board(led, minutes=0).amount_minor == 250
        assert board(led, minutes=10).amount_minor == 250
        refused = board(led, minutes=20)
        assert refused.reason is Reason.CREDIT_LIMIT and not refused.may_board
        assert led.balance("r1").unconfirmed_minor == 500
        assert led.ack([f["fare_id"] for f in led.outbox()]) == 2
        assert led.balance("r1").unconfirmed_minor == 0 and led.balance("r1").charged_minor == 500
        assert board(led, minutes=30).amount_minor == 250


def test_ack_is_idempotent_and_recorded(ledger: Ledger) -> None:
    ids = [board(ledger, f"r{i}").fare_id for i in range(4)]
    assert ledger.ack(ids[:2] + ["unknown"]) == 2
    assert ledger.ack(ids[:2]) == 0
    assert [f["fare_id"] for f in ledger.outbox()] == ids[2:]
    assert ledger.stats()["acks"] == 2 and ledger.stats()["fares"] == 4


def test_totals(ledger: Ledger) -> None:
    for i in range(6):
        board(ledger, f"r{i % 3}", minutes=i * 200, route=["12", "X1"][i % 2])
    by_route = {t.key: t for t in ledger.totals("route")}
    assert by_route["12"].boardings == 3 and by_route["X1"].charged_minor == sum(
        f["amount_minor"] for f in ledger.fares(route="X1"))
    assert sum(t.charged_minor for t in ledger.totals("day")) == sum(t.charged_minor for t in ledger.totals("rider"))
    assert [t.key for t in ledger.totals("rider", rider="r1")] == ["r1"]


# -- command line --------------------------------------------------------------------------


def test_cli_show_and_export(ledger: Ledger, path: Path) -> None:
    for i in range(6):
        board(ledger, f"r{i % 3}", minutes=i * 200, route=["12", "X1"][i % 2])
    ledger.close()
    runner = CliRunner()
    shown = runner.invoke(main, ["ledger", "show", "--db", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "Per service day" in shown.output and "Per route" in shown.output and "Per rider" in shown.output
    assert "EUR" in shown.output

    out = runner.invoke(main, ["ledger", "export", "--db", str(path), "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert {r["by"] for r in rows} == {"day", "route", "rider"}
    assert sum(int(r["charged_minor"]) for r in rows if r["by"] == "day") == sum(
        int(r["charged_minor"]) for r in rows if r["by"] == "rider")

    out = runner.invoke(main, ["ledger", "export", "--db", str(path), "--format", "json", "--by", "route"])
    doc = json.loads(out.output)
    assert list(doc["totals"]) == ["route"] and doc["ledger"]["fares"] == 6

    out = runner.invoke(main, ["ledger", "export", "--db", str(path), "--format", "json", "--fares", "--rider", "r1"])
    assert {f["rider_id"] for f in json.loads(out.output)["fares"]} == {"r1"}

    missing = runner.invoke(main, ["ledger", "show", "--db", str(path.with_name("none.db"))])
    assert missing.exit_code != 0 and "no ledger" in missing.output


def test_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFARE_HOME", str(tmp_path))
    monkeypatch.setenv("FACEFARE_LEDGER__BUS_ID", "bus-42")
    cfg = load_config(None)
    with wiring.bus_ledger(cfg) as led:
        assert led.path == str(tmp_path / "ledger.db") and led.bus_id == "bus-42"
        board(led)
    out = CliRunner().invoke(main, ["ledger", "show"])
    assert out.exit_code == 0 and "fares 1" in out.output


def test_docstring_examples_run() -> None:
    import doctest

    import edge.fares.ledger
    import edge.fares.rules

    for module in (edge.fares.rules, edge.fares.ledger):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
