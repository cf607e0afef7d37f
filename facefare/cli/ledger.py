"""``facefare ledger``: the bus's fare ledger for the driver or a depot inspector.

A thin wrapper over :class:`edge.fares.ledger.Ledger`; the ledger is opened read-only, so inspecting a
bus (or a copy of its file) never changes it::

    facefare ledger show                      # counts, then totals per day, route and rider
    facefare ledger show --day 2025-03-03 --by route
    facefare ledger export --format csv > totals.csv
    facefare ledger export --format json --fares --rider rider-17 > rider-17.json
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from edge.fares.ledger import GroupBy, Ledger, LedgerError, Total
from edge.fares.record import FARE_COLUMNS
from edge.fares.rules import format_money
from facefare import wiring
from facefare.cli.context import Context, pass_ctx

GROUPS: tuple[GroupBy, ...] = ("day", "route", "rider")
TITLES = {"day": "Per service day", "route": "Per route", "rider": "Per rider"}

F = TypeVar("F", bound=Callable[..., Any])


def _filters(fn: F) -> F:
    """The options shared by show and export."""
    for decorator in reversed(
        [
            click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
                         help="Ledger file (default: ledger.path of the configuration)."),
            click.option("--by", "groups", type=click.Choice(GROUPS), multiple=True,
                         help="Totals per day, route and/or rider (repeatable; default: all three)."),
            click.option("--day", help="Only this service day (YYYY-MM-DD)."),
            click.option("--route", help="Only this route."),
            click.option("--rider", help="Only this rider."),
        ]
    ):
        fn = decorator(fn)
    return fn


def _open(ctx: Context, db_path: Path | None) -> Ledger:
    cfg = ctx.cfg
    try:
        if db_path is not None:
            return Ledger(db_path, cfg.fares, bus_id=cfg.ledger.bus_id, readonly=True)
        return wiring.bus_ledger(cfg, readonly=True)
    except (LedgerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 10 * 1024 or unit == "MiB":
            return f"{n} {unit}"
        n //= 1024
    return f"{n} GiB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    """Plain text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join(line(r) for r in [header, *rows])


def _total_dict(by: str, t: Total) -> dict[str, Any]:
    return {"by": by, **asdict(t), "charged": format_money(t.charged_minor, t.currency)}


@click.group()
def ledger() -> None:
    """The bus's offline fare ledger: totals for the driver, exports for the depot."""


@ledger.command("show")
@_filters
@click.option("--limit", type=int, default=20, show_default=True, help="Rows per table (0: all).")
@pass_ctx
def show(ctx: Context, db_path: Path | None, groups: tuple[GroupBy, ...], day: str | None, route: str | None,
         rider: str | None, limit: int) -> None:
    """Counts, then boardings and charges per day, route and rider."""
    with _open(ctx, db_path) as led:
        st = led.stats()
        click.echo(f"ledger {st['path']}  (schema v{st['schema_version']}, {_size(st['bytes_on_disk'])} on disk)")
        click.echo(f"fares {st['fares']}  waiting for the cloud {st['outbox']}  acknowledged {st['acks']}  "
                   f"refused by the cloud {st['rejected_by_cloud']}  quarantined {st['quarantined']}  "
                   f"denied riders {st['denied_riders']}")
        refused = led.rejections()
        if refused:
            click.echo("\nFares not acknowledged: refused by the cloud for good, or quarantined on the bus "
                       "(charged here, not in the cloud ledger; see docs/security.md)")
            click.echo(_table([[r["fare_id"], r["source"], r["reason"], r["rider_id"], r["service_day"],
                                format_money(r["amount_minor"], r["currency"])] for r in refused],
                              ["fare", "refused by", "reason", "rider", "day", "amount"]))  # fmt: skip
        for by in groups or GROUPS:
            totals = led.totals(by, day=day, route=route, rider=rider)
            if by == "rider":
                totals.sort(key=lambda t: (-t.charged_minor, t.key))
            shown = totals if limit <= 0 else totals[:limit]
            rows = [[t.key, t.currency, str(t.boardings), str(t.paid_boardings),
                     format_money(t.charged_minor, t.currency)] for t in shown]
            more = f" (top {len(shown)} of {len(totals)})" if len(shown) < len(totals) else ""
            click.echo(f"\n{TITLES[by]}{more}")
            click.echo(_table(rows, [by, "currency", "boardings", "paid", "charged"]) if rows else "(no fares)")
            sums: dict[str, int] = {}
            for t in totals:
                sums[t.currency] = sums.get(t.currency, 0) + t.charged_minor
            if rows:
                click.echo("total charged: " + ", ".join(format_money(v, k) for k, v in sorted(sums.items())))


@ledger.command("export")
@_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--fares", "raw", is_flag=True, help="Every fare record instead of totals.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_ctx
def export(ctx: Context, db_path: Path | None, groups: tuple[GroupBy, ...], day: str | None, route: str | None,
           rider: str | None, fmt: str, raw: bool, out: Path | None) -> None:
    """Totals per day, route and rider (or every fare with --fares) as CSV or JSON.

    Amounts are integer minor units (charged_minor) with their currency; 'charged' is the same
    amount formatted for people.
    """
    with _open(ctx, db_path) as led:
        if raw:
            columns: list[str] = list(FARE_COLUMNS)
            records = list(led.fares(day=day, route=route, rider=rider))
            document: Any = {"ledger": led.stats(), "fares": records}
        else:
            columns = ["by", "key", "currency", "boardings", "paid_boardings", "charged_minor", "charged"]
            per = {by: [_total_dict(by, t) for t in led.totals(by, day=day, route=route, rider=rider)]
                   for by in groups or GROUPS}
            records = [r for rows in per.values() for r in rows]
            document = {"ledger": led.stats(), "totals": per}
    fh = out.open("w", newline="") if out else sys.stdout
    try:
        if fmt == "json":
            json.dump(document, fh, indent=2)
            fh.write("\n")
        else:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
    finally:
        if out:
            fh.close()
    if out:
        click.echo(f"wrote {len(records)} rows to {out}", err=True)
