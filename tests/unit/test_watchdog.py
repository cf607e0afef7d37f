"""systemd notifications (hardware/watchdog.py) received on a real unix datagram socket."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import watchdog


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket named by $NOTIFY_SOCKET, as systemd provides one."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_and_ping_reach_the_socket(notify_socket: socket.socket) -> None:
    assert watchdog.ready("charging fares") is True
    assert receive(notify_socket) == "READY=1\nSTATUS=charging fares"
    assert watchdog.ping() is True
    assert receive(notify_socket) == "WATCHDOG=1"
    assert watchdog.stopping() is True
    assert receive(notify_socket) == "STOPPING=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"facefare-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert watchdog.ping()
        assert receive(sock) == "WATCHDOG=1"


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert watchdog.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert watchdog.ping() is False  # a vanished socket is logged, not raised


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog.watchdog_interval() is None


def test_the_thread_pings_only_while_healthy(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # 40 ms timeout: a ping every 20 ms
    healthy = threading.Event()
    healthy.set()
    dog = watchdog.Watchdog(healthy=healthy.is_set)
    assert dog.interval == pytest.approx(0.02)
    dog.start()
    assert receive(notify_socket) == "READY=1"
    assert receive(notify_socket) == "WATCHDOG=1"
    assert receive(notify_socket) == "WATCHDOG=1"
    healthy.clear()
    # drain what was already sent, then nothing more may come while the bus is unhealthy
    notify_socket.settimeout(0.1)
    with pytest.raises(TimeoutError):
        while True:
            receive(notify_socket)
    pings = dog.pings
    notify_socket.settimeout(0.15)
    with pytest.raises(TimeoutError):
        receive(notify_socket)
    assert dog.pings == pings
    dog.stop()
    notify_socket.settimeout(2)
    assert receive(notify_socket) == "STOPPING=1"
