"""A demo fleet for the dashboard: an embedded Mosquitto, the dashboard, and signed publishers for demo buses.

:class:`BusPublisher` speaks for one bus the way the bus does: its own broker credential and
Ed25519 key, a retained heartbeat, its fares and door decisions, and a signed last will that the
broker publishes when the bus drops off. ``facefare demo --dashboard`` and the browser test use
:class:`DemoFleet`; a real fleet runs ``facefare dashboard run`` against its own broker instead.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync import mqtt
from cloud_sync.dashboard.auth import Sessions, UserStore, load_secret
from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.dashboard.feed import FleetFeed
from cloud_sync.dashboard.state import FleetState
from cloud_sync.devservers.mosquitto_server import MosquittoServer
from cloud_sync.protocol import (
    DecisionEvent,
    Envelope,
    Fare,
    Fares,
    Heartbeat,
    Offline,
    Strict,
    encode,
    generate_key,
    now_ms,
    topic_for,
)
from edge.fares.rules import FaresConfig

log = logging.getLogger(__name__)


class BusPublisher:
    """One bus's signed messages over its own MQTT connection (with its last will set)."""

    def __init__(self, bus_id: str, key: Ed25519PrivateKey, cfg: mqtt.MqttConfig) -> None:
        self.bus_id = bus_id
        self.key = key
        self.status: dict[str, Any] = {}
        will = (topic_for("offline", bus_id), self._encode("offline", Offline()), 1, True)
        self.client = mqtt.connect(cfg, bus_id, clean_start=True, will=will)

    def _encode(self, msg_type: str, body: Strict) -> bytes:
        return encode(Envelope.make(msg_type, self.bus_id, body), self.key)

    def publish(self, msg_type: str, body: Strict, *, retain: bool = False, timeout_s: float = 5.0) -> None:
        """Sign and publish one message (QoS 1) and wait until the broker has it."""
        info = self.client.publish(topic_for(msg_type, self.bus_id), self._encode(msg_type, body), qos=1, retain=retain)
        info.wait_for_publish(timeout_s)

    def heartbeat(self, **fields: Any) -> None:
        """Publish the retained status; fields left out keep their last published value."""
        self.status = {"outbox_backlog": 0, **self.status, **fields}
        self.publish("heartbeat", Heartbeat(**self.status), retain=True)

    def fares(self, fares: Sequence[dict[str, Any]]) -> None:
        """Publish ledger fare rows (``Ledger.outbox()`` payloads) in messages of at most 200."""
        rows = [Fare(**f) for f in fares]
        for i in range(0, len(rows), 200):
            self.publish("fares", Fares(fares=rows[i : i + 200]))

    def decision(self, **fields: Any) -> None:
        self.publish("decision", DecisionEvent(**fields))

    def drop(self) -> None:
        """Leave as a crashed bus would: the broker publishes this bus's last will."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        """Leave cleanly (no will); the retained heartbeat stays."""
        self.client.disconnect()
        self.client.loop_stop()


class DemoFleet:
    """A Mosquitto, the dashboard (broker feed, web server) and one :class:`BusPublisher` per bus.

    Each bus gets a fresh Ed25519 key; the dashboard trusts exactly those keys."""

    def __init__(
        self,
        workdir: Path,
        buses: Sequence[str],
        *,
        config: DashboardConfig | None = None,
        rules: FaresConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        broker: MosquittoServer | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.bus_ids = list(buses)
        self.config = config or DashboardConfig()
        self.keys = {b: generate_key() for b in self.bus_ids}
        # A broker passed in (with credentials for these buses) is started and stopped by its owner.
        self.own_broker = broker is None
        self.broker = broker or MosquittoServer(self.workdir / "broker", self.bus_ids)
        self.state = FleetState(self.config, rules, known_buses=self.bus_ids)
        public = {b: k.public_key() for b, k in self.keys.items()}
        self.feed = FleetFeed(self.state, public.get)
        self.users = UserStore(self.workdir / "users.json")
        self.host, self.port = host, port
        self.buses: dict[str, BusPublisher] = {}
        self.server: Any = None
        self._stopping = threading.Event()

    def add_user(self, name: str, role: str = "admin", password: str | None = None) -> str:
        """Create a dashboard login; returns its password (random unless given)."""
        password = password or secrets.token_urlsafe(12)
        self.users.set_user(name, password, role)  # type: ignore[arg-type]
        return password

    def start(self) -> str:
        """Start the broker, the dashboard and the bus connections; return the dashboard's URL."""
        from cloud_sync.dashboard.app import DashboardServer, create_app

        self._stopping.clear()
        sessions = Sessions(load_secret(self.workdir / "session.key"), self.config.session_hours * 3600)
        app = create_app(self.state, self.users, sessions, cookie_secure=self.config.cookie_secure)
        self.server = DashboardServer(app, self.host, self.port)  # binds first: a taken port fails early
        try:
            if self.own_broker:
                self.broker.start()
            self.feed.start(self.broker.config_for("dashboard"), "dashboard")
            self.feed.wait_subscribed()
            url = self.server.start()
            for bus in self.bus_ids:
                self.buses[bus] = BusPublisher(bus, self.keys[bus], self.broker.config_for(bus))
        except BaseException:
            self.stop()
            raise
        log.info("demo fleet: broker %s:%d, dashboard %s, buses %s", self.broker.host, self.broker.port, url,
                 ", ".join(self.bus_ids))  # fmt: skip
        return url

    def keep_alive(self, interval_s: float = 10.0) -> None:
        """Repeat every connected bus's last heartbeat every ``interval_s`` until :meth:`stop`."""

        def beat() -> None:
            while not self._stopping.wait(interval_s):
                for bus in list(self.buses.values()):
                    try:
                        bus.heartbeat()
                    except Exception:  # a dropped bus, or the broker going away at stop
                        log.debug("no heartbeat for %s", bus.bus_id, exc_info=True)

        threading.Thread(target=beat, name="demo-heartbeats", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        for bus in self.buses.values():
            try:
                bus.close()
            except Exception:  # a bus already dropped
                log.debug("bus %s already gone", bus.bus_id)
        self.buses.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.feed.stop()
        if self.own_broker:
            self.broker.stop()

    def __enter__(self) -> DemoFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- facefare demo --dashboard ---------------------------------------------------------------------

DEMO_BUS = "demo-bus"  # the bus id facefare.demo.photos.run_bus_demo records its fares under


def start_demo_dashboard(cfg: Any, workdir: Path) -> tuple[DemoFleet, str]:
    """An embedded broker and the dashboard for the demo bus; returns the fleet and the admin password.

    Listens on ``dashboard.host``/``dashboard.port`` (any free port if that one is taken).
    """
    shutil.rmtree(Path(workdir) / "broker", ignore_errors=True)  # a fresh broker: no retained status of old keys
    fleet = DemoFleet(workdir, [DEMO_BUS], config=cfg.dashboard, rules=cfg.fares, host=cfg.dashboard.host,
                      port=cfg.dashboard.port)  # fmt: skip
    password = fleet.add_user("admin", "admin")
    try:
        fleet.start()
    except OSError as exc:
        log.warning("dashboard port %d is taken (%s); using a free port", cfg.dashboard.port, exc)
        fleet.port = 0
        fleet.start()
    fleet.buses[DEMO_BUS].heartbeat(outbox_backlog=0, route_id=cfg.pipeline.route_id)
    fleet.keep_alive()  # the demo bus stays online while the clip plays and after
    return fleet, password


def publish_demo_bus(fleet: DemoFleet, result: dict[str, Any], ledger_path: Path, route_id: str) -> int:
    """Send what the demo bus did to the dashboard as the bus would: decisions, fares, a heartbeat.

    Returns the number of fares published (the ledger's outbox, oldest first).
    """
    from edge.fares.ledger import Ledger

    bus = fleet.buses[DEMO_BUS]
    ledger = Ledger(ledger_path, fleet.state.rules, bus_id=DEMO_BUS, readonly=True)
    try:
        outbox = [row["payload"] for row in ledger.outbox()]
    finally:
        ledger.close()
    for d in result["decisions"]:
        fare = d.fare
        charged = fare is not None and d.action == "charge"
        bus.decision(at_ms=now_ms(), action=d.action, reason=d.reason[:200], rider_id=d.rider_id,
                     fare_id=fare.fare_id if charged else None, amount_minor=fare.amount_minor if charged else 0,
                     currency=fare.currency if charged else None)  # fmt: skip
    if outbox:
        bus.fares(outbox)
    bus.heartbeat(outbox_backlog=len(outbox), route_id=route_id)
    return len(outbox)


def serve_demo_dashboard(fleet: DemoFleet) -> None:
    """Serve until Ctrl-C (or SIGTERM), then stop the buses, the dashboard and the broker."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
