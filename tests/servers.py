"""Pytest plugin: real servers for tests (Mosquitto, PostgreSQL) and the path of Debian's Chromium.

Registered in ``tests/conftest.py`` with ``pytest_plugins = ["tests.servers"]``. Every server is
started by the project's own code on a free loopback port and stopped after; nothing is assumed
running. A missing server binary fails the test with the command that installs it
(``scripts/install-servers.sh``); nothing is skipped.

Fixtures: ``mosquitto_factory`` (``make(buses) -> Mosquitto``, started), ``mosquitto`` (a broker
for bus-1, bus-2 and bus-3), ``postgres_server`` (one per session), ``postgres_dsn`` (a fresh
database per test). Helpers: :class:`Inbox` (collects MQTT messages), :func:`chromium_path`.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from cloud_sync.devservers.mosquitto_server import BrokerError, MosquittoServer, find_mosquitto
from cloud_sync.devservers.postgres_server import PostgresError, PostgresServer, find_bindir

INSTALL = "run scripts/install-servers.sh as root (scripts/test.sh does) to install it"
BUSES = ("bus-1", "bus-2", "bus-3")


def chromium_path() -> Path:
    """Debian's Chromium (``/usr/bin/chromium``) for Playwright's ``executable_path``; fails the test if absent."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    path = Path(found)
    if not path.is_file():
        pytest.fail(f"chromium is not installed; {INSTALL}", pytrace=False)
    return path


class Inbox:
    """Collects the messages an MQTT client receives (set as its ``on_message``); waits for topics.

    >>> inbox = Inbox(); client.on_message = inbox.on_message
    >>> inbox.wait_for("facefare/v1/cloud/bus-1/acks").payload
    """

    def __init__(self) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self._cond = threading.Condition()

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self.messages]

    def wait_for(self, topic: str, timeout_s: float = 5.0) -> paho.MQTTMessage:
        """The first message received on ``topic``; fails the test if none comes within ``timeout_s``."""

        def found() -> paho.MQTTMessage | None:
            return next((m for m in self.messages if m.topic == topic), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout_s):
                pytest.fail(f"no message on {topic} within {timeout_s} s; got {[m.topic for m in self.messages]}")
            msg = found()
            assert msg is not None
            return msg


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.fail(f"{exc} ({INSTALL})", pytrace=False)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], MosquittoServer]]:
    """``make(buses, port=None) -> Mosquitto``: a started broker in a fresh work dir, stopped at teardown."""
    _require_mosquitto()
    started: list[MosquittoServer] = []
    counter = itertools.count(1)

    def make(buses: Sequence[str], port: int | None = None) -> MosquittoServer:
        broker = MosquittoServer(tmp_path / f"mosquitto-{next(counter)}", buses, port=port)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[[Sequence[str]], MosquittoServer]) -> MosquittoServer:
    """A started broker with credentials for bus-1, bus-2, bus-3, cloud and dashboard."""
    return mosquitto_factory(BUSES)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session (a fresh cluster in a temporary dir)."""
    try:
        find_bindir()
    except PostgresError as exc:
        pytest.fail(f"{exc} ({INSTALL})", pytrace=False)
    # Under /tmp, not pytest's tmp_path: as root the server runs as the OS user postgres, which
    # cannot enter pytest's private base directory.
    workdir = Path(tempfile.mkdtemp(prefix="facefare-pg-"))
    server = PostgresServer(workdir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


_databases = itertools.count(1)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The psycopg conninfo of a new, empty database for this test alone."""
    return postgres_server.create_database(f"test_{next(_databases)}")
