"""Issue 19, defect 12: a full disk and damaged files.

* with no room to write (here: RLIMIT_FSIZE 0 in the process, as on a full disk: every file that
  would grow fails), ``facefare ledger show`` still reads the ledger, and opening it to charge
  fails with a message that names the file and what to do, not a bare traceback;
* a ledger with a corrupt page fails ``PRAGMA quick_check`` at start: it charges no one (the rider
  is sent to the driver) and the file is left exactly as it was, for recovery;
* a gallery with a damaged row no longer stops the bus: it is discarded and resent by the cloud.
"""

from __future__ import annotations

import hashlib
import resource
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud_sync import protocol
from cloud_sync.gallery.bus import BusGallery
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig, Outcome, Reason

RULES = FaresConfig(routes={"12": 250}, daily_cap_minor=None, weekly_cap_minor=None, transfer_window_minutes=0,
                    offline_credit_limit_minor=10**9)  # fmt: skip
T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)


def make_ledger(path: Path, n: int) -> None:
    with Ledger(path, RULES, bus_id="bus-1") as led:
        for i in range(n):
            led.charge(f"rider-{i:04d}", "12", T0 + timedelta(seconds=i), trip_id="t")


def no_room() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_with_no_room_to_write_the_ledger_is_still_readable_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path, 20)
    show = subprocess.run([sys.executable, "-m", "facefare.cli", "ledger", "show", "--db", str(path)],
                          capture_output=True, text=True, preexec_fn=no_room, timeout=60)  # fmt: skip
    assert show.returncode == 0, show.stderr
    assert "fares 20" in show.stdout
    code = (f"from edge.fares.ledger import Ledger, LedgerError\ntry:\n    Ledger({str(path)!r})\n"
            "except LedgerError as e:\n    print(e)")
    opened = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=no_room,
                            timeout=60)  # fmt: skip
    assert "Traceback" not in opened.stderr, opened.stderr
    assert f"ledger {path} cannot be opened" in opened.stdout and "disk may be full" in opened.stdout, opened.stdout


def test_a_ledger_with_a_corrupt_page_charges_no_one_and_is_kept_for_recovery(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path, 300)
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * page
    data[5 * page : 5 * page + 64] = b"\xa5" * 64  # a b-tree page header turned to garbage
    path.write_bytes(bytes(data))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    led = Ledger(path, RULES, bus_id="bus-1", check_integrity=True)
    assert led.corrupt
    d = led.charge("rider-new", "12", T0 + timedelta(hours=1), trip_id="t")
    assert (d.outcome, d.reason, d.may_board) == (Outcome.REFUSED, Reason.UNAVAILABLE, False)
    assert "driver" in d.rider_message
    led.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # not one byte written


def test_a_damaged_gallery_row_is_discarded_and_resent_instead_of_stopping_the_bus(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    cloud = protocol.generate_key().public_key()
    BusGallery(path, "bus-1", b"k" * 32, "ab" * 32, cloud).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO riders VALUES ('r1', 'adult')")
    db.execute("INSERT INTO templates VALUES ('r1', 0, ?, ?)", (b"n" * 12, b"garbage ciphertext"))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('version', '7')")
    db.commit()
    db.close()
    gallery = BusGallery(path, "bus-1", b"k" * 32, "ab" * 32, cloud)
    try:
        assert gallery.corrupt_detail and gallery.wiped
        assert gallery.version == 0 and gallery.riders == []
        assert b"garbage ciphertext" not in gallery.stored_bytes()
    finally:
        gallery.close()
