"""A week offline: charge simulated boardings into the fare ledger with no network, then report.

Runs ``--days`` service days of ``--per-day`` boardings (default 7 x 2,000) through
``Ledger.charge`` on a real file (WAL, synchronous=FULL), never acknowledging anything, and checks
that nothing was lost: every charged boarding is in ``fares`` once and waiting in ``outbox``.
Reports the ledger's size on disk and the time per charge (p50/p99), and, in the same run, the
time of plain per-row autocommit INSERTs of the same rows into a plain SQLite table (default
settings: rollback journal, synchronous=FULL) - the naive way to store fares - with the ratio::

    .venv/bin/python bench/ledger.py            # the week: 14,000 boardings
    .venv/bin/python bench/ledger.py --quick    # one short day, for a smoke test
    .venv/bin/python bench/ledger.py --days 2 --per-day 500 --dir /media/sdcard/bench
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.fares.ledger import MIGRATIONS, Ledger  # noqa: E402
from edge.fares.record import FARE_COLUMNS  # noqa: E402
from edge.fares.rules import FaresConfig, Outcome, format_money  # noqa: E402

DAY0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
ROUTES = {"1": 200, "4": 250, "7": 250, "12": 250, "15": 300, "33": 300, "X1": 400, "X9": 400}
KINDS = (("adult", 70), ("child", 12), ("senior", 13), ("free", 5))


def percentile(sorted_ns: list[int], p: int) -> int:
    """Nearest-rank percentile of a sorted list."""
    if not sorted_ns:
        return 0
    rank = max(1, -(-p * len(sorted_ns) // 100))
    return sorted_ns[rank - 1]


def ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def boardings(days: int, per_day: int, riders: int, seed: int):
    """(day, at, rider_id, route_id, trip_id, concession) for the simulated week, in time order."""
    rng = random.Random(seed)
    kinds = {f"rider-{r:05d}": rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0] for r in range(riders)}
    people = list(kinds)
    weights = [1 + (r % 10 == 0) * 8 for r in range(riders)]  # a tenth are daily commuters
    routes = list(ROUTES)
    for day in range(days):
        start = DAY0 + timedelta(days=day, hours=5)
        seconds = sorted(rng.randrange(0, 18 * 3600) for _ in range(per_day))
        for s in seconds:
            at = start + timedelta(seconds=s, milliseconds=rng.randrange(1000))
            rider = rng.choices(people, weights)[0]
            route = rng.choice(routes)
            yield day, at, rider, route, f"{route}-d{day}-h{at.hour}", kinds[rider]


def run_ledger(path: Path, args: argparse.Namespace) -> dict:
    rules = FaresConfig(routes=ROUTES, default_fare_minor=None,
                        **({"offline_credit_limit_minor": args.credit_limit} if args.credit_limit is not None else {}))
    total = args.days * args.per_day
    times: list[int] = []
    outcomes: Counter[str] = Counter()
    charged: dict[str, int] = {}
    with Ledger(path, rules, bus_id="bench-bus") as ledger:
        for _, at, rider, route, trip, kind in tqdm(boardings(args.days, args.per_day, args.riders, args.seed),
                                                    total=total, desc="ledger.charge", unit="boarding"):
            t0 = time.perf_counter_ns()
            d = ledger.charge(rider, route, at, trip_id=trip, concession=kind)
            times.append(time.perf_counter_ns() - t0)
            outcomes[f"{d.outcome.value}:{d.reason.value}"] += 1
            if d.outcome is Outcome.CHARGED:
                assert d.fare_id not in charged, "a fare id charged twice"
                charged[d.fare_id] = d.amount_minor
        stats = ledger.stats()
        size_open = ledger.size_bytes()
        stored = {f["fare_id"]: f["amount_minor"] for f in ledger.fares()}
        outbox = {item["fare_id"] for item in ledger.outbox()}
        integrity = ledger.integrity_check()
        rows = list(ledger.fares())[: args.baseline_rows]
        currency = rules.currency
    lost = set(charged) - set(stored)
    assert not lost, f"{len(lost)} charged fares missing from the ledger"
    assert stored == charged and outbox == set(stored), "ledger and outbox disagree with the charges given"
    assert integrity == "ok", integrity
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    return {
        "times": sorted(times), "outcomes": outcomes, "stats": stats, "size_open": size_open,
        "size_closed": sum(p.stat().st_size for p in files), "rows": rows,
        "charged_total": sum(charged.values()), "currency": currency,
    }  # fmt: skip


def run_autocommit(path: Path, rows: list[dict], wal: bool) -> list[int]:
    """Plain per-row autocommit INSERTs of the same fare rows into a plain table."""
    conn = sqlite3.connect(path, isolation_level=None)  # every statement commits on its own
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    create = MIGRATIONS[0].statements[0]  # the same fares table, without the ledger's logic
    conn.execute(create)
    sql = f"INSERT INTO fares ({', '.join(FARE_COLUMNS)}) VALUES ({', '.join('?' for _ in FARE_COLUMNS)})"
    times = []
    label = "autocommit insert" + (" (WAL)" if wal else "")
    for row in tqdm(rows, desc=label, unit="row"):
        values = [row[c] for c in FARE_COLUMNS]
        t0 = time.perf_counter_ns()
        conn.execute(sql, values)
        times.append(time.perf_counter_ns() - t0)
    conn.close()
    return sorted(times)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = enumerate(zip(r, widths, strict=True))
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=int, default=7, help="service days offline (default 7)")
    ap.add_argument("--per-day", type=int, default=2000, help="boardings per day (default 2000)")
    ap.add_argument("--riders", type=int, default=1500, help="distinct riders (default 1500)")
    ap.add_argument("--credit-limit", type=int, default=None,
                    help="offline credit limit per rider in minor units (default: the fares config default)")
    ap.add_argument("--baseline-rows", type=int, default=None,
                    help="rows for the autocommit baselines (default: every fare the ledger stored)")
    ap.add_argument("--quick", action="store_true", help="1 day x 300 boardings, a smoke test")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.per_day, args.riders = 1, 300, 200
    args.baseline_rows = args.baseline_rows or args.days * args.per_day

    work = Path(tempfile.mkdtemp(prefix="facefare-bench-", dir=args.dir))
    try:
        wall = time.perf_counter()
        led = run_ledger(work / "ledger.db", args)
        plain = run_autocommit(work / "plain.db", led["rows"], wal=False)
        walc = run_autocommit(work / "plain-wal.db", led["rows"], wal=True)
        wall = time.perf_counter() - wall
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lt = led["times"]
    n = len(lt)
    mean = sum(lt) // n
    st = led["stats"]
    print(f"\nA week offline: {args.days} days x {args.per_day} boardings = {n} charges, "
          f"{args.riders} riders, no network (nothing acknowledged)")
    print(f"SQLite {sqlite3.sqlite_version}; files in {args.dir or tempfile.gettempdir()}; wall {wall:.1f} s\n")
    rows = [["", "n", "p50", "p99", "mean", "p50 ratio", "mean ratio"]]
    rows.append(["Ledger.charge (WAL, FULL, rules+fare+outbox)", str(n), ms(percentile(lt, 50)),
                 ms(percentile(lt, 99)), ms(mean), "1.00", "1.00"])
    for label, t in (("plain autocommit INSERT (default journal, FULL)", plain),
                     ("plain autocommit INSERT (WAL, FULL)", walc)):
        tm = sum(t) // len(t)
        rows.append([label, str(len(t)), ms(percentile(t, 50)), ms(percentile(t, 99)), ms(tm),
                     f"{percentile(lt, 50) / percentile(t, 50):.2f}", f"{mean / tm:.2f}"])
    print(table(rows))
    print("\n(ratio = ledger time / baseline time per row; below 1 the ledger is faster)")
    print(f"\nledger on disk: {led['size_open'] / 1e6:.2f} MB while open (db+wal+shm), "
          f"{led['size_closed'] / 1e6:.2f} MB after close (checkpointed); "
          f"{led['size_closed'] // max(1, st['fares'])} bytes per fare")
    print(f"fares {st['fares']}, outbox {st['outbox']} (all unacknowledged), nothing lost: "
          f"every charge given is in the ledger once and in the outbox; integrity_check ok")
    print(f"charged in total: {format_money(led['charged_total'], led['currency'])}")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(led["outcomes"].items())))
    if args.json:
        args.json.write_text(json.dumps({
            "charges": n, "days": args.days, "per_day": args.per_day,
            "ledger_p50_ms": percentile(lt, 50) / 1e6, "ledger_p99_ms": percentile(lt, 99) / 1e6,
            "autocommit_p50_ms": percentile(plain, 50) / 1e6, "autocommit_p99_ms": percentile(plain, 99) / 1e6,
            "ratio_p50": percentile(lt, 50) / percentile(plain, 50),
            "bytes_open": led["size_open"], "bytes_closed": led["size_closed"],
            "outcomes": dict(led["outcomes"]),
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
