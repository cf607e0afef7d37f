"""The cloud service's own bookkeeping: PUBACK order with several writers, and bus-to-writer routing."""

from __future__ import annotations

from cloud_sync import protocol
from cloud_sync.cloud.ledger import open_ledger
from cloud_sync.cloud.service import CloudService, _InOrderAcks, _Item
from cloud_sync.mqtt import MqttConfig
from cloud_sync.protocol import Envelope, Fares, Heartbeat


class AckRecorder:
    """Stands in for the paho client's ``ack(mid, qos)``: records what would go to the broker."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.sent.append(mid)


def items(acks: _InOrderAcks, mids: list[int]) -> list[_Item]:
    out = []
    for mid in mids:
        item = _Item("t", mid, 1, False, None, None)
        item.seq = acks.number()
        out.append(item)
    return out


def test_pubacks_leave_in_arrival_order_whichever_writer_commits_first() -> None:
    acks, client = _InOrderAcks(), AckRecorder()
    first, second, third = items(acks, [11, 12]), items(acks, [13]), items(acks, [14, 15])
    acks.done(client, third)  # a later batch commits first: its PUBACKs wait
    assert client.sent == []
    acks.done(client, first)
    assert client.sent == [11, 12]
    acks.done(client, second)
    assert client.sent == [11, 12, 13, 14, 15]


def test_qos0_messages_need_no_puback_and_hold_nothing_up() -> None:
    acks, client = _InOrderAcks(), AckRecorder()
    loose = _Item("t", 0, 0, False, None, None)  # never numbered
    queued = items(acks, [21])
    acks.done(client, [loose, *queued])
    assert client.sent == [21]


def test_a_bus_keeps_its_writer_and_buses_are_dealt_out_in_turn(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    first, second = open_ledger(url), open_ledger(url)
    service = CloudService(first, protocol.generate_key(), MqttConfig(), writer_ledgers=[second])

    def writer(msg_type: str, bus: str) -> int:
        body = Fares.model_construct(fares=[]) if msg_type == "fares" else Heartbeat.model_construct()
        env = Envelope.model_construct(type=msg_type, sender=bus, body=body)
        return service._writer_for(_Item("t", 1, 1, False, env, None))

    assert [writer("fares", b) for b in ("bus-1", "bus-2", "bus-3", "bus-2", "bus-1")] == [0, 1, 0, 1, 0]
    assert writer("heartbeat", "bus-2") == 0  # everything but fares goes to the first writer
    first.close()
    second.close()
