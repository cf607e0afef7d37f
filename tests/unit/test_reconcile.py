"""``facefare cloud reconcile``: the cloud against a bus's own ledger export, per bus and service day.

A bus charges fares into its real ledger and exports them with ``facefare ledger export``; the
cloud ledger gets all of them (no difference, exit 0), or misses some, holds one the bus does not
know and one with another amount (every difference listed, exit 1). All three export formats are read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud_sync.cloud.ledger import FaresMessage, open_ledger
from cloud_sync.cloud.reconcile import ExportError, load_export, reconcile
from cloud_sync.protocol import Fare
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig
from facefare.cli import main

RULES = FaresConfig(routes={"12": 250}, timezone="UTC", offline_credit_limit_minor=10**6)
T0 = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)


@pytest.fixture
def bus(tmp_path: Path) -> Path:
    path = tmp_path / "bus-7.db"
    with Ledger(path, RULES, bus_id="bus-7") as led:
        for i in range(30):  # a boarding every 5 hours for a week (7 service days), ten riders
            led.charge(f"rider-{i % 10}", "12", T0 + timedelta(hours=5 * i), trip_id=f"t{i}")
    return path


def bus_fares(path: Path) -> list[Fare]:
    with Ledger(path, RULES, bus_id="bus-7", readonly=True) as led:
        return [Fare.model_validate(f) for f in led.fares()]


def export(path: Path, out: Path, *args: str) -> Path:
    # Exported as on the bus itself, whose configuration names it (totals carry no bus id of their own).
    result = CliRunner().invoke(main, ["ledger", "export", "--db", str(path), *args, "--out", str(out)],
                                env={"FACEFARE_LEDGER__BUS_ID": "bus-7"})  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_no_difference_when_the_cloud_has_every_fare(bus: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    with open_ledger(url, RULES) as led:
        led.ingest([FaresMessage("bus-7", "a" * 32, 0, bus_fares(bus))])
    files = [export(bus, tmp_path / "fares.json", "--format", "json", "--fares"),
             export(bus, tmp_path / "totals.json", "--format", "json", "--by", "day"),
             export(bus, tmp_path / "fares.csv", "--format", "csv", "--fares")]  # fmt: skip
    for f in files:
        result = CliRunner().invoke(main, ["cloud", "reconcile", "--db", url, str(f)])
        assert result.exit_code == 0, result.output
        assert "no differences (1 bus export(s), 7 bus-days)" in result.output
        assert "bus-7" in result.output


def test_every_difference_is_listed(bus: Path, tmp_path: Path) -> None:
    fares = bus_fares(bus)
    day0 = fares[0].service_day
    missing = fares[0]
    changed = fares[5].model_copy(update={"amount_minor": fares[5].amount_minor + 1})
    stranger = fares[6].model_copy(update={"fare_id": "00000000-0000-4000-8000-000000000000"})
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    with open_ledger(url, RULES) as led:
        led.ingest([FaresMessage("bus-7", "b" * 32, 0, [f for f in fares[1:] if f.fare_id != changed.fare_id]
                                 + [changed, stranger])])  # fmt: skip
        report = reconcile(led, load_export(export(bus, tmp_path / "f.json", "--format", "json", "--fares")))
    found = {(d.what, d.fare_id) for d in report.differences}
    assert ("missing_in_cloud", missing.fare_id) in found
    assert ("missing_on_bus", stranger.fare_id) in found
    assert ("amount", changed.fare_id) in found
    assert not report.ok
    sums = [d for d in report.differences if d.what == "sum"]
    assert sums and all(d.bus != d.cloud for d in sums)

    result = CliRunner().invoke(main, ["cloud", "reconcile", "--db", url, "--csv-out", str(tmp_path / "r.csv"),
                                       str(tmp_path / "f.json")])  # fmt: skip
    assert result.exit_code == 1
    assert f"bus-7 {day0} EUR fare {missing.fare_id}: missing_in_cloud" in result.output
    assert (tmp_path / "r.csv").read_text().startswith("bus_id,service_day,currency,bus_fares,cloud_fares")


def test_a_day_the_cloud_never_saw(bus: Path, tmp_path: Path) -> None:
    fares = bus_fares(bus)
    last_day = fares[-1].service_day
    with open_ledger(f"sqlite:///{tmp_path / 'cloud.db'}", RULES) as led:
        led.ingest([FaresMessage("bus-7", "c" * 32, 0, [f for f in fares if f.service_day != last_day])])
        report = reconcile(led, load_export(export(bus, tmp_path / "t.json", "--format", "json", "--by", "day")))
    assert {(d.what, d.service_day) for d in report.differences} >= {("day_only_on_bus", last_day),
                                                                      ("count", last_day), ("sum", last_day)}


def test_unreadable_exports_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ledger": {"bus_id": "bus-7"}, "totals": {"route": []}}))
    with pytest.raises(ExportError, match="per-day totals"):
        load_export(bad)
    result = CliRunner().invoke(main, ["cloud", "reconcile", "--db", f"sqlite:///{tmp_path / 'c.db'}", str(bad)])
    assert result.exit_code == 1 and "per-day totals" in result.output
