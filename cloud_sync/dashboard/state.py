"""The fleet as the dashboard sees it: a pure model fed by validated protocol envelopes.

:class:`FleetState` knows nothing of MQTT or HTTP. The feed hands it envelopes that
:func:`cloud_sync.protocol.parse` accepted (:meth:`FleetState.apply`) and the topics of those it
refused (:meth:`FleetState.reject`); the web app asks it for a JSON-ready :meth:`FleetState.snapshot`.
Every method takes the time as ``now_ms`` so tests can drive the clock. Money stays integer
minor units per currency; only the snapshot adds display strings (``edge.fares.rules.format_money``).
No face image ever reaches this model: the protocol has no field for one.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.protocol import REJECT_REASONS, DecisionEvent, Envelope, Fares, Heartbeat, Offline, bus_of_topic
from edge.fares.rules import FaresConfig, format_money, service_day

#: Refusals that mean someone tried to speak for a bus (as opposed to a broken or late message).
FORGERY_REASONS = frozenset({"signature", "unknown_sender", "topic", "replay"})
#: At most this many (bus, reason) reject counters; more distinct topics are counted under OTHER.
MAX_REJECT_KEYS = 1000
OTHER = "(other)"

Money = dict[str, int]  # currency -> integer minor units


def _add(money: Money, currency: str, amount_minor: int) -> None:
    money[currency] = money.get(currency, 0) + amount_minor


def _show(money: Money) -> list[dict[str, Any]]:
    return [{"currency": c, "minor": m, "text": format_money(m, c)} for c, m in sorted(money.items())]


#: A bus clock further off than this (ms) is an alert: its fares still sync, but their times are suspect.
CLOCK_SKEW_ALERT_MS = 60_000


@dataclass
class BusView:
    """What the dashboard knows of one bus, from its last heartbeat and its messages."""

    bus_id: str
    last_seen_ms: int | None = None
    offline_will_ms: int | None = None  # when the last will (or an explicit offline) arrived
    status_sent_ms: int = -1  # sent_ms of the newest heartbeat applied
    outbox_backlog: int = 0
    backlogs: deque[int] = field(default_factory=deque)
    oldest_unsent_ms: int | None = None
    gallery_version: int = 0
    pending_erasures: int = 0
    camera_ok: bool = True
    camera_detail: str = ""
    disk_ok: bool = True
    disk_detail: str = ""
    disk_free_bytes: int | None = None
    route_id: str = ""
    clock_skew_ms: int | None = None  # the bus's clock minus this one's (its own measure, else ours)
    sync_ok: bool = True
    sync_detail: str = ""
    clock_ok: bool = True  # the bus found no step of its own wall clock
    clock_detail: str = ""

    def offline_since(self, now_ms: int, offline_after_ms: int) -> int | None:
        """When the bus went offline (its will, or its last sign of life plus the timeout); None if online."""
        if self.offline_will_ms is not None:
            return self.offline_will_ms
        if self.last_seen_ms is None:
            return None  # registered but never heard from: shown as unknown, no alert
        if now_ms - self.last_seen_ms > offline_after_ms:
            return self.last_seen_ms + offline_after_ms
        return None


@dataclass
class DayTotals:
    """One service day's fares, counted once each by fare id."""

    fare_ids: set[str] = field(default_factory=set)
    by_bus: dict[str, Money] = field(default_factory=dict)
    by_route: dict[str, Money] = field(default_factory=dict)
    count_by_bus: Counter[str] = field(default_factory=Counter)
    count_by_route: Counter[str] = field(default_factory=Counter)
    buckets: dict[int, Money] = field(default_factory=dict)  # bucket start ms -> money
    total: Money = field(default_factory=dict)


#: Most door waits kept per bus and service day for the medians and p95s (the newest are kept).
MAX_WAITS = 5000


@dataclass
class DoorDay:
    """One bus's door on one service day: decisions by action and reason, waits, smile attempts."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, reason) -> decisions
    waits_ms: deque[int] = field(default_factory=lambda: deque(maxlen=MAX_WAITS))
    smiles_charged: int = 0  # smile attempts counted on charged boardings that reported them
    charges_with_smiles: int = 0
    recent: deque[tuple[int, bool]] = field(default_factory=lambda: deque(maxlen=100_000))  # (at_ms, charged)
    hours: Counter[tuple[int, str]] = field(default_factory=Counter)  # (hour start ms, action) -> decisions

    def add(self, d: DecisionEvent) -> None:
        self.outcomes[d.action, d.reason[:40]] += 1
        self.hours[d.at_ms - d.at_ms % 3_600_000, d.action] += 1
        if d.wait_ms is not None:
            self.waits_ms.append(d.wait_ms)
        if d.action == "charge" and d.smile_attempts is not None:
            self.smiles_charged += d.smile_attempts
            self.charges_with_smiles += 1
        self.recent.append((d.at_ms, d.action == "charge"))


def _quantile(values: list[int], q: float) -> float | None:
    """The q-quantile of ``values`` (nearest rank), or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def door_kpis(days: list[DoorDay]) -> dict[str, Any]:
    """The door KPIs of one or more bus-days, JSON-ready: counts, rates, waits in seconds."""
    outcomes: Counter[tuple[str, str]] = Counter()
    waits: list[int] = []
    smiles = charges_with_smiles = 0
    for day in days:
        outcomes.update(day.outcomes)
        waits.extend(day.waits_ms)
        smiles += day.smiles_charged
        charges_with_smiles += day.charges_with_smiles
    by_action: Counter[str] = Counter()
    for (action, _reason), n in outcomes.items():
        by_action[action] += n
    hours: dict[int, Counter[str]] = {}
    for day in days:
        for (start, action), n in day.hours.items():
            hours.setdefault(start, Counter())[action] += n
    boardings = sum(by_action.values())
    p50, p95 = _quantile(waits, 0.5), _quantile(waits, 0.95)
    return {
        "boardings": boardings,
        "charged": by_action["charge"],
        "refused": by_action["refuse"],
        "see_driver": by_action["see_driver"],
        "by_reason": [{"action": a, "reason": r, "count": n} for (a, r), n in sorted(outcomes.items())
                      if a != "charge"],  # fmt: skip
        "see_driver_rate": by_action["see_driver"] / boardings if boardings else None,
        "not_charged_rate": (boardings - by_action["charge"]) / boardings if boardings else None,
        "wait_p50_s": None if p50 is None else p50 / 1000,
        "wait_p95_s": None if p95 is None else p95 / 1000,
        "smile_attempts_per_charge": smiles / charges_with_smiles if charges_with_smiles else None,
        "hours": [{"start_ms": h, "boardings": sum(c.values()), "charged": c["charge"], "refused": c["refuse"],
                   "see_driver": c["see_driver"]} for h, c in sorted(hours.items())],  # fmt: skip
    }


@dataclass(frozen=True)
class Alert:
    """Something a fleet admin should look at. ``stamp`` changes when the situation changes,
    so an acknowledgement covers only the situation that was acknowledged."""

    id: str
    kind: Literal["offline", "backlog", "erasures", "rejected", "camera", "disk", "sync", "clock", "refusals"]
    severity: Literal["critical", "warning"]
    bus_id: str
    message: str
    stamp: int
    acknowledged: bool = False


class FleetState:
    """The fleet picture. Thread-safe: the MQTT thread writes while web requests read."""

    def __init__(
        self,
        config: DashboardConfig | None = None,
        rules: FaresConfig | None = None,
        known_buses: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.config = config or DashboardConfig()
        self.rules = rules or FaresConfig()
        self.buses: dict[str, BusView] = {b: BusView(b) for b in known_buses}
        self.days: dict[str, DayTotals] = {}
        self.doors: dict[str, dict[str, DoorDay]] = {}  # service day -> bus -> door KPIs
        self.decisions: deque[dict[str, Any]] = deque(maxlen=self.config.recent_decisions)
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.acks: dict[str, int] = {}
        self.version = 0  # bumped on every change; the live stream watches it
        self._lock = threading.RLock()

    # -- input ---------------------------------------------------------------------------

    def today(self, now_ms: int) -> str:
        return service_day(datetime.fromtimestamp(now_ms / 1000, UTC), self.rules).isoformat()

    def _bus(self, bus_id: str) -> BusView:
        if bus_id not in self.buses:
            self.buses[bus_id] = BusView(bus_id)
        return self.buses[bus_id]

    def apply(self, env: Envelope, now_ms: int, *, retained: bool = False) -> None:
        """Take in one envelope that ``protocol.parse`` accepted.

        ``retained`` marks a message the broker kept (a status delivered on subscribe): the bus
        was last seen when it sent it, not now.
        """
        with self._lock:
            bus = self._bus(env.sender)
            seen = min(env.sent_ms, now_ms) if retained else now_ms
            body = env.body
            if isinstance(body, Offline):
                bus.offline_will_ms = seen
            elif isinstance(body, Heartbeat):
                if env.sent_ms < bus.status_sent_ms:
                    return  # an older heartbeat overtaken by a newer one
                bus.status_sent_ms = env.sent_ms
                self._heartbeat(bus, body, seen)
                if body.clock_skew_ms is not None:
                    bus.clock_skew_ms = body.clock_skew_ms
                elif not retained:
                    bus.clock_skew_ms = env.sent_ms - now_ms
            else:
                bus.last_seen_ms = max(bus.last_seen_ms or 0, seen)
                if isinstance(body, Fares):
                    self._fares(body, now_ms)
                elif isinstance(body, DecisionEvent):
                    self._decision(env.sender, body)
            self.version += 1

    def _heartbeat(self, bus: BusView, hb: Heartbeat, seen: int) -> None:
        bus.last_seen_ms = max(bus.last_seen_ms or 0, seen)
        bus.offline_will_ms = None if hb.online else seen
        bus.outbox_backlog = hb.outbox_backlog
        bus.backlogs.append(hb.outbox_backlog)
        while len(bus.backlogs) > self.config.backlog_rising_beats:
            bus.backlogs.popleft()
        bus.oldest_unsent_ms = hb.oldest_unsent_ms
        bus.gallery_version = hb.gallery_version
        bus.pending_erasures = hb.pending_erasures
        bus.camera_ok, bus.camera_detail = hb.camera.ok, hb.camera.detail
        bus.disk_ok, bus.disk_detail = hb.disk.ok, hb.disk.detail
        bus.disk_free_bytes = hb.disk_free_bytes
        bus.route_id = hb.route_id or bus.route_id
        if hb.sync is not None:
            bus.sync_ok, bus.sync_detail = hb.sync.ok, hb.sync.detail
        if hb.clock is not None:
            bus.clock_ok, bus.clock_detail = hb.clock.ok, hb.clock.detail

    def _fares(self, body: Fares, now_ms: int) -> None:
        bucket_ms = self.config.chart_bucket_s * 1000
        for fare in body.fares:
            day = self.days.setdefault(fare.service_day, DayTotals())
            if fare.fare_id in day.fare_ids:
                continue  # the bus sends a fare again until the cloud acknowledges it
            day.fare_ids.add(fare.fare_id)
            _add(day.by_bus.setdefault(fare.bus_id, {}), fare.currency, fare.amount_minor)
            _add(day.by_route.setdefault(fare.route_id, {}), fare.currency, fare.amount_minor)
            _add(day.buckets.setdefault(fare.boarded_ms - fare.boarded_ms % bucket_ms, {}), fare.currency,
                 fare.amount_minor)  # fmt: skip
            _add(day.total, fare.currency, fare.amount_minor)
            day.count_by_bus[fare.bus_id] += 1
            day.count_by_route[fare.route_id] += 1
        # Keep today and yesterday only (ISO dates sort as strings).
        for old in sorted(self.days)[:-2]:
            if old < self.today(now_ms):
                del self.days[old]

    def _decision(self, bus_id: str, d: DecisionEvent) -> None:
        day = self.today(d.at_ms)
        self.doors.setdefault(day, {}).setdefault(bus_id, DoorDay()).add(d)
        for old in sorted(self.doors)[:-2]:  # today and yesterday only
            if old < day:
                del self.doors[old]
        amount = format_money(d.amount_minor, d.currency) if d.currency else ""
        self.decisions.appendleft({
            "at_ms": d.at_ms, "bus_id": bus_id, "action": d.action, "reason": d.reason,
            "rider_id": d.rider_id, "amount_minor": d.amount_minor, "currency": d.currency, "amount": amount,
        })  # fmt: skip

    def reject(self, topic: str, reason: str) -> None:
        """Count one refused message under the bus its topic names (the sender is unproven)."""
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        with self._lock:
            bus = bus_of_topic(topic) or OTHER
            if (bus, reason) not in self.rejects and len(self.rejects) >= MAX_REJECT_KEYS:
                bus = OTHER
            self.rejects[bus, reason] += 1
            self.version += 1

    def acknowledge(self, alert_id: str, now_ms: int) -> bool:
        """Mark the current situation of an alert as seen by an admin; False if no such alert."""
        with self._lock:
            for alert in self.alerts(now_ms):
                if alert.id == alert_id:
                    self.acks[alert_id] = alert.stamp
                    self.version += 1
                    return True
            return False

    # -- output --------------------------------------------------------------------------

    def alerts(self, now_ms: int) -> list[Alert]:
        """Current alerts, the most serious first."""
        cfg = self.config
        out: list[Alert] = []
        with self._lock:
            for b in self.buses.values():
                since = b.offline_since(now_ms, cfg.offline_after_s * 1000)
                if since is not None:
                    how = "last will received" if b.offline_will_ms is not None else "no heartbeat"
                    mins = max(0, now_ms - since) // 60_000
                    out.append(Alert(f"offline:{b.bus_id}", "offline", "critical", b.bus_id,
                                     f"{b.bus_id} offline for {mins} min ({how})", since))  # fmt: skip
                    continue  # its other figures are as old as its last heartbeat
                beats = list(b.backlogs)
                if (
                    len(beats) >= cfg.backlog_rising_beats
                    and all(x <= y for x, y in zip(beats, beats[1:], strict=False))
                    and beats[-1] > beats[0]
                    and beats[-1] > cfg.backlog_alert_min
                ):
                    out.append(Alert(f"backlog:{b.bus_id}", "backlog", "warning", b.bus_id,
                                     f"{b.bus_id} outbox backlog growing: {' -> '.join(map(str, beats))} fares",
                                     beats[-1]))  # fmt: skip
                if b.pending_erasures:
                    out.append(Alert(f"erasures:{b.bus_id}", "erasures", "warning", b.bus_id,
                                     f"{b.bus_id} has {b.pending_erasures} erasure(s) not yet applied",
                                     b.pending_erasures))  # fmt: skip
                if not b.camera_ok:
                    out.append(Alert(f"camera:{b.bus_id}", "camera", "critical", b.bus_id,
                                     f"{b.bus_id} camera fault: {b.camera_detail or 'no detail'}", 1))  # fmt: skip
                if not b.disk_ok:
                    out.append(Alert(f"disk:{b.bus_id}", "disk", "critical", b.bus_id,
                                     f"{b.bus_id} disk fault: {b.disk_detail or 'no detail'}", 1))  # fmt: skip
                if not b.sync_ok:
                    out.append(Alert(f"sync:{b.bus_id}", "sync", "critical", b.bus_id,
                                     f"{b.bus_id} sync failing: {b.sync_detail or 'no detail'}", 1))  # fmt: skip
                if not b.clock_ok:
                    out.append(Alert(f"clockstep:{b.bus_id}", "clock", "critical", b.bus_id,
                                     f"{b.bus_id} clock fault: {b.clock_detail or 'no detail'}", 1))  # fmt: skip
                if b.clock_skew_ms is not None and abs(b.clock_skew_ms) > CLOCK_SKEW_ALERT_MS:
                    out.append(Alert(f"clock:{b.bus_id}", "clock", "warning", b.bus_id,
                                     f"{b.bus_id} clock is {b.clock_skew_ms / 1000:+.0f} s off", 1))  # fmt: skip
            out += self._refusal_alerts(now_ms)
            by_bus: dict[str, Counter[str]] = {}
            for (bus_id, reason), n in self.rejects.items():
                by_bus.setdefault(bus_id, Counter())[reason] += n
            for bus_id, reasons in sorted(by_bus.items()):
                total = sum(reasons.values())
                forged = any(r in FORGERY_REASONS for r in reasons)
                detail = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
                word = "forged or rejected" if forged else "rejected"
                out.append(Alert(f"rejected:{bus_id}", "rejected", "critical" if forged else "warning", bus_id,
                                 f"{total} {word} message(s) on {bus_id}'s topics: {detail}", total))  # fmt: skip
            out = [
                Alert(a.id, a.kind, a.severity, a.bus_id, a.message, a.stamp, self.acks.get(a.id) == a.stamp)
                for a in out
            ]
        out.sort(key=lambda a: (a.acknowledged, a.severity != "critical", a.bus_id, a.kind))
        return out

    def _refusal_alerts(self, now_ms: int) -> list[Alert]:
        """A bus whose share of boardings not charged over the last hour is out of line with the
        rest of the fleet today (a dirty lens, bad light): at least ``refusal_alert_rate`` and
        ``refusal_alert_factor`` times the others' share, over ``refusal_alert_min_boardings``."""
        cfg = self.config
        doors = self.doors.get(self.today(now_ms), {})
        out = []
        for bus_id, door in sorted(doors.items()):
            while door.recent and door.recent[0][0] < now_ms - 3_600_000:
                door.recent.popleft()
            recent = list(door.recent)
            if len(recent) < cfg.refusal_alert_min_boardings:
                continue
            share = sum(not charged for _, charged in recent) / len(recent)
            others = [d for b, d in doors.items() if b != bus_id]
            total = sum(sum(d.outcomes.values()) for d in others)
            not_charged = total - sum(n for d in others for (a, _r), n in d.outcomes.items() if a == "charge")
            fleet = not_charged / total if total else None
            if share >= cfg.refusal_alert_rate and fleet is not None and share >= cfg.refusal_alert_factor * fleet:
                out.append(Alert(f"refusals:{bus_id}", "refusals", "warning", bus_id,
                                 f"{bus_id} did not charge {share:.0%} of {len(recent)} boardings in the last hour "
                                 f"(rest of the fleet today: {fleet:.0%}): check the camera's lens and light",
                                 round(share * 10)))  # fmt: skip
        return out

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """Everything the page shows, JSON-ready, as of ``now_ms``."""
        cfg = self.config
        with self._lock:
            today = self.today(now_ms)
            day = self.days.get(today, DayTotals())
            buses = []
            for b in sorted(self.buses.values(), key=lambda b: b.bus_id):
                since = b.offline_since(now_ms, cfg.offline_after_s * 1000)
                state = "offline" if since is not None else ("unknown" if b.last_seen_ms is None else "online")
                buses.append({
                    "bus_id": b.bus_id, "state": state, "last_seen_ms": b.last_seen_ms,
                    "outbox_backlog": b.outbox_backlog, "oldest_unsent_ms": b.oldest_unsent_ms,
                    "gallery_version": b.gallery_version, "pending_erasures": b.pending_erasures,
                    "camera": {"ok": b.camera_ok, "detail": b.camera_detail},
                    "disk": {"ok": b.disk_ok, "detail": b.disk_detail, "free_bytes": b.disk_free_bytes},
                    "route_id": b.route_id, "clock_skew_ms": b.clock_skew_ms,
                    "sync": {"ok": b.sync_ok, "detail": b.sync_detail},
                    "fares_today": day.count_by_bus.get(b.bus_id, 0),
                    "revenue_today": _show(day.by_bus.get(b.bus_id, {})),
                })  # fmt: skip
            doors = self.doors.get(today, {})
            door = {
                "fleet": door_kpis(list(doors.values())),
                "buses": [{"bus_id": bus_id, **door_kpis([d])} for bus_id, d in sorted(doors.items())],
            }
            routes = [
                {"route_id": r, "fares_today": day.count_by_route[r], "revenue_today": _show(m)}
                for r, m in sorted(day.by_route.items())
            ]
            chart = [{"start_ms": t, "money": _show(m)} for t, m in sorted(day.buckets.items())]
            rejects = [{"bus_id": b, "reason": r, "count": n} for (b, r), n in sorted(self.rejects.items())]
            return {
                "now_ms": now_ms,
                "version": self.version,
                "service_day": today,
                "online": sum(b["state"] == "online" for b in buses),
                "buses": buses,
                "routes": routes,
                "fares_today": len(day.fare_ids),
                "revenue_today": _show(day.total),
                "chart": {"bucket_s": cfg.chart_bucket_s, "points": chart},
                "decisions": list(self.decisions),
                "door": door,
                "rejects": rejects,
                "alerts": [asdict(a) for a in self.alerts(now_ms)],
            }
