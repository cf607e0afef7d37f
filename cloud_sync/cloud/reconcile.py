"""Reconciliation: per bus and service day, the cloud's counts and sums against the bus's own ledger export.

A bus's depot export (``facefare ledger export --format json``, with or without ``--fares``, or
``--format csv --fares``) says what the bus recorded. :func:`reconcile` compares it with the cloud
ledger's charge entries for that bus, per service day and currency, and lists every difference:
a day only one side has, a count or a sum that differs and, when the export has every fare, each
fare missing from the cloud, unknown to the bus, or with another amount. Money is integer minor
units; refunds from settlement are reported beside the charges but are not differences.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_sync.cloud.ledger import CloudLedger

DayKey = tuple[str, str]  # (service_day, currency)


class ExportError(ValueError):
    """A file is not a bus ledger export this command can read."""


@dataclass
class BusExport:
    """What one bus's export says: counts and sums per (day, currency), and its fares if listed."""

    bus_id: str
    days: dict[DayKey, tuple[int, int]]
    fares: dict[str, tuple[int, str, str]] | None = None  # fare id -> (amount_minor, day, currency), if listed
    source: str = ""


@dataclass(frozen=True)
class Difference:
    bus_id: str
    service_day: str
    currency: str
    what: str  # count, sum, missing_in_cloud, missing_on_bus, amount, day_only_in_cloud, day_only_on_bus
    bus: int
    cloud: int
    fare_id: str = ""

    def describe(self) -> str:
        fare = f" fare {self.fare_id}" if self.fare_id else ""
        return (f"{self.bus_id} {self.service_day} {self.currency}{fare}: {self.what} "
                f"bus={self.bus} cloud={self.cloud}")  # fmt: skip


@dataclass
class Report:
    """The result of reconciling one bus: its rows per day and every difference."""

    bus_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def load_export(path: Path) -> BusExport:
    """Read a ``facefare ledger export`` file (JSON totals, JSON ``--fares`` or CSV ``--fares``)."""
    text = Path(path).read_text()
    if Path(path).suffix.lower() == ".csv" or not text.lstrip().startswith("{"):
        return _from_fare_rows(list(csv.DictReader(text.splitlines())), None, str(path))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not JSON: {exc}") from None
    bus_id = (doc.get("ledger") or {}).get("bus_id")
    if "fares" in doc:
        return _from_fare_rows(doc["fares"], bus_id, str(path))
    per_day = (doc.get("totals") or {}).get("day")
    if per_day is None or not bus_id:
        raise ExportError(f"{path}: expected an export with ledger.bus_id and per-day totals (--by day) or fares")
    days = {(r["key"], r["currency"]): (int(r["boardings"]), int(r["charged_minor"])) for r in per_day}
    return BusExport(bus_id, days, None, str(path))


def _from_fare_rows(rows: list[dict[str, Any]], bus_id: str | None, source: str) -> BusExport:
    days: dict[DayKey, list[int]] = defaultdict(lambda: [0, 0])
    fares: dict[str, tuple[int, str, str]] = {}
    buses = {r.get("bus_id") for r in rows}
    if len(buses) == 1:  # the fares name their bus (the export's header names the exporting host's)
        bus_id = str(next(iter(buses)))
    elif bus_id is None or buses:
        raise ExportError(f"{source}: cannot tell which bus this export is from ({sorted(map(str, buses))})")
    for r in rows:
        try:
            amount = int(r["amount_minor"])
            key = (str(r["service_day"]), str(r["currency"]))
            fares[str(r["fare_id"])] = (amount, *key)
        except (KeyError, ValueError) as exc:
            raise ExportError(f"{source}: a fare row lacks {exc}") from None
        days[key][0] += 1
        days[key][1] += amount
    return BusExport(bus_id, {k: (v[0], v[1]) for k, v in days.items()}, fares, source)


def reconcile(ledger: CloudLedger, export: BusExport) -> Report:
    """Compare one bus's export with the cloud ledger; see the module docstring."""
    report = Report(export.bus_id)
    cloud = {(t.service_day, t.currency): t for t in ledger.day_totals(export.bus_id)}
    for day, cur in sorted(set(cloud) | set(export.days)):
        bus_n, bus_sum = export.days.get((day, cur), (0, 0))
        t = cloud.get((day, cur))
        cloud_n, cloud_sum, refunded = (t.fares, t.charged_minor, t.refunded_minor) if t else (0, 0, 0)
        report.rows.append({"bus_id": export.bus_id, "service_day": day, "currency": cur, "bus_fares": bus_n,
                            "cloud_fares": cloud_n, "bus_charged_minor": bus_sum, "cloud_charged_minor": cloud_sum,
                            "cloud_refunded_minor": refunded})  # fmt: skip
        if (day, cur) not in export.days:
            report.differences.append(Difference(export.bus_id, day, cur, "day_only_in_cloud", 0, cloud_n))
        elif t is None:
            report.differences.append(Difference(export.bus_id, day, cur, "day_only_on_bus", bus_n, 0))
        if bus_n != cloud_n:
            report.differences.append(Difference(export.bus_id, day, cur, "count", bus_n, cloud_n))
        if bus_sum != cloud_sum:
            report.differences.append(Difference(export.bus_id, day, cur, "sum", bus_sum, cloud_sum))
    if export.fares is not None:
        in_cloud = ledger.fares_of_bus(export.bus_id)
        for fid in sorted(set(export.fares) | set(in_cloud)):
            row = in_cloud.get(fid)
            on_bus = export.fares.get(fid)
            bus_amount = None if on_bus is None else on_bus[0]
            if row is None:
                assert on_bus is not None
                report.differences.append(Difference(export.bus_id, on_bus[1], on_bus[2], "missing_in_cloud",
                                                     on_bus[0], 0, fid))  # fmt: skip
                continue
            day, cur = row["service_day"], row["currency"]
            if bus_amount is None:
                report.differences.append(Difference(export.bus_id, day, cur, "missing_on_bus", 0,
                                                     int(row["amount_minor"]), fid))  # fmt: skip
            elif bus_amount != int(row["amount_minor"]):
                report.differences.append(Difference(export.bus_id, day, cur, "amount", bus_amount,
                                                     int(row["amount_minor"]), fid))  # fmt: skip
    return report
