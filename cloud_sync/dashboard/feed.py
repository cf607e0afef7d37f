"""Feed the fleet picture from MQTT: subscribe to the buses' status, fares and decisions, validate, apply.

Every message goes through :func:`cloud_sync.protocol.parse` against the registered bus keys and
a :class:`~cloud_sync.protocol.ReplayGuard`; what is refused is counted in the
:class:`~cloud_sync.dashboard.state.FleetState` (by reason and by the bus its topic names), never
applied. Two kinds of message are exempt from the freshness check, as the protocol allows: a
retained status (delivered on subscribe, possibly long after it was sent) and a bus's last will
(signed when the bus connected, published by the broker when it lost the bus).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_sync.dashboard.state import FleetState
from cloud_sync.mqtt import Client, MqttConfig, make_client
from cloud_sync.protocol import (
    PREFIX,
    Envelope,
    KeyLookup,
    ProtocolError,
    ReplayGuard,
    now_ms,
    parse,
    public_key_from_text,
)

log = logging.getLogger(__name__)

#: What the dashboard reads (the broker's ACL lets the ``dashboard`` user read exactly these).
TOPICS = (f"{PREFIX}/bus/+/status", f"{PREFIX}/bus/+/fares", f"{PREFIX}/bus/+/decisions")


def load_bus_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Registered bus public keys from a text file of ``bus-id base64-key`` lines (``#`` comments allowed)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'bus-id base64-public-key', got {line!r}")
        try:
            keys[parts[0]] = public_key_from_text(parts[1])
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: bad public key for {parts[0]!r}: {exc}") from None
    return keys


class FleetFeed:
    """Validates received payloads into ``state``; :meth:`start` connects it to the broker."""

    def __init__(self, state: FleetState, lookup_key: KeyLookup, *, clock: Callable[[], int] = now_ms) -> None:
        self.state = state
        self.lookup_key = lookup_key
        self.clock = clock
        self.guard = ReplayGuard()
        self.client: Client | None = None
        self.subscribed = threading.Event()
        self._stopping = False

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> Envelope | None:
        """Validate one message and apply it; a refused one is counted and None returned."""
        now = self.clock()
        try:
            try:
                env = parse(topic, payload, self.lookup_key, now=now)
            except ProtocolError as exc:
                if exc.reason != "stale":
                    raise
                env = parse(topic, payload, self.lookup_key, now=now, check_time=False)
                # A bus whose clock is off still reports its status and fares (shown with its
                # skew); only door decisions, which nothing else confirms, are refused as stale.
                if env.type == "decision" and not retained:
                    raise
            if not (retained or env.type == "offline"):
                self.guard.check(env, now)
        except ProtocolError as exc:
            log.warning("refused a message on %s: %s", topic, exc)
            self.state.reject(topic, exc.reason)
            return None
        self.state.apply(env, now, retained=retained)
        return env

    # -- MQTT ----------------------------------------------------------------------------

    def start(self, cfg: MqttConfig, client_id: str | None = None) -> Client:
        """Connect to the broker in the background (reconnecting on its own) and start receiving."""
        self.subscribed.clear()
        self._stopping = False
        client = make_client(cfg, client_id or cfg.client_id or "dashboard")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.connect_async()
        client.loop_start()
        self.client = client
        return client

    def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        """Block until the broker has confirmed the subscriptions (or raise TimeoutError)."""
        if not self.subscribed.wait(timeout_s):
            raise TimeoutError(f"the MQTT broker did not confirm the dashboard's subscriptions within {timeout_s} s")

    def stop(self) -> None:
        if self.client is not None:
            self._stopping = True
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT broker refused the dashboard: %s", reason)
            return
        log.info("dashboard connected to MQTT; subscribing to %s", ", ".join(TOPICS))
        client.subscribe([(t, 1) for t in TOPICS])

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT broker refused the dashboard's subscriptions: %s", refused)
        else:
            self.subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._stopping:
            log.info("dashboard disconnected from MQTT")
        else:
            log.warning("dashboard lost the MQTT broker (%s); paho reconnects", reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.handle(msg.topic, msg.payload, retained=bool(msg.retain))
        except Exception:  # a bug here must not kill paho's network thread
            log.exception("could not handle a message on %s", msg.topic)
