"""Telling systemd the bus process is ready and still alive (the sd_notify protocol, no library).

systemd passes a unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=`` in the unit, the timeout in ``$WATCHDOG_USEC``. The process
sends ``READY=1`` once it is serving, then ``WATCHDOG=1`` more often than the timeout; if the
pings stop, systemd kills and restarts it (``Restart=always``). Outside systemd every call is a
no-op that returns False.

The pings must mean "the bus is working", not "a thread is alive": :class:`Watchdog` pings from a
background thread only while its ``healthy()`` check passes, e.g. "the pipeline handled a frame
or the camera tried to reconnect in the last 30 seconds"::

    dog = Watchdog(healthy=lambda: time.monotonic() - node.last_progress < 30)
    dog.start()          # sends READY=1, then WATCHDOG=1 every WATCHDOG_USEC / 2
    ...
    dog.stop()           # sends STOPPING=1
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    return addr


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``; lines joined by ``\\n``).

    Returns True when it was sent, False when not run by systemd or the socket is gone.
    """
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd that start-up is finished (``Type=notify`` units wait for this)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def ping() -> bool:
    """Reset systemd's watchdog timer."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is armed for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """Sends READY=1, then pings systemd every ``interval`` seconds while ``healthy()`` is True.

    ``interval`` defaults to :func:`watchdog_interval`; without a watchdog nothing is pinged.
    """

    def __init__(self, healthy: Callable[[], bool] = lambda: True, interval: float | None = None) -> None:
        self.healthy = healthy
        self.interval = interval if interval is not None else watchdog_interval()
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, status: str | None = None) -> None:
        ready(status)
        if self.interval is None:
            log.info("no systemd watchdog armed; not pinging")
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                ok = self.healthy()
            except Exception as exc:
                log.error("watchdog health check failed: %s", exc)
                ok = False
            if ok:
                if ping():
                    self.pings += 1
            else:
                log.error("bus not healthy: withholding the watchdog ping (systemd will restart it)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        stopping()
