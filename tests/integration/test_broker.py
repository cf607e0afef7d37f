"""The project's Mosquitto broker: TLS only, one password per user, and the ACL that fences each bus in."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from cloud_sync import mqtt
from cloud_sync.devservers.mosquitto_server import MosquittoServer, cert_pem, generate_ca
from cloud_sync.protocol import topic_for
from tests.servers import Inbox


def test_tls_with_the_broker_ca_connects(mosquitto: MosquittoServer) -> None:
    cfg = mosquitto.config_for("bus-1")
    assert cfg.password_file is not None and oct(cfg.password_file.stat().st_mode & 0o777) == "0o600"
    client = mqtt.connect(cfg, "bus-1", timeout_s=5)
    assert client.is_connected()
    client.disconnect()
    client.loop_stop()
    # The certificate names localhost too, and the host name is checked against it.
    client = mqtt.connect(cfg.model_copy(update={"host": "localhost"}), "bus-1", timeout_s=5)
    client.disconnect()
    client.loop_stop()


def test_plaintext_is_refused(mosquitto: MosquittoServer) -> None:
    cfg = mosquitto.config_for("bus-1").model_copy(update={"tls": False})
    with pytest.raises(mqtt.MqttConnectError):
        mqtt.connect(cfg, "bus-1", timeout_s=3)


def test_a_broker_signed_by_another_ca_is_refused(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(cert_pem(generate_ca("Someone else's CA")[1]))
    cfg = mosquitto.config_for("bus-1").model_copy(update={"ca_file": other})
    with pytest.raises(mqtt.MqttConnectError, match="TLS handshake"):
        mqtt.connect(cfg, "bus-1", timeout_s=3)


def test_wrong_password_and_unknown_user_are_refused(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    cfg = mosquitto.config_for("bus-1").model_copy(update={"password_file": wrong})
    with pytest.raises(mqtt.MqttConnectError, match="refused 'bus-1'"):
        mqtt.connect(cfg, "bus-1", timeout_s=3)
    stranger = cfg.model_copy(update={"username": "bus-9"})
    with pytest.raises(mqtt.MqttConnectError, match="refused 'bus-9'"):
        mqtt.connect(stranger, "bus-9", timeout_s=3)


def test_acl_fences_each_bus_in(mosquitto: MosquittoServer) -> None:
    seen_by = {name: Inbox() for name in ("cloud", "dashboard", "bus-1", "bus-2")}
    clients = {}
    for name, inbox in seen_by.items():
        client = mqtt.make_client(mosquitto.config_for(name), name, clean_start=True)
        client.on_message = inbox.on_message
        mqtt.wait_connected(client, timeout_s=5)
        clients[name] = client
    try:
        mqtt.subscribe(clients["cloud"], [("facefare/v1/#", 1)])
        mqtt.subscribe(clients["dashboard"], [("facefare/v1/#", 1)])
        for bus in ("bus-1", "bus-2"):
            mqtt.subscribe(clients[bus], [(topic_for("gallery", "bus-1"), 1), (topic_for("gallery", "bus-2"), 1)])

        bus1 = clients["bus-1"]
        # Denied publishes first: QoS 1 keeps order, so once the allowed one arrives they would have too.
        bus1.publish(topic_for("fares", "bus-2"), b"forged", qos=1).wait_for_publish(5)
        bus1.publish(topic_for("ack", "bus-1"), b"self-ack", qos=1).wait_for_publish(5)
        bus1.publish(topic_for("fares", "bus-1"), b"mine", qos=1).wait_for_publish(5)
        assert seen_by["cloud"].wait_for(topic_for("fares", "bus-1")).payload == b"mine"
        assert seen_by["dashboard"].wait_for(topic_for("fares", "bus-1")).payload == b"mine"
        assert seen_by["cloud"].topics() == [topic_for("fares", "bus-1")]

        # A gallery for bus-2 reaches bus-2 only, although bus-1 subscribed to it too.
        cloud = clients["cloud"]
        cloud.publish(topic_for("gallery", "bus-2"), b"for bus-2", qos=1).wait_for_publish(5)
        cloud.publish(topic_for("gallery", "bus-1"), b"for bus-1", qos=1).wait_for_publish(5)
        assert seen_by["bus-2"].wait_for(topic_for("gallery", "bus-2")).payload == b"for bus-2"
        assert seen_by["bus-1"].wait_for(topic_for("gallery", "bus-1")).payload == b"for bus-1"
        assert seen_by["bus-1"].topics() == [topic_for("gallery", "bus-1")]
        assert seen_by["bus-2"].topics() == [topic_for("gallery", "bus-2")]

        # The dashboard reads the buses' topics, not the cloud's galleries, and cannot publish.
        clients["dashboard"].publish(topic_for("ack", "bus-1"), b"dash", qos=1).wait_for_publish(5)
        cloud.publish(topic_for("heartbeat", "bus-3"), b"hb", qos=1).wait_for_publish(5)
        assert seen_by["dashboard"].wait_for(topic_for("heartbeat", "bus-3")).payload == b"hb"
        seen_by["cloud"].wait_for(topic_for("heartbeat", "bus-3"))  # so the dashboard's publish had its chance
        assert topic_for("gallery", "bus-1") not in seen_by["dashboard"].topics()
        assert topic_for("ack", "bus-1") not in seen_by["cloud"].topics()
    finally:
        for client in clients.values():
            client.disconnect()
            client.loop_stop()


def test_restart_keeps_a_persistent_session_and_its_queued_message(mosquitto: MosquittoServer) -> None:
    acks = topic_for("ack", "bus-1")
    bus = mqtt.connect(mosquitto.config_for("bus-1"), "bus-1", timeout_s=5)
    mqtt.subscribe(bus, [(acks, 1)])
    bus.disconnect()
    bus.loop_stop()

    cloud = mqtt.connect(mosquitto.config_for("cloud"), "cloud", clean_start=True, timeout_s=5)
    cloud.publish(acks, b"ack while the bus is away", qos=1).wait_for_publish(5)
    cloud.disconnect()
    cloud.loop_stop()

    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port

    inbox = Inbox()
    bus = mqtt.make_client(mosquitto.config_for("bus-1"), "bus-1")
    bus.on_message = inbox.on_message
    mqtt.wait_connected(bus, timeout_s=5)
    try:
        assert inbox.wait_for(acks).payload == b"ack while the bus is away"
    finally:
        bus.disconnect()
        bus.loop_stop()


def test_a_lost_bus_gets_its_last_will_published(mosquitto: MosquittoServer) -> None:
    status = topic_for("offline", "bus-3")
    inbox = Inbox()
    cloud = mqtt.make_client(mosquitto.config_for("cloud"), "cloud", clean_start=True)
    cloud.on_message = inbox.on_message
    mqtt.wait_connected(cloud, timeout_s=5)
    mqtt.subscribe(cloud, [(status, 1)])
    bus = mqtt.connect(mosquitto.config_for("bus-3"), "bus-3", will=(status, b"gone", 1, True), timeout_s=5)
    try:
        bus.loop_stop()
        sock = bus.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # the connection dies without a DISCONNECT packet
        msg = inbox.wait_for(status)
        assert msg.payload == b"gone"
    finally:
        cloud.disconnect()
        cloud.loop_stop()


# -- issue 19, defect 7 --------------------------------------------------------------------------


def test_one_bus_password_cannot_take_over_another_bus_session(mosquitto: MosquittoServer) -> None:
    """bus-1's password with client id 'bus-2' took over bus-2's session: they kicked each other
    off and bus-2's queued acks were lost. The client id is now always the user name."""
    acks = topic_for("ack", "bus-2")
    bus2 = mqtt.connect(mosquitto.config_for("bus-2"), "bus-2", timeout_s=5)
    mqtt.subscribe(bus2, [(acks, 1)])
    bus2.disconnect()
    bus2.loop_stop()
    cloud = mqtt.connect(mosquitto.config_for("cloud"), "cloud", clean_start=True, timeout_s=5)
    cloud.publish(acks, b"queued for bus-2", qos=1).wait_for_publish(5)

    thief_inbox = Inbox()
    thief = mqtt.make_client(mosquitto.config_for("bus-1"), "bus-2")  # bus-1's password, bus-2's client id
    thief.on_message = thief_inbox.on_message
    mqtt.wait_connected(thief, timeout_s=5)
    inbox = Inbox()
    bus2 = mqtt.make_client(mosquitto.config_for("bus-2"), "bus-2")
    bus2.on_message = inbox.on_message
    mqtt.wait_connected(bus2, timeout_s=5)
    try:
        assert inbox.wait_for(acks).payload == b"queued for bus-2"
        assert thief_inbox.topics() == []
        assert thief.is_connected() and bus2.is_connected()  # neither kicked the other off
    finally:
        for c in (thief, bus2, cloud):
            c.disconnect()
            c.loop_stop()


def test_oversize_messages_are_not_stored_and_the_dashboard_cannot_publish(mosquitto: MosquittoServer) -> None:
    """A 20 MiB retained status was stored and sent to every subscriber; the read-only dashboard
    user could publish retained messages under bus/dashboard/#."""
    from cloud_sync.protocol import MAX_PAYLOAD_BYTES

    bus = mqtt.connect(mosquitto.config_for("bus-1"), "bus-1", clean_start=True, timeout_s=5)
    dash = mqtt.connect(mosquitto.config_for("dashboard"), "dashboard", clean_start=True, timeout_s=5)
    try:
        status = topic_for("heartbeat", "bus-1")
        info = bus.publish(status, b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):  # the broker refuses it (and may drop the client)
            info.wait_for_publish(5)
        dash.publish("facefare/v1/bus/dashboard/status", b"fake", qos=1, retain=True).wait_for_publish(5)
        bus.disconnect()
        bus.loop_stop()
        bus = mqtt.connect(mosquitto.config_for("bus-1"), "bus-1", clean_start=True, timeout_s=5)
        bus.publish(topic_for("decision", "bus-1"), b"marker", qos=1, retain=True).wait_for_publish(5)
        inbox = Inbox()
        cloud = mqtt.make_client(mosquitto.config_for("cloud"), "cloud", clean_start=True)
        cloud.on_message = inbox.on_message
        mqtt.wait_connected(cloud, timeout_s=5)
        mqtt.subscribe(cloud, [("facefare/v1/#", 1)])
        inbox.wait_for(topic_for("decision", "bus-1"))  # the retained marker arrived: the others would have too
        assert inbox.topics() == [topic_for("decision", "bus-1")]
        cloud.disconnect()
        cloud.loop_stop()
    finally:
        for c in (bus, dash):
            c.disconnect()
            c.loop_stop()
