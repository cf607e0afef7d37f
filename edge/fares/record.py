"""The fare record, defined once: the fields of one boarding as the bus ledger stores it, the
protocol carries it (``cloud_sync.protocol.Fare`` is checked against :data:`FARE_COLUMNS` when it
is imported) and the cloud ledger stores it again, with how its id and times are made.

Money is integer minor units; times are an ISO text and the same instant in epoch milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from edge.fares.rules import FaresConfig

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FARE_ID_NAMESPACE = uuid.UUID("6f1c2a4e-9b3d-5e8f-a1c7-3d2b4f6e8a90")

#: What the wire (cloud_sync.protocol) accepts for an id (bus, rider) and for free text (route,
#: trip...): the bus's config is held to the same, so the bus never records a fare it cannot send.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TEXT_MAX = 200

#: The fields of a fare, in the order every store and message uses.
FARE_COLUMNS: tuple[str, ...] = (
    "fare_id",  # fare_id_for(bus, trip, rider, boarding second): the same boarding, the same id
    "bus_id",
    "trip_id",
    "route_id",
    "rider_id",
    "concession",  # the fare class the rider boarded with (adult, child, ...)
    "boarded_at",  # ISO 8601 with the offset
    "boarded_ms",  # the same instant, milliseconds since 1970
    "service_day",  # YYYY-MM-DD of the service day the boarding counts for
    "amount_minor",  # what was charged, integer minor units
    "base_minor",  # the route's full fare before concessions, transfers and caps
    "currency",  # ISO 4217
    "reason",  # why this amount (full, transfer, cap, duplicate...)
    "rules_digest",  # the fare rules that priced it
    "recorded_at",  # when the bus wrote it
)


def epoch_ms(at: datetime) -> int:
    """Milliseconds since 1970 of an aware datetime, as an exact integer."""
    if at.tzinfo is None:
        raise ValueError("boarding times must be timezone-aware")
    return (at - EPOCH) // timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def fare_id_for(bus_id: str, trip_id: str, rider_id: str, at: datetime) -> str:
    """The deterministic id of a boarding: uuid5 of (bus, trip, rider, boarding second).

    Why deterministic rather than a random UUIDv7: a replay of the same boarding - the charge
    loop restarting after a power cut and processing the event again, a retried call, the sync
    re-sending - computes the same id from the event itself, with nothing to persist before the
    charge. A caller-made UUIDv7 would have to be stored before charging, or a crash between
    making it and committing would produce a second, different id for the same boarding. The
    cloud can recompute and verify the id too. Time is truncated to the whole second so a
    re-serialised timestamp still matches; two sightings of a rider seconds apart get different
    ids and the dedupe window of the fare rules decides between them.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2025, 3, 3, 8, 0, 0, 250000, tzinfo=timezone.utc)
    >>> fare_id_for("bus-7", "12-0800", "rider-1", at) == fare_id_for("bus-7", "12-0800", "rider-1",
    ...                                                                 at.replace(microsecond=0))
    True
    """
    second = epoch_ms(at) // 1000
    return str(uuid.uuid5(FARE_ID_NAMESPACE, json.dumps([bus_id, trip_id, rider_id, second])))


def rules_digest(rules: FaresConfig) -> str:
    """A short fingerprint of the fare rules, stored with each fare for audits."""
    return hashlib.sha256(rules.model_dump_json().encode()).hexdigest()[:16]
