"""The fleet dashboard in real Chromium, fed by a real Mosquitto: log in, three buses, a fare live, an offline bus.

Chromium is Debian's (``scripts/install-servers.sh``), driven by Playwright's Python package with its
executable path (no downloaded browser). Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from datetime import time as dt_time
from pathlib import Path

import pytest

from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.devservers.mosquitto_server import MosquittoServer
from cloud_sync.protocol import Envelope, Heartbeat, encode, generate_key, now_ms, topic_for
from facefare.demo.fleet import DemoFleet
from tests.servers import BUSES, chromium_path

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path, BUSES, config=DashboardConfig(offline_after_s=30), broker=mosquitto) as fleet:
        fleet.add_user("admin", "admin", "fleet admin pw")
        yield fleet


@pytest.fixture
def page(fleet: DemoFleet):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_path()), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(fleet.server.url) else outside.append(r.url))
        yield page
        browser.close()
        assert outside == [], "the page fetched something from another origin"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"dashboard_{name}.png"), full_page=True)


def test_fleet_dashboard_live_in_chromium(fleet: DemoFleet, page) -> None:
    from playwright.sync_api import expect

    for i, bus in enumerate(BUSES):
        fleet.buses[bus].heartbeat(outbox_backlog=i, gallery_version=3, route_id="12", disk_free_bytes=8 * 10**9)

    # Anonymous: only the login page.
    page.goto(fleet.server.url)
    expect(page).to_have_url(fleet.server.url + "login")
    page.fill("#username", "admin")
    page.fill("#password", "wrong password")
    page.click("#login")
    expect(page.locator(".error")).to_have_text("Wrong user name or password.")
    shot(page, "1_login_refused")
    page.fill("#username", "admin")
    page.fill("#password", "fleet admin pw")
    page.click("#login")
    expect(page).to_have_url(fleet.server.url)

    # Three buses online, live.
    expect(page.locator("#live")).to_have_text("live")
    for bus in BUSES:
        expect(page.locator(f"#bus-{bus} td").nth(1)).to_have_text("online")
    expect(page.locator("#summary")).to_contain_text("3 of 3 buses online")
    shot(page, "2_three_buses")

    # A fare published to Mosquitto is on the page within 2 s, without a reload.
    now = now_ms()
    fare = {
        "fare_id": str(uuid.uuid4()), "bus_id": "bus-2", "trip_id": "trip-1", "route_id": "12", "rider_id": "rider-7",
        "concession": "adult", "boarded_at": "", "boarded_ms": now, "service_day": fleet.state.today(now),
        "amount_minor": 250, "base_minor": 250, "currency": "EUR", "reason": "paid", "rules_digest": "demo",
        "recorded_at": "",
    }  # fmt: skip
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    started = time.monotonic()
    fleet.buses["bus-2"].fares([fare])
    expect(page.locator("#bus-bus-2 td").nth(10)).to_have_text("EUR 2.50", timeout=2000)
    fare_seen_s = time.monotonic() - started
    expect(page.locator("#revenue-today")).to_have_text("EUR 2.50")
    expect(page.locator("#routes tbody td")).to_have_text(["12", "1", "EUR 2.50"])
    expect(page.locator("#chart rect")).to_have_count(1)
    fleet.buses["bus-2"].decision(at_ms=now, action="charge", reason="matched", rider_id="rider-7",
                                  fare_id=fare["fare_id"], amount_minor=250, currency="EUR")  # fmt: skip
    expect(page.locator("#decisions tbody tr").first).to_contain_text("matched")
    assert page.evaluate("window.loadedOnce") is True
    assert page.locator("img").count() == 0  # no face images, ever
    shot(page, "3_fare_live")
    print(f"fare on the page {fare_seen_s * 1000:.0f} ms after publishing")
    assert fare_seen_s < 2.0

    # A bus drops off: the broker publishes its last will and the page raises the alert.
    fleet.buses.pop("bus-3").drop()
    alert = page.locator('#alerts li[data-alert="offline:bus-3"]')
    expect(alert).to_contain_text("bus-3 offline", timeout=5000)
    expect(page.locator("#bus-bus-3 td").nth(1)).to_have_text("offline")
    # Someone without bus-1's key speaks for bus-1: refused, counted, alerted.
    forged = encode(Envelope.make("heartbeat", "bus-1", Heartbeat(outbox_backlog=0)), generate_key())
    fleet.buses["bus-1"].client.publish(topic_for("heartbeat", "bus-1"), forged, qos=1).wait_for_publish(5)
    expect(page.locator('#alerts li[data-alert="rejected:bus-1"]')).to_contain_text("signature 1")
    expect(page.locator("#bus-bus-1 td").nth(1)).to_have_text("online")  # the forgery changed nothing
    shot(page, "4_bus_offline_alert")

    # An admin acknowledges the offline alert.
    alert.get_by_role("button", name="Acknowledge").click()
    expect(alert).to_contain_text("acknowledged")
    shot(page, "5_acknowledged")


def test_door_kpis_and_refusal_alert_in_chromium(fleet: DemoFleet, page) -> None:
    """Decisions of a morning on three buses; bus-3's lens is dirty: half its riders are not charged."""
    from playwright.sync_api import expect

    for bus in BUSES:
        fleet.buses[bus].heartbeat(outbox_backlog=0, gallery_version=3, route_id="12", disk_free_bytes=8 * 10**9)
    now = now_ms()
    plan = {  # (action, reason, wait_ms, smile attempts) per boarding
        "bus-1": [("charge", "matched", 1800 + 100 * i, 1 + (i % 3 == 0)) for i in range(24)]
        + [("see_driver", "attempts", 9000, 3)],
        "bus-2": [("charge", "matched", 2100 + 150 * i, 1) for i in range(20)] + [("refuse", "unknown", 2600, 1)],
        "bus-3": [("charge", "matched", 3500 + 200 * i, 2) for i in range(12)]
        + [("refuse", "unknown", 4200, 1)] * 6 + [("see_driver", "frozen", 5200, 0)] * 3
        + [("see_driver", "ambiguous", 8000, 1)] * 3,
    }  # fmt: skip
    # Over the morning (at most 3 hours, and within today's service day); bus-3 within the last hour.
    day_start = int(datetime.combine(date.fromisoformat(fleet.state.today(now)),
                                     dt_time(fleet.state.rules.day_starts_hour), UTC).timestamp() * 1000)  # fmt: skip
    for bus, decisions in plan.items():
        span = 3_000_000 if bus == "bus-3" else 3 * 3_600_000
        begin = max(day_start + 1000, now - span)
        for i, (action, reason, wait_ms, smiles) in enumerate(decisions):
            rider = "rider-7" if action == "charge" else None
            at = begin + (now - 1000 - begin) * i // len(decisions)
            fleet.buses[bus].decision(at_ms=at, action=action, reason=reason, wait_ms=wait_ms,
                                      smile_attempts=smiles, rider_id=rider)  # fmt: skip

    page.goto(fleet.server.url)
    page.fill("#username", "admin")
    page.fill("#password", "fleet admin pw")
    page.click("#login")
    expect(page.locator("#live")).to_have_text("live")
    row3 = page.locator("#door-bus-3 td")
    expect(row3.nth(1)).to_have_text("24", timeout=5000)  # every decision arrived
    expect(page.locator("#door-bus-1 td").nth(1)).to_have_text("25")
    expect(page.locator("#door-bus-2 td").nth(1)).to_have_text("21")
    # bus-3: 12 charged, 6 refused, 6 to the driver; wait median 4.5 s (nearest rank); 2 smiles per charge.
    expect(row3).to_have_text(["bus-3", "24", "12", "6", "6", "25.0 %", "50.0 %", "4.5 s", "8.0 s", "2.00",
                               "unknown 6, ambiguous 3, frozen 3"])  # fmt: skip
    expect(page.locator("#door-bus-3 td.bad")).to_have_count(1)  # its not-charged share is marked
    fleet_line = page.locator("#door-fleet")
    expect(fleet_line).to_contain_text("Fleet: 70 boardings, 56 charged, 7 refused, 7 sent to the driver")
    alert = page.locator('#alerts li[data-alert="refusals:bus-3"]')
    expect(alert).to_contain_text("bus-3 did not charge 50% of 24 boardings")
    expect(page.locator('#alerts li[data-alert^="refusals:"]')).to_have_count(1)  # the others are in line
    assert page.locator("#door").inner_text().count("rider-7") == 0  # KPIs never name a rider
    expect(page.locator("#door-hours rect.refused").first).to_be_visible()  # the day's boardings per hour
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#door-section").screenshot(path=str(SHOTS / "dashboard_6_door_kpis.png"))
    page.locator("#alerts-section").screenshot(path=str(SHOTS / "dashboard_7_refusal_alert.png"))
    shot(page, "8_door_kpis_full")
