"""Make MQTT clients for FaceFare: the ``[mqtt]`` config section and paho-mqtt 2.x clients built from it.

Every FaceFare process (bus, cloud ledger, dashboard) talks to the broker through a client made
here: MQTT v5 over TLS with the broker's CA (host name checked), a username with its password read
from a file, a reconnect delay range, an optional last will, and a session that outlives
disconnections unless ``clean_start`` is asked for. Connection handling stays explicit, as in
paho's own examples::

    client = make_client(cfg, "bus-7", will=(topic, payload, 1, True))
    client.on_connect = on_connect          # (client, userdata, flags, reason_code, properties)
    client.on_message = on_message
    client.connect_async()                  # host, port, keepalive and session from cfg
    client.loop_start()
    ...
    client.disconnect(); client.loop_stop()

or, for scripts and tests, :func:`connect` that returns a client already connected (or raises
:class:`MqttConnectError` saying why not).
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

#: A last will: (topic, payload, qos, retain).
Will = tuple[str, bytes, int, bool]


class MqttConfig(BaseModel):
    """The ``[mqtt]`` section: how this process reaches the MQTT broker."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Broker host name or address (checked against its TLS certificate)")
    port: int = Field(8883, ge=1, le=65535, description="Broker port (8883 is MQTT over TLS)")
    tls: bool = Field(True, description="Use TLS; false only for a broker on a trusted private network")
    ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the broker's certificate; default: the system's CAs"
    )
    username: str | None = Field(None, description="Broker user name (a bus uses its bus id)")
    password_file: Path | None = Field(
        None, description="File holding the broker password (first line); never put the password in the config"
    )
    keepalive_s: int = Field(
        30,
        ge=5,
        le=65535,
        description="Seconds between keepalive pings; the broker drops "
        "a silent client after 1.5 times this and publishes its last will",
    )
    reconnect_min_s: int = Field(1, ge=1, description="First delay before reconnecting after a lost connection")
    reconnect_max_s: int = Field(60, ge=1, description="Longest delay between reconnection attempts (doubling)")
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps a persistent session (subscriptions and "
        "queued QoS 1 messages) of a disconnected client",
    )
    client_id: str | None = Field(
        None, description="MQTT client id; default: the process's identity (the bus id, 'cloud', 'dashboard')"
    )

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) < reconnect_min_s ({self.reconnect_min_s})")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not")
        return self

    def read_password(self) -> str | None:
        """The password from ``password_file`` (its first line), or None if there is no file configured."""
        if self.password_file is None:
            return None
        try:
            lines = Path(self.password_file).read_text().splitlines()
        except OSError as exc:
            raise MqttConnectError(f"cannot read mqtt.password_file {self.password_file}: {exc}") from exc
        if not lines or not lines[0]:
            raise MqttConnectError(f"mqtt.password_file {self.password_file} is empty")
        return lines[0]


class MqttConnectError(ConnectionError):
    """The broker could not be reached, refused the TLS handshake, or refused the credentials."""


#: paho's own log (a raising callback is logged here); warnings and errors only, even at DEBUG.
_PAHO_LOG = logging.getLogger("paho")
if _PAHO_LOG.level == logging.NOTSET:
    _PAHO_LOG.setLevel(logging.WARNING)


class Client(paho.Client):
    """A paho client that remembers the broker address and session settings it was made for.

    ``connect()`` and ``connect_async()`` take the same arguments as paho's, but every one is
    optional: what is left out comes from the :class:`MqttConfig` and :func:`make_client`'s
    ``clean_start``, so a reconnect never silently starts a fresh session.
    """

    def __init__(self, cfg: MqttConfig, client_id: str, clean_start: bool) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.cfg = cfg
        self.clean_start = clean_start
        # A callback that raises must never end the network thread (no more acks, deltas or
        # reconnects, issue 19 defect 3): paho logs it and carries on.
        self.suppress_exceptions = True
        self.enable_logger(_PAHO_LOG)

    def session_properties(self) -> Properties:
        """CONNECT properties: a session expiry interval (0 with clean_start, so nothing is kept)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if self.clean_start else self.cfg.session_expiry_s
        return props

    def _fill(
        self, host: str | None, port: int | None, keepalive: int | None, clean_start: Any, properties: Properties | None
    ) -> tuple[str, int, int, Any, Properties]:
        return (
            self.cfg.host if host is None else host,
            self.cfg.port if port is None else port,
            self.cfg.keepalive_s if keepalive is None else keepalive,
            self.clean_start if clean_start is None else clean_start,
            self.session_properties() if properties is None else properties,
        )

    def connect_async(  # type: ignore[override]
        self,
        host: str | None = None,
        port: int | None = None,
        keepalive: int | None = None,
        bind_address: str = "",
        bind_port: int = 0,
        clean_start: Any = None,
        properties: Properties | None = None,
    ) -> None:
        host, port, keepalive, clean_start, properties = self._fill(host, port, keepalive, clean_start, properties)
        super().connect_async(host, port, keepalive, bind_address, bind_port, clean_start, properties)

    def connect(  # type: ignore[override]
        self,
        host: str | None = None,
        port: int | None = None,
        keepalive: int | None = None,
        bind_address: str = "",
        bind_port: int = 0,
        clean_start: Any = None,
        properties: Properties | None = None,
    ) -> MQTTErrorCode:
        host, port, keepalive, clean_start, properties = self._fill(host, port, keepalive, clean_start, properties)
        return super().connect(host, port, keepalive, bind_address, bind_port, clean_start, properties)


def make_client(
    cfg: MqttConfig,
    client_id: str,
    *,
    clean_start: bool = False,
    will: Will | None = None,
) -> Client:
    """A configured, unconnected MQTT v5 client (paho-mqtt 2.x, callback API version 2).

    TLS uses ``cfg.ca_file`` (or the system CAs) and checks the broker's host name; the password
    comes from ``cfg.password_file``. With ``clean_start=False`` (the default) the broker keeps the
    session for ``cfg.session_expiry_s`` seconds, so QoS 1 messages published while this client is
    away are delivered when it comes back. ``will`` is (topic, payload, qos, retain). The caller
    sets its callbacks, then calls ``connect_async()`` and ``loop_start()`` (or uses :func:`connect`).
    """
    if not client_id:
        raise ValueError("an MQTT client id is required (persistent sessions are keyed by it)")
    client = Client(cfg, client_id, clean_start)
    if cfg.tls:
        if cfg.ca_file is not None and not Path(cfg.ca_file).is_file():
            raise MqttConnectError(f"mqtt.ca_file {cfg.ca_file} does not exist")
        ca = None if cfg.ca_file is None else str(cfg.ca_file)
        client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.tls_insecure_set(False)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.read_password())
    client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)
    return client


def wait_connected(client: Client, timeout_s: float = 10.0) -> None:
    """Connect ``client`` (TCP and TLS now, then CONNACK from its network loop) and wait for the broker's answer.

    Starts the client's network loop. Raises :class:`MqttConnectError` with the reason if the
    broker cannot be reached, the TLS handshake fails, the broker refuses the credentials or closes
    the connection, or no answer comes within ``timeout_s``; the loop is stopped again in that
    case. The client's own ``on_connect`` and ``on_disconnect`` (if set) are still called.
    """
    done = threading.Event()
    result: list[ReasonCode | None] = []
    user_on_connect, user_on_disconnect = client.on_connect, client.on_disconnect

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not done.is_set():
            result.append(reason)
            done.set()
        if user_on_connect is not None:
            user_on_connect(c, userdata, flags, reason, props)

    def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not done.is_set():
            result.append(None)
            done.set()
        if user_on_disconnect is not None:
            user_on_disconnect(c, userdata, flags, reason, props)

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    where = f"{client.cfg.host}:{client.cfg.port}"
    client.connect_timeout = timeout_s
    try:
        try:
            client.connect()
        except ssl.SSLError as exc:
            raise MqttConnectError(f"TLS handshake with the MQTT broker at {where} failed: {exc}") from exc
        except OSError as exc:
            raise MqttConnectError(f"cannot reach the MQTT broker at {where}: {exc}") from exc
        client.loop_start()
        if not done.wait(timeout_s):
            _give_up(client)
            raise MqttConnectError(f"no CONNACK from the MQTT broker at {where} within {timeout_s} s")
    finally:
        client.on_connect, client.on_disconnect = user_on_connect, user_on_disconnect
    reason = result[0]
    if reason is None:
        _give_up(client)
        raise MqttConnectError(f"the MQTT broker at {where} closed the connection before answering (TLS expected?)")
    if reason.is_failure:
        _give_up(client)
        raise MqttConnectError(f"the MQTT broker at {where} refused {client.cfg.username!r}: {reason}")
    log.info("connected to MQTT broker %s as %s", where, client.cfg.username)


def _give_up(client: Client) -> None:
    client.disconnect()
    client.loop_stop()


def subscribe(client: paho.Client, topics: list[tuple[str, int]], timeout_s: float = 10.0) -> list[ReasonCode]:
    """Subscribe to ``(topic, qos)`` pairs and wait for the SUBACK; raise if it does not come or refuses one."""
    acked = threading.Condition()
    acks: dict[int, list[ReasonCode]] = {}
    user_on_subscribe = client.on_subscribe

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        with acked:
            acks[mid] = codes
            acked.notify_all()
        if user_on_subscribe is not None:
            user_on_subscribe(c, userdata, mid, codes, props)

    client.on_subscribe = on_subscribe
    try:
        rc, mid = client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(f"cannot subscribe to {topics}: {paho.error_string(rc)}")
        with acked:
            if not acked.wait_for(lambda: mid in acks, timeout_s):
                raise MqttConnectError(f"no SUBACK for {topics} within {timeout_s} s")
    finally:
        client.on_subscribe = user_on_subscribe
    granted = acks[mid]
    refused = [f"{t}: {code}" for (t, _), code in zip(topics, granted, strict=False) if code.is_failure]
    if refused:
        raise MqttConnectError(f"the broker refused subscriptions: {'; '.join(refused)}")
    return granted


def connect(
    cfg: MqttConfig,
    client_id: str,
    *,
    clean_start: bool = False,
    will: Will | None = None,
    timeout_s: float = 10.0,
) -> Client:
    """:func:`make_client` then :func:`wait_connected`: a client that is connected, its loop running."""
    client = make_client(cfg, client_id, clean_start=clean_start, will=will)
    wait_connected(client, timeout_s)
    return client
