"""The fare rules of the bus, in one place: what one boarding costs.

This module is meant to be read by a transit planner. Every rule is a small pure function over
integer *minor units* (cents, pence, yen...) and the one currency code of the configuration;
there is no float anywhere in the money path (``tests/test_money_no_float.py`` checks it).

The rules are applied in this order to every boarding (see :func:`quote`):

1. **Deny list** - a blocked or erased rider is refused, whatever else holds.
2. **Dedupe window** - a rider seen again within ``dedupe_window_seconds`` of a recorded
   boarding (lingering at the door, walking past the camera twice) is not charged again.
3. **Route fare** - the flat fare of the route (``routes``), or ``default_fare_minor``;
   an unknown route with no default is refused.
4. **Concession** - the rider kind pays a percentage of the flat fare (``concessions``);
   a kind at 0 percent (``free``) always rides for 0.
5. **Transfer** - a boarding within ``transfer_window_minutes`` after a *paid* boarding is free.
6. **Caps** - the day's and the week's charges never exceed ``daily_cap_minor`` and
   ``weekly_cap_minor`` (both scaled by the concession percentage); once a cap is reached the
   rides are free until the next service day or week.
7. **Offline credit limit** - the bus may hold at most ``offline_credit_limit_minor`` of
   charges per rider that the cloud has not yet confirmed; beyond that the rider is refused
   until the bus syncs.

Example, with the default rules (EUR, 2.50 flat fare, 1-hour transfers, 7.50 daily cap)::

    >>> from datetime import datetime, timedelta, timezone
    >>> rules = FaresConfig(routes={"12": 250})
    >>> at = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    >>> q = quote(rules, Boarding("rider-1", "12", at), RiderState())
    >>> q.amount_minor, q.reason.value
    (250, 'paid')
    >>> paid = PastFare("f1", at, 250)
    >>> quote(rules, Boarding("rider-1", "7", at + timedelta(minutes=20)), RiderState((paid,))).reason.value
    'transfer'
    >>> format_money(q.amount_minor, rules.currency)
    'EUR 2.50'
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ISO_CURRENCY = r"^[A-Z]{3}$"

#: Digits after the decimal point of the few ISO 4217 currencies that do not use 2 (for display only).
MINOR_DIGITS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}

Minor = Annotated[int, Field(ge=0)]
Percent = Annotated[int, Field(ge=0, le=100)]


class FaresConfig(BaseModel):
    """The ``[fares]`` section of the configuration: every rule a planner can change.

    Amounts are integers in the minor unit of ``currency`` (250 = EUR 2.50). In TOML::

        [fares]
        currency = "EUR"
        default_fare_minor = 250
        transfer_window_minutes = 60
        daily_cap_minor = 750

        [fares.routes]
        "12" = 250
        "X1" = 400

        [fares.concessions]
        adult = 100
        child = 50
        senior = 50
        free = 0
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    currency: str = Field("EUR", pattern=ISO_CURRENCY, description="ISO 4217 code of every amount in this section")
    routes: dict[str, Minor] = Field(
        default_factory=dict, description="Flat adult fare per route id, in minor units"
    )
    default_fare_minor: Minor | None = Field(
        250, description="Flat fare of a route missing from `routes`; null refuses unknown routes"
    )
    concessions: dict[str, Percent] = Field(
        default_factory=lambda: {"adult": 100, "child": 50, "senior": 50, "free": 0},
        description="Percent of the flat fare and of the caps that each rider kind pays; must include 'adult'",
    )
    transfer_window_minutes: int = Field(
        60, ge=0, le=24 * 60, description="A boarding this long after a paid one is free; 0 = no transfers"
    )
    daily_cap_minor: Minor | None = Field(750, description="Most one adult pays per service day; null = no cap")
    weekly_cap_minor: Minor | None = Field(3000, description="Most one adult pays per service week; null = no cap")
    dedupe_window_seconds: int = Field(
        120, ge=0, le=3600, description="A rider seen again this soon is not charged again; 0 = off"
    )
    offline_credit_limit_minor: Minor = Field(
        3000,
        description="Most a bus charges one rider before the cloud confirms those charges "
        "(default: the weekly cap, so a week offline never refuses a rider in good standing)",
    )
    deny: list[str] = Field(
        default_factory=list, description="Rider ids never charged (blocked or erased); the cloud adds more at run time"
    )
    timezone: str = Field("UTC", description="IANA time zone of the service area, for service days and weeks")
    day_starts_hour: int = Field(
        4, ge=0, le=23, description="Local hour a service day starts (night buses count to the day before)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _concessions_make_sense(self) -> FaresConfig:
        if "adult" not in self.concessions:
            raise ValueError("concessions must include 'adult' (the full fare, usually 100)")
        if self.concessions.get("free", 0) != 0:
            raise ValueError("concession 'free' must be 0 percent")
        return self


class Outcome(enum.StrEnum):
    """What happens at the door."""

    CHARGED = "charged"  # a fare is recorded (its amount may be 0: transfer, cap, free concession)
    DUPLICATE = "duplicate"  # already recorded moments ago; nothing new is charged
    REFUSED = "refused"  # nothing is recorded; the rider must see the driver


class Reason(enum.StrEnum):
    """Why a boarding costs what it costs."""

    PAID = "paid"  # full flat fare
    CONCESSION = "concession"  # reduced fare for the rider kind
    TRANSFER = "transfer"  # free: within the transfer window of a paid boarding
    CAPPED = "capped"  # reduced or free: the daily or weekly cap is reached
    FREE = "free"  # free: the rider kind pays 0 percent
    DUPLICATE = "duplicate"  # same rider within the dedupe window
    DENIED = "denied"  # rider on the deny list
    CREDIT_LIMIT = "credit_limit"  # too much charged offline for this rider
    UNKNOWN_ROUTE = "unknown_route"  # no fare for this route
    UNKNOWN_CONCESSION = "unknown_concession"  # rider kind missing from `concessions`
    UNAVAILABLE = "unavailable"  # the ledger cannot store charges (disk full, I/O error)


#: What the rider sees or hears at the door, per reason. ``{amount}`` is the charge, formatted.
RIDER_MESSAGES = {
    Reason.PAID: "Paid {amount}. Have a good trip!",
    Reason.CONCESSION: "Paid {amount} ({concession} fare). Have a good trip!",
    Reason.TRANSFER: "Transfer - no charge. Have a good trip!",
    Reason.CAPPED: "Paid {amount} - you have reached your fare cap. Have a good trip!",
    Reason.FREE: "Free ride. Have a good trip!",
    Reason.DUPLICATE: "Already paid - welcome aboard!",
    Reason.DENIED: "Sorry, we cannot take this payment - please see the driver.",
    Reason.CREDIT_LIMIT: "Sorry, your account needs to sync before more rides - please see the driver.",
    Reason.UNKNOWN_ROUTE: "Sorry, this bus cannot take payments right now — please see the driver.",
    Reason.UNKNOWN_CONCESSION: "Sorry, this bus cannot take payments right now — please see the driver.",
    Reason.UNAVAILABLE: "Sorry, this bus cannot take payments right now — please see the driver.",
}
#: When a cap makes the ride free.
CAPPED_FREE_MESSAGE = "Fare cap reached - no charge. Have a good trip!"


@dataclass(frozen=True)
class Boarding:
    """One rider recognised at the door: who, on which route, when (timezone-aware), which kind."""

    rider_id: str
    route_id: str
    at: datetime
    concession: str = "adult"


@dataclass(frozen=True)
class PastFare:
    """A fare already recorded for the rider (as the ledger stores it)."""

    fare_id: str
    at: datetime
    amount_minor: int


@dataclass(frozen=True)
class RiderState:
    """What the bus knows about a rider when they board.

    ``recent``: the rider's fares around the boarding (at least its service week and the
    transfer window before it); ``unconfirmed_minor``: the sum of their charges the cloud has
    not acknowledged yet; ``denied``: on the bus's deny list.
    """

    recent: Sequence[PastFare] = ()
    unconfirmed_minor: int = 0
    denied: bool = False


@dataclass(frozen=True)
class Quote:
    """The price of one boarding: ``amount_minor`` of ``currency`` and the reason for it.

    ``base_minor`` is the fare before transfers and caps; ``duplicate_of`` names the earlier
    fare when the boarding is a duplicate.
    """

    outcome: Outcome
    amount_minor: int
    currency: str
    reason: Reason
    base_minor: int = 0
    duplicate_of: str | None = None


def percent_of(amount_minor: int, percent: int) -> int:
    """``percent`` of an amount, rounded half up to a whole minor unit.

    >>> percent_of(250, 50), percent_of(125, 50), percent_of(250, 0)
    (125, 63, 0)
    """
    return (amount_minor * percent + 50) // 100


def format_money(amount_minor: int, currency: str) -> str:
    """An amount for people, never for arithmetic.

    >>> format_money(1234, "EUR"), format_money(-5, "GBP"), format_money(500, "JPY")
    ('EUR 12.34', 'GBP -0.05', 'JPY 500')
    """
    digits = MINOR_DIGITS.get(currency, 2)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**digits)
    return f"{currency} {sign}{whole}" + (f".{frac:0{digits}d}" if digits else "")


def _zone(rules: FaresConfig) -> ZoneInfo:
    return ZoneInfo(rules.timezone)


def service_day(at: datetime, rules: FaresConfig) -> date:
    """The service day of an instant: the local date, with a day starting at ``day_starts_hour``.

    >>> from datetime import timezone
    >>> rules = FaresConfig()
    >>> service_day(datetime(2025, 3, 4, 2, 30, tzinfo=timezone.utc), rules)  # a night bus
    datetime.date(2025, 3, 3)
    """
    if at.tzinfo is None:
        raise ValueError("boarding times must be timezone-aware")
    return (at.astimezone(_zone(rules)) - timedelta(hours=rules.day_starts_hour)).date()


def service_week(at: datetime, rules: FaresConfig) -> date:
    """The Monday that starts the service week of an instant."""
    day = service_day(at, rules)
    return day - timedelta(days=day.weekday())


def route_fare(rules: FaresConfig, route_id: str) -> int | None:
    """The flat adult fare of a route, or None if the route has no fare."""
    return rules.routes.get(route_id, rules.default_fare_minor)


def cap_for(cap_minor: int | None, percent: int) -> int | None:
    """A cap scaled to a concession: a half-fare rider also has half the cap."""
    return None if cap_minor is None else percent_of(cap_minor, percent)


def _remaining(cap_minor: int | None, spent_minor: int) -> int | None:
    return None if cap_minor is None else max(0, cap_minor - spent_minor)


def quote(rules: FaresConfig, boarding: Boarding, state: RiderState) -> Quote:
    """The price of a boarding under the rules, given what the bus knows about the rider.

    Pure: it reads nothing and writes nothing. The ledger records the quote when its outcome
    is ``CHARGED`` and gives the rider :func:`rider_message`.
    """
    at, cur = boarding.at, rules.currency
    if at.tzinfo is None:
        raise ValueError("boarding times must be timezone-aware")

    def refuse(reason: Reason) -> Quote:
        return Quote(Outcome.REFUSED, 0, cur, reason)

    # 1. Deny list.
    if state.denied or boarding.rider_id in rules.deny:
        return refuse(Reason.DENIED)

    # 2. Dedupe window: the nearest recorded boarding, before or after (late replays).
    if rules.dedupe_window_seconds > 0:
        window = timedelta(seconds=rules.dedupe_window_seconds)
        close = [f for f in state.recent if abs(at - f.at) <= window]
        if close:
            first = min(close, key=lambda f: abs(at - f.at))
            return Quote(Outcome.DUPLICATE, 0, cur, Reason.DUPLICATE, duplicate_of=first.fare_id)

    # 3. Route fare and 4. concession.
    flat = route_fare(rules, boarding.route_id)
    if flat is None:
        return refuse(Reason.UNKNOWN_ROUTE)
    percent = rules.concessions.get(boarding.concession)
    if percent is None:
        return refuse(Reason.UNKNOWN_CONCESSION)
    base = percent_of(flat, percent)
    if base == 0:
        return Quote(Outcome.CHARGED, 0, cur, Reason.FREE, base_minor=0)

    # 5. Transfer: free within the window after a paid boarding.
    if rules.transfer_window_minutes > 0:
        window = timedelta(minutes=rules.transfer_window_minutes)
        if any(f.amount_minor > 0 and timedelta(0) <= at - f.at <= window for f in state.recent):
            return Quote(Outcome.CHARGED, 0, cur, Reason.TRANSFER, base_minor=base)

    # 6. Daily and weekly caps (scaled by the concession).
    day, week = service_day(at, rules), service_week(at, rules)
    spent_day = sum(f.amount_minor for f in state.recent if service_day(f.at, rules) == day)
    spent_week = sum(f.amount_minor for f in state.recent if service_week(f.at, rules) == week)
    amount = base
    for left in (
        _remaining(cap_for(rules.daily_cap_minor, percent), spent_day),
        _remaining(cap_for(rules.weekly_cap_minor, percent), spent_week),
    ):
        if left is not None:
            amount = min(amount, left)
    full = Reason.PAID if percent == 100 else Reason.CONCESSION
    reason = Reason.CAPPED if amount < base else full

    # 7. Offline credit limit: unconfirmed charges plus this one.
    if amount > 0 and state.unconfirmed_minor + amount > rules.offline_credit_limit_minor:
        return refuse(Reason.CREDIT_LIMIT)
    return Quote(Outcome.CHARGED, amount, cur, reason, base_minor=base)


def rider_message(reason: Reason, amount_minor: int, currency: str, concession: str = "adult") -> str:
    """The words for the rider at the door.

    >>> rider_message(Reason.PAID, 250, "EUR")
    'Paid EUR 2.50. Have a good trip!'
    """
    if reason is Reason.CAPPED and amount_minor == 0:
        return CAPPED_FREE_MESSAGE
    return RIDER_MESSAGES[reason].format(amount=format_money(amount_minor, currency), concession=concession)
