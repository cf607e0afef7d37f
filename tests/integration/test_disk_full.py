"""A full disk: the bus refuses new charges with a clear rider message and an ERROR log line, and
what was stored stays intact and readable.

Two ways to fill it: a size-limited SQLite file (``max_bytes`` -> ``PRAGMA max_page_count``),
where SQLite itself reports "database or disk is full" and runs anywhere, and a real 2 MiB ext4
filesystem on a loop device (needs root and ``mount``; skipped cleanly otherwise), where the
ledger refuses once less than ``min_free_bytes`` is free. The headroom is needed: on a
*completely* full ext4, SQLite's memory-mapped WAL index can kill the next process that opens
the file with SIGBUS (seen while writing this test), so the ledger never fills the disk itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.fares.ledger import FareDecision, Ledger
from edge.fares.rules import FaresConfig, Outcome, Reason

RIDER_MESSAGE = "Sorry, this bus cannot take payments right now — please see the driver."
T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)
RULES = FaresConfig(daily_cap_minor=None, weekly_cap_minor=None, transfer_window_minutes=0,
                    offline_credit_limit_minor=10**9)  # fmt: skip


def boarding(i: int) -> dict:
    return dict(rider_id=f"rider-{i:05d}", route_id="12", at=T0 + timedelta(seconds=i), trip_id=f"trip-{i // 100}")


def fill(ledger: Ledger, start: int = 0, limit: int = 100_000) -> tuple[list[FareDecision], FareDecision]:
    """Charge new riders until the ledger refuses; the charged decisions and the refusal."""
    charged = []
    for i in range(start, start + limit):
        d = ledger.charge(**boarding(i))
        if d.outcome is Outcome.REFUSED:
            return charged, d
        charged.append(d)
    raise AssertionError(f"the ledger never filled up after {limit} charges")


def assert_refused_clearly(d: FareDecision, caplog: pytest.LogCaptureFixture) -> None:
    assert (d.outcome, d.reason, d.may_board, d.amount_minor) == (Outcome.REFUSED, Reason.UNAVAILABLE, False, 0)
    assert d.rider_message == RIDER_MESSAGE
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "edge.fares.ledger"]
    assert errors and "cannot store charges" in errors[-1].getMessage()
    assert "full" in errors[-1].getMessage() or "I/O" in errors[-1].getMessage()


def assert_intact(path: Path, charged: list[FareDecision]) -> None:
    """Every charge the riders were told about is there, readable, with its outbox row."""
    with Ledger(path, RULES, readonly=True) as ro:
        assert ro.integrity_check() == "ok"
        stored = {f["fare_id"]: f["amount_minor"] for f in ro.fares()}
        assert stored == {d.fare_id: d.amount_minor for d in charged}
        assert {item["fare_id"] for item in ro.outbox()} == set(stored)
        assert sum(t.charged_minor for t in ro.totals("day")) == sum(d.amount_minor for d in charged)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_size_limited_ledger_refuses_and_keeps_what_it_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path, RULES, bus_id="bus-7", max_bytes=128 * 1024) as ledger:
        charged, refused = fill(ledger)
        assert len(charged) > 20
        assert_refused_clearly(refused, caplog)
        # Still full: the next rider is refused the same way, nothing half-written.
        assert ledger.charge(**boarding(len(charged) + 1)).reason is Reason.UNAVAILABLE
        # A replay of a stored boarding still gets its original answer (a read, no write).
        again = ledger.charge(**boarding(3))
        assert again.replayed and again.fare_id == charged[3].fare_id
        # The ledger is still readable by the same process.
        assert ledger.stats()["fares"] == len(charged)
    assert_intact(path, charged)
    # Given room again (a bigger limit, or space freed), the same file takes charges again.
    with Ledger(path, RULES, bus_id="bus-7", max_bytes=1024 * 1024) as ledger:
        assert ledger.charge(**boarding(len(charged))).outcome is Outcome.CHARGED


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A 2 MiB ext4 filesystem on a loop device; skipped where mounting is not permitted."""
    if os.geteuid() != 0 or not (shutil.which("mkfs.ext4") and shutil.which("mount")):
        pytest.skip("needs root, mkfs.ext4 and mount")
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(2 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_filesystem_refuses_and_keeps_what_it_has(small_filesystem: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = small_filesystem / "ledger.db"
    with Ledger(path, RULES, bus_id="bus-7", min_free_bytes=256 * 1024) as ledger:
        charged, refused = fill(ledger)
        assert len(charged) > 5
        assert_refused_clearly(refused, caplog)
        assert ledger.charge(**boarding(len(charged) + 1)).reason is Reason.UNAVAILABLE
        again = ledger.charge(**boarding(0))
        assert again.replayed and again.fare_id == charged[0].fare_id
    assert_intact(path, charged)
    # Reopening read-write works. Closing checkpointed the WAL into the file and gave some space
    # back, so a few more charges may fit; then it refuses cleanly again.
    with Ledger(path, RULES, bus_id="bus-7", min_free_bytes=256 * 1024) as ledger:
        assert ledger.stats()["fares"] == len(charged)
        more, refused = fill(ledger, start=len(charged) + 10)
        assert_refused_clearly(refused, caplog)
    assert_intact(path, charged + more)
