"""Run a real PostgreSQL server for FaceFare in a work directory (tests and the demo's cloud ledger).

:class:`Postgres` makes a cluster with Debian's ``initdb`` (``scripts/install-servers.sh`` installs
it) and runs ``postgres`` on a free loopback port, its Unix socket in the work directory::

    with PostgresServer(workdir) as pg:
        dsn = pg.create_database("ledger")
        with psycopg.connect(dsn) as conn:
            conn.execute("select 1")

PostgreSQL refuses to run as root, so when this process is root the server runs as the OS user
``postgres`` (Debian's package creates it) and the work directory is handed to that user; it must
be reachable by it (``tempfile.mkdtemp()`` under /tmp is; a directory under /root is not). The
superuser ``postgres`` has a random password, kept in the work directory (0600) and put in the DSN.
Durability is traded for speed (``fsync=off``): this is a server for tests and demos.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import secrets
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cloud_sync.devservers.server_process import ServerProcess

log = logging.getLogger(__name__)

INSTALL_HINT = "run scripts/install-servers.sh (as root) to install it"
OS_USER_WHEN_ROOT = "postgres"
SUPERUSER = "postgres"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; PostgreSQL adds "/.s.PGSQL.<port>"


class PostgresError(RuntimeError):
    """The server could not be set up, started or used; the message says why (with its log's tail)."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb and postgres."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "postgres").is_file()]
    if not found:
        raise PostgresError(f"PostgreSQL server binaries are not installed; {INSTALL_HINT}")
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


class PostgresServer(ServerProcess):
    """A PostgreSQL server of this process. ``port`` defaults to a free port, kept across restarts.

    Stopping is PostgreSQL's fast shutdown (SIGINT).
    """

    name = "postgres"
    error = PostgresError
    stop_signal = signal.SIGINT
    stop_timeout_s = 15.0

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(Path(workdir).resolve(), port)
        if os.geteuid() == 0:
            try:
                self._os_user: pwd.struct_passwd | None = pwd.getpwnam(OS_USER_WHEN_ROOT)
            except KeyError:
                raise PostgresError(f"OS user {OS_USER_WHEN_ROOT!r} does not exist; {INSTALL_HINT}") from None
        else:
            self._os_user = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.workdir / "superuser.pw"

    def dsn_for(self, dbname: str) -> str:
        """A psycopg 3 conninfo string for database ``dbname`` as the superuser, over TCP on loopback."""
        password = self.password_file.read_text().strip()
        return make_conninfo(
            host=self.host, port=self.port, user=SUPERUSER, password=password, dbname=dbname, connect_timeout=5
        )

    @property
    def dsn(self) -> str:
        """The conninfo of the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    # -- setup --

    def _run_as(self) -> dict[str, object]:
        """Popen arguments that run a command as the server's OS user."""
        if self._os_user is None:
            return {}
        u = self._os_user
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        return {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": [], "env": env, "cwd": str(self.workdir)}

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            os.chown(self.workdir, self._os_user.pw_uid, self._os_user.pw_gid)
            probe = subprocess.run(["test", "-w", str(self.workdir), "-a", "-x", str(self.workdir)], **self._run_as())
            if probe.returncode != 0:
                raise PostgresError(
                    f"the OS user {OS_USER_WHEN_ROOT!r} cannot reach {self.workdir} (a parent directory is private?); "
                    "PostgreSQL cannot run as root, so give it a work dir that user can reach, e.g. "
                    "tempfile.mkdtemp(prefix='facefare-pg-')"
                )
        sock = str(self.workdir / f".s.PGSQL.{self.port}")
        if len(sock.encode()) > _SOCKET_PATH_MAX:
            raise PostgresError(f"work dir path too long for a Unix socket ({sock}); use a shorter one")

    def _initdb(self, bindir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        pw = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pw + "\n")
        if self._os_user is not None:
            os.chown(self.password_file, self._os_user.pw_uid, self._os_user.pw_gid)
        cmd = [
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={self.password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, **self._run_as())  # type: ignore[call-overload]
        if done.returncode != 0:
            raise PostgresError(f"initdb failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    # -- process --

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        """Create the cluster if needed and start the server; return when it accepts connections."""
        if self.running:
            return self
        bindir = find_bindir()
        self._prepare_workdir()
        self._initdb(bindir)
        cmd = [
            str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.workdir),
            "-c", f"listen_addresses={self.host}", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=50",
        ]  # fmt: skip
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(  # type: ignore[call-overload]
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, **self._run_as()
            )

        def connect() -> None:
            with psycopg.connect(self.dsn, connect_timeout=2):
                pass

        self._wait_until(connect, timeout_s, "accept connections", retry_on=psycopg.OperationalError, poll_s=0.05)
        log.info("postgres listening on %s:%d (work dir %s)", self.host, self.port, self.workdir)
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lower-case letters, digits, '_') and return its conninfo."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must be lower-case letters, digits or '_' (max 63)")
        if not self.running:
            raise PostgresError("start() the server before creating databases")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)
