"""The fare rules (edge/fares/rules.py): each rule on its own, in the order quote() applies them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from edge.fares.rules import (
    Boarding,
    FaresConfig,
    Outcome,
    PastFare,
    Reason,
    RiderState,
    format_money,
    percent_of,
    quote,
    rider_message,
    service_day,
    service_week,
)
from facefare.config import ConfigError, load_config

MON_8AM = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday
RULES = FaresConfig(routes={"12": 250, "X1": 400}, default_fare_minor=None)


def q(rules: FaresConfig = RULES, route: str = "12", at: datetime = MON_8AM, kind: str = "adult",
      recent: tuple[PastFare, ...] = (), unconfirmed: int = 0, denied: bool = False, rider: str = "r1"):
    return quote(rules, Boarding(rider, route, at, kind), RiderState(recent, unconfirmed, denied))


def paid(minutes_before: int, amount: int = 250, fid: str = "f0") -> PastFare:
    return PastFare(fid, MON_8AM - timedelta(minutes=minutes_before), amount)


def test_flat_fare_per_route() -> None:
    assert (q().amount_minor, q().reason, q().outcome) == (250, Reason.PAID, Outcome.CHARGED)
    assert q(route="X1").amount_minor == 400


def test_unknown_route_refused_or_default() -> None:
    assert q(route="99").reason is Reason.UNKNOWN_ROUTE
    assert q(route="99").outcome is Outcome.REFUSED
    assert q(FaresConfig(default_fare_minor=300), route="99").amount_minor == 300


@pytest.mark.parametrize(("kind", "amount", "reason"), [
    ("adult", 250, Reason.PAID), ("child", 125, Reason.CONCESSION),
    ("senior", 125, Reason.CONCESSION), ("free", 0, Reason.FREE),
])  # fmt: skip
def test_concessions(kind: str, amount: int, reason: Reason) -> None:
    result = q(kind=kind)
    assert (result.amount_minor, result.reason) == (amount, reason)


def test_unknown_concession_refused() -> None:
    assert q(kind="student").reason is Reason.UNKNOWN_CONCESSION


def test_transfer_window() -> None:
    assert q(recent=(paid(59),), route="X1").reason is Reason.TRANSFER
    assert q(recent=(paid(60),)).amount_minor == 0  # the window is inclusive
    assert q(recent=(paid(61),)).amount_minor == 250
    # Only a *paid* boarding opens the window.
    assert q(recent=(paid(30, amount=0),)).reason is Reason.PAID
    assert q(FaresConfig(transfer_window_minutes=0), recent=(paid(10),)).reason is Reason.PAID


def test_dedupe_window() -> None:
    result = q(recent=(PastFare("f-door", MON_8AM - timedelta(seconds=30), 250),))
    assert (result.outcome, result.duplicate_of, result.amount_minor) == (Outcome.DUPLICATE, "f-door", 0)
    # A late replay of an earlier sighting is a duplicate too.
    assert q(recent=(PastFare("f-late", MON_8AM + timedelta(seconds=30), 250),)).outcome is Outcome.DUPLICATE
    assert q(recent=(PastFare("f", MON_8AM - timedelta(seconds=121), 250),)).outcome is Outcome.CHARGED


def test_daily_cap() -> None:
    three = tuple(paid(61 * i + 70, fid=f"f{i}") for i in range(3))  # 7.50 already today
    assert q(recent=three).reason is Reason.CAPPED
    assert q(recent=three).amount_minor == 0
    two = tuple(paid(61 * i + 70, fid=f"f{i}") for i in range(2))  # 5.00 today: 2.50 left
    assert q(recent=two, route="X1").amount_minor == 250
    # The cap scales with the concession: a child's cap is half.
    child = tuple(paid(61 * i + 70, amount=125, fid=f"f{i}") for i in range(3))
    assert q(recent=child, kind="child").amount_minor == 0


def test_daily_cap_resets_at_service_day_start() -> None:
    yesterday = tuple(PastFare(f"f{i}", MON_8AM - timedelta(hours=5 + i), 250) for i in range(3))  # 03:00 and before
    assert q(recent=yesterday).amount_minor == 250


def test_weekly_cap() -> None:
    rules = FaresConfig(daily_cap_minor=None, weekly_cap_minor=1000)
    week = tuple(PastFare(f"f{i}", MON_8AM + timedelta(days=1, hours=i * 2), 250) for i in range(4))
    assert q(rules, at=MON_8AM + timedelta(days=3), recent=week).reason is Reason.CAPPED
    assert q(rules, at=MON_8AM + timedelta(days=7), recent=week).amount_minor == 250  # next Monday


def test_offline_credit_limit() -> None:
    assert q(unconfirmed=2750).amount_minor == 250
    refused = q(unconfirmed=2751)
    assert (refused.outcome, refused.reason) == (Outcome.REFUSED, Reason.CREDIT_LIMIT)
    # A free ride needs no credit.
    assert q(unconfirmed=10_000, kind="free").outcome is Outcome.CHARGED


def test_deny_list_wins() -> None:
    assert q(denied=True, kind="free").reason is Reason.DENIED
    assert q(FaresConfig(deny=["r1"])).reason is Reason.DENIED
    assert q(FaresConfig(deny=["r1"]), rider="r2").reason is Reason.PAID


def test_service_days_and_weeks() -> None:
    rules = FaresConfig(timezone="Europe/Dublin", day_starts_hour=4)
    assert service_day(datetime(2025, 7, 1, 2, 30, tzinfo=UTC), rules) == date(2025, 6, 30)  # 03:30 local
    assert service_day(datetime(2025, 7, 1, 3, 30, tzinfo=UTC), rules) == date(2025, 7, 1)  # 04:30 local
    assert service_week(datetime(2025, 7, 6, 12, tzinfo=UTC), rules) == date(2025, 6, 30)
    with pytest.raises(ValueError, match="timezone-aware"):
        service_day(datetime(2025, 7, 1), rules)


def test_money_helpers() -> None:
    assert percent_of(250, 50) == 125 and percent_of(125, 50) == 63 and percent_of(999, 100) == 999
    assert format_money(250, "EUR") == "EUR 2.50"
    assert format_money(1500, "JPY") == "JPY 1500"
    assert format_money(1005, "KWD") == "KWD 1.005"
    assert rider_message(Reason.CONCESSION, 125, "EUR", "child") == "Paid EUR 1.25 (child fare). Have a good trip!"
    assert "no charge" in rider_message(Reason.CAPPED, 0, "EUR")


@pytest.mark.parametrize("bad", [
    {"currency": "euro"}, {"concessions": {"child": 50}}, {"concessions": {"adult": 100, "free": 10}},
    {"concessions": {"adult": 120}}, {"routes": {"12": -1}}, {"timezone": "Mars/Olympus"},
    {"transfer_window_minutes": -5}, {"colour": "red"},
])  # fmt: skip
def test_invalid_rules_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FaresConfig(**bad)


def test_rules_in_config_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bus.toml"
    path.write_text('[fares]\ncurrency = "GBP"\ndaily_cap_minor = 500\n[fares.routes]\n"12" = 180\n'
                    '[ledger]\nbus_id = "bus-7"\n')
    monkeypatch.setenv("FACEFARE_FARES__TRANSFER_WINDOW_MINUTES", "90")
    cfg = load_config(path)
    assert (cfg.fares.currency, cfg.fares.routes, cfg.fares.daily_cap_minor) == ("GBP", {"12": 180}, 500)
    assert cfg.fares.transfer_window_minutes == 90
    assert cfg.ledger.bus_id == "bus-7"
    assert cfg.ledger.resolve_path(tmp_path) == tmp_path / "ledger.db"
    path.write_text("[fares]\ndaily_cap_minor = 7.5\n")
    with pytest.raises(ConfigError, match=r"fares\.daily_cap_minor"):
        load_config(path)


def test_docs_example_configuration_loads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TOML example of docs/fares.md is a valid configuration, and env overrides reach dicts."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "fares.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "bus.toml").write_text(example)
    monkeypatch.setenv("FACEFARE_FARES__ROUTES", '{"12": 260}')
    cfg = load_config(tmp_path / "bus.toml")
    assert cfg.fares.timezone == "Europe/Dublin" and cfg.fares.concessions["child"] == 50
    assert cfg.fares.routes == {"12": 260, "X1": 400}  # merged into the file's routes
    assert cfg.ledger.bus_id == "bus-017"
