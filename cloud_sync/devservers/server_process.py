"""One job: a local server process (Mosquitto, PostgreSQL) that tests and the demo start and stop.

:class:`ServerProcess` holds what such a server shares once it is launched: its loopback port,
the wait until it is ready, stopping it, the tail of its logs for error messages, and the context
manager. A subclass writes its files, launches the process into ``self._proc`` in :meth:`start`,
and then calls :meth:`ServerProcess._wait_until` with a probe of its protocol.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server process of this process on ``host``; ``port`` defaults to a free port, kept across restarts.

    Subclasses set ``name`` (for messages), ``error`` (what failures raise), ``stop_signal`` and
    ``stop_timeout_s``, and implement :meth:`start` and the :attr:`log_file` property.
    """

    name = "server"
    host = "127.0.0.1"
    error: type[Exception] = RuntimeError
    stop_signal = signal.SIGTERM
    stop_timeout_s = 10.0

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.workdir = workdir
        self.port = port or free_port(self.host)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        raise NotImplementedError

    def _log_files(self) -> tuple[Path, ...]:
        """The files :meth:`log_tail` shows, in order."""
        return (self.log_file,)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_until(
        self,
        probe: Callable[[], None],
        timeout_s: float,
        what: str,
        *,
        retry_on: type[Exception] = OSError,
        poll_s: float = 0.02,
    ) -> None:
        """Call ``probe`` until it returns without raising ``retry_on``; ``what`` names the wait in errors.

        Raises ``error`` (with the log tail) when the process exits or ``timeout_s`` passes. On any
        failure the process is stopped before the exception goes on.
        """
        try:
            deadline = time.monotonic() + timeout_s
            last: Exception | None = None
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise self.error(
                        f"{self.name} exited with status {self._proc.returncode} at start\n{self.log_tail()}"
                    )
                try:
                    probe()
                    return
                except retry_on as exc:
                    last = exc
                    time.sleep(poll_s)
            raise self.error(
                f"{self.name} did not {what} on {self.host}:{self.port} within {timeout_s} s "
                f"(last error: {last})\n{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server with ``stop_signal``; SIGKILL after ``timeout_s`` (default ``stop_timeout_s``)."""
        if timeout_s is None:
            timeout_s = self.stop_timeout_s
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %s s; killing it", self.name, timeout_s)
                proc.kill()
                proc.wait()
        log.info("%s on port %d stopped", self.name, self.port)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log files, for error messages."""
        out = []
        for path in self._log_files():
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out) or f"({self.name} wrote no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, {state}, workdir={self.workdir})"
