"""Issue 19, defect 5: a bus clock step never charges one boarding twice or breaks the cap.

After the clock jumped back a day, the same rider 30 s later was charged again and the day totalled
1500 against a 750 cap. The charging ledger (``monotonic_ns``) now keeps a monotonic record of time:
a step either way is a fault (in the heartbeat) and charging goes on from the monotonic clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig, Outcome

RULES = FaresConfig(routes={"12": 250}, daily_cap_minor=750, dedupe_window_seconds=120, timezone="UTC")
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


class Mono:
    """A monotonic clock the test moves (seconds; the ledger reads integer nanoseconds)."""

    def __init__(self) -> None:
        self.t = 1000

    def __call__(self) -> int:
        return self.t * 10**9


@pytest.mark.parametrize("step", [timedelta(days=-1), timedelta(days=1), timedelta(hours=-3)],
                         ids=["back-a-day", "forward-a-day", "back-3h"])  # fmt: skip
def test_a_clock_step_does_not_charge_one_boarding_twice(step: timedelta, tmp_path: Path) -> None:
    mono = Mono()
    led = Ledger(tmp_path / "ledger.db", RULES, bus_id="bus-1", monotonic_ns=mono)
    first = led.charge("r1", "12", T0, trip_id="t")
    assert first.outcome is Outcome.CHARGED and led.clock_fault is None
    mono.t += 30  # 30 s later the same rider is seen again, but the wall clock stepped
    again = led.charge("r1", "12", T0 + step + timedelta(seconds=30), trip_id="t")
    assert again.amount_minor == 0, again
    assert led.clock_fault is not None and "stepped" in led.clock_fault
    assert led.balance("r1").charged_minor == 250


def test_after_a_restart_a_clock_behind_the_newest_boarding_cannot_break_the_daily_cap(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    mono = Mono()
    led = Ledger(path, RULES, bus_id="bus-1", monotonic_ns=mono)
    for i in range(3):  # 3 x 250 = the cap (3 h apart: no transfers)
        mono.t += 3 * 3600
        assert led.charge("r1", "12", T0 + timedelta(hours=3 * i), trip_id=f"t{i}").amount_minor == 250
    led.close()
    # Restart (no RTC): the clock is a day behind. Three more boardings that day must cost nothing.
    led = Ledger(path, RULES, bus_id="bus-1", monotonic_ns=mono)
    back = T0 + timedelta(hours=6) - timedelta(days=1)
    for i in range(3):
        mono.t += 3 * 3600
        led.charge("r1", "12", back + timedelta(hours=3 * (i + 1)), trip_id=f"t{i + 3}")
    assert led.clock_fault is not None
    day = led.db.execute("SELECT service_day, SUM(amount_minor) FROM fares GROUP BY service_day").fetchall()
    assert [tuple(r) for r in day] == [("2025-03-03", 750)]


def test_an_unguarded_ledger_takes_the_times_it_is_given(tmp_path: Path) -> None:
    """Replays, imports and tests pass explicit times: only the bus's charging ledger is guarded."""
    led = Ledger(tmp_path / "ledger.db", RULES, bus_id="bus-1")
    led.charge("r1", "12", T0, trip_id="t")
    assert led.charge("r2", "12", T0 - timedelta(days=1), trip_id="t").amount_minor == 250
    assert led.clock_fault is None
