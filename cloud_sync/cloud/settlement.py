"""What a rider owes across buses: the cloud's second look at fares each bus priced alone.

A bus prices a boarding with the fares *it* recorded (``edge.fares.rules.quote``). It cannot know that
the rider paid on another bus twenty minutes earlier (a transfer) or already reached the day's cap
on other buses. The cloud sees every fare of a rider, so it prices a rider's service week again as
if one bus had seen it all, and gives back the difference as refund entries.

The rules are those of ``edge.fares.rules`` (dedupe window, transfer window, daily and weekly caps,
scaled by the concession) applied to the fares in boarding order (``boarded_ms``; ties by
when the bus recorded them, then ``fare_id``), starting from each fare's own ``base_minor`` (the route fare with its
concession, as the bus priced it). Pure functions, integers only:

* the cloud never charges more than the buses did; it only refunds;
* refunds of a group (rider, currency, service week) never exceed what the group was charged,
  and a fare is never refunded more than it was charged;
* settling the same fares again issues nothing new (idempotent); the same fares give the same
  refunds whatever order they are listed in;
* refunds are final: a fare arriving late that would have made an earlier refund smaller does not
  take money back from the rider (it is the rider's gain, and it is logged by the ledger).

Transfers across the start of a service week are left as the buses decided them.

    >>> from edge.fares.rules import FaresConfig
    >>> a = GroupFare("f1", "bus-1", "adult", 0, "2025-03-03", 250, 250, 0)          # paid on bus 1
    >>> b = GroupFare("f2", "bus-2", "adult", 20 * 60_000, "2025-03-03", 250, 250, 0)  # 20 min later, bus 2
    >>> [(r.fare_id, r.amount_minor, r.reason) for r in refunds_for(FaresConfig(), [a, b])]
    [('f2', 250, 'transfer')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from edge.fares.rules import FaresConfig, Reason, cap_for


@dataclass(frozen=True, slots=True)
class GroupFare:
    """One charged fare of a rider's week, with the refunds the cloud already gave for it."""

    fare_id: str
    bus_id: str
    concession: str
    boarded_ms: int
    service_day: str
    amount_minor: int
    base_minor: int
    refunded_minor: int = 0
    recorded_at: str = ""  # the bus's clock when it recorded the fare: breaks ties in boarding time


@dataclass(frozen=True)
class Refund:
    """A refund to append: ``amount_minor`` (positive) back to the rider for ``fare_id``."""

    fare_id: str
    amount_minor: int
    reason: str


def _boarding_order(fare: GroupFare) -> tuple[int, str, str]:
    """Boarding time; for boardings in the same millisecond the order a bus recorded them, then the id."""
    return fare.boarded_ms, fare.recorded_at, fare.fare_id


def service_week_of(service_day: str) -> str:
    """The Monday that starts the service week of a service day (both ISO dates).

    >>> service_week_of("2025-03-06")
    '2025-03-03'
    """
    day = date.fromisoformat(service_day)
    return (day - timedelta(days=day.weekday())).isoformat()


def due_amounts(rules: FaresConfig, fares: Iterable[GroupFare]) -> dict[str, tuple[int, str]]:
    """What each fare of one rider's week would have cost had one bus seen them all.

    Returns ``fare_id -> (due_minor, reason)``; reason is a ``edge.fares.rules.Reason`` value. One pass
    in boarding order: the latest boarding decides the dedupe window, the latest *paid* boarding
    the transfer window, and running sums the caps.
    """
    dedupe_ms = rules.dedupe_window_seconds * 1000
    transfer_ms = rules.transfer_window_minutes * 60_000
    last_ms: int | None = None
    last_paid_ms: int | None = None
    spent_week = 0
    spent_day: dict[str, int] = {}
    out: dict[str, tuple[int, str]] = {}
    for fare in sorted(fares, key=_boarding_order):
        ms, base = fare.boarded_ms, fare.base_minor
        if base == 0:
            due, reason = 0, Reason.FREE.value
        elif dedupe_ms > 0 and last_ms is not None and ms - last_ms <= dedupe_ms:
            due, reason = 0, Reason.DUPLICATE.value
        elif transfer_ms > 0 and last_paid_ms is not None and ms - last_paid_ms <= transfer_ms:
            due, reason = 0, Reason.TRANSFER.value
        else:
            due, reason = _capped(rules, fare, spent_day.get(fare.service_day, 0), spent_week)
        last_ms = ms
        if due > 0:
            last_paid_ms = ms
            spent_week += due
            spent_day[fare.service_day] = spent_day.get(fare.service_day, 0) + due
        out[fare.fare_id] = (due, reason)
    return out


def _capped(rules: FaresConfig, fare: GroupFare, spent_day: int, spent_week: int) -> tuple[int, str]:
    """The fare after the daily and weekly caps (a group is one service week)."""
    percent = rules.concessions.get(fare.concession, 100)
    amount = fare.base_minor
    for cap, spent in ((rules.daily_cap_minor, spent_day), (rules.weekly_cap_minor, spent_week)):
        scaled = cap_for(cap, percent)
        if scaled is not None:
            amount = min(amount, max(0, scaled - spent))
    if amount < fare.base_minor:
        return amount, Reason.CAPPED.value
    return amount, (Reason.PAID if percent == 100 else Reason.CONCESSION).value


def refunds_for(rules: FaresConfig, fares: Sequence[GroupFare]) -> list[Refund]:
    """The new refunds one group (a rider's service week in one currency) needs, in a fixed order.

    The group's refund target is ``max(0, charged - due)``; what was already refunded is
    subtracted. The rest is given back first on the fares the cloud priced lower than the bus did
    (boarding order), then, should that not cover it, on any fare with charge left to refund.
    """
    due = due_amounts(rules, fares)
    charged = sum(f.amount_minor for f in fares)
    refunded = sum(f.refunded_minor for f in fares)
    missing = max(0, charged - sum(d for d, _ in due.values())) - refunded
    if missing <= 0:
        return []
    ordered = sorted(fares, key=_boarding_order)
    given: dict[str, int] = {}
    out: list[Refund] = []
    for first_pass in (True, False):
        for fare in ordered:
            if missing <= 0:
                break
            left = fare.amount_minor - fare.refunded_minor - given.get(fare.fare_id, 0)
            if first_pass:
                left = min(left, fare.amount_minor - due[fare.fare_id][0] - fare.refunded_minor)
            amount = min(missing, left)
            if amount <= 0:
                continue
            given[fare.fare_id] = given.get(fare.fare_id, 0) + amount
            out.append(Refund(fare.fare_id, amount, due[fare.fare_id][1] if first_pass else "settlement"))
            missing -= amount
    return out
