"""Run a real Mosquitto broker for FaceFare in a work directory: TLS, one credential per bus, and an ACL.

:class:`Mosquitto` writes everything the broker needs into its work directory, then starts
``mosquitto`` on a free loopback port (``scripts/install-servers.sh`` installs it)::

    with MosquittoServer(tmp_path, ["bus-1", "bus-2"]) as broker:
        bus = mqtt.connect(broker.config_for("bus-1"), "bus-1")
        cloud = mqtt.connect(broker.config_for("cloud"), "cloud")

What it writes:

* ``ca.pem`` / ``ca.key``: a CA made here; ``server.pem`` / ``server.key``: the broker's certificate
  for 127.0.0.1 and localhost, signed by that CA. Clients trust ``ca.pem`` only.
* ``passwd``: Mosquitto's hashed password file (``mosquitto_passwd -U``); the clear passwords stay
  in ``passwords.json`` (0600) for :meth:`MosquittoServer.password` and :meth:`MosquittoServer.config_for`.
* two TLS listeners on 127.0.0.1 (no plaintext listener), each with its own users (issue 19,
  defect 7): ``port`` for the buses and the dashboard, where the client id is always the user
  name (``use_username_as_clientid``: one bus's password can never open or take over another
  bus's session), and ``cloud_port`` for the cloud's own services (user ``cloud``, several
  client ids);
* ``acl``: a bus may publish only under ``facefare/v1/bus/<its id>/`` and read only
  ``facefare/v1/cloud/<its id>/``; ``dashboard`` only reads the buses' status, fares and
  decisions (no write rule at all); ``cloud`` reads and writes everything under ``facefare/v1/``;
* ``mosquitto.conf``: no anonymous clients, ``message_size_limit`` = the protocol's largest
  payload (a larger publish is refused, never stored or forwarded), persistence in
  ``mosquitto.db`` (saved on stop, so QoS 1 sessions survive :meth:`MosquittoServer.restart`),
  log in ``mosquitto.log``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_sync.devservers.server_process import ServerProcess
from cloud_sync.devservers.server_process import free_port as free_port  # importable from here too, as before
from cloud_sync.mqtt import MqttConfig
from cloud_sync.protocol import MAX_PAYLOAD_BYTES, PREFIX

log = logging.getLogger(__name__)

Role = Literal["bus", "cloud", "dashboard"]
#: Topics (under the prefix) the dashboard role may read, for every bus.
DASHBOARD_TOPICS = ("bus/+/status", "bus/+/fares", "bus/+/decisions")
INSTALL_HINT = "run scripts/install-servers.sh (as root) to install it"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BrokerError(RuntimeError):
    """The broker could not be set up or started; the message says why (with its log's tail)."""


def find_mosquitto() -> tuple[str, str]:
    """Paths of ``mosquitto`` and ``mosquitto_passwd``, or :class:`BrokerError` saying how to install them."""
    found = []
    for name in ("mosquitto", "mosquitto_passwd"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if path is None:
            raise BrokerError(f"{name} is not installed; {INSTALL_HINT}")
        found.append(path)
    return found[0], found[1]


# -- certificates ----------------------------------------------------------------------------


def generate_ca(
    common_name: str = "FaceFare test CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA: its private key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate for ``hosts`` (IP addresses or DNS names), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the broker ------------------------------------------------------------------------------


class MosquittoServer(ServerProcess):
    """A Mosquitto broker of this process, configured for FaceFare's buses, cloud and dashboard.

    ``buses`` are the bus ids that get a credential (role ``bus``); users ``cloud`` and
    ``dashboard`` always exist. More users can be added with :meth:`add_user` before
    :meth:`start`. ``port`` defaults to a free port, chosen once and kept across restarts.
    Stopping sends SIGTERM, so that the broker saves its persistence file.
    """

    name = "mosquitto"
    error = BrokerError

    def __init__(self, workdir: Path, buses: Sequence[str], *, port: int | None = None) -> None:
        super().__init__(Path(workdir), port)
        self.cloud_port = free_port(self.host)  # the cloud services' listener, kept across restarts
        self.roles: dict[str, Role] = {}
        self._stderr: Path = self.workdir / "mosquitto.stderr"
        for name in ("cloud", "dashboard"):
            self.add_user(name, name)  # type: ignore[arg-type]
        for bus in buses:
            self.add_user(bus, "bus")

    # -- files --

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _log_files(self) -> tuple[Path, ...]:
        return (self.log_file, self._stderr)

    @property
    def conf_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def add_user(self, name: str, role: Role) -> None:
        """Give ``name`` a credential with ``role`` ('bus', 'cloud' or 'dashboard'); before :meth:`start`."""
        if self._proc is not None:
            raise BrokerError("add users before start(); the broker reads its password and ACL files at start")
        if role not in ("bus", "cloud", "dashboard"):
            raise ValueError(f"unknown role {role!r}; expected 'bus', 'cloud' or 'dashboard'")
        if not _NAME.match(name):
            raise ValueError(f"user name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting alphanumeric")
        if name in self.roles and self.roles[name] != role:
            raise ValueError(f"user {name!r} already exists with role {self.roles[name]!r}")
        self.roles[name] = role

    def _passwords(self) -> dict[str, str]:
        path = self.workdir / "passwords.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        changed = False
        for name in self.roles:
            if name not in known:
                known[name] = secrets.token_urlsafe(24)
                changed = True
        if changed or not path.exists():
            write_private(path, json.dumps(known, indent=1, sort_keys=True).encode())
        return known

    def password(self, user: str) -> str:
        """The clear password of ``user`` (a bus id, 'cloud', 'dashboard' or an added user)."""
        if user not in self.roles:
            raise KeyError(f"no broker user {user!r}; known: {', '.join(sorted(self.roles))}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self._passwords()[user]

    def config_for(self, user: str) -> MqttConfig:
        """A ready ``[mqtt]`` config for ``user``: this broker, its CA, and a 0600 password file."""
        secret = self.password(user)
        pw_dir = self.workdir / "secrets"
        pw_dir.mkdir(mode=0o700, exist_ok=True)
        pw_file = pw_dir / f"{user}.pw"
        write_private(pw_file, (secret + "\n").encode())
        if not self.ca_file.exists():
            self._write_certs()
        return MqttConfig(
            host=self.host,
            port=self.cloud_port if self.roles[user] == "cloud" else self.port,
            tls=True,
            ca_file=self.ca_file,
            username=user,
            password_file=pw_file,
            client_id=user,
            reconnect_min_s=1,
            reconnect_max_s=5,
        )

    def _write_certs(self) -> None:
        ca_key, ca_cert = generate_ca()
        key, cert = issue_server_cert(ca_key, ca_cert, (self.host, "localhost"))
        write_private(self.workdir / "ca.key", key_pem(ca_key))
        write_private(self.workdir / "server.key", key_pem(key))
        (self.workdir / "server.pem").write_bytes(cert_pem(cert))
        self.ca_file.write_bytes(cert_pem(ca_cert))

    def _write_password_file(self, mosquitto_passwd: str, name: str = "passwd", roles: Sequence[str] = ()) -> Path:
        """Mosquitto's password file for the users of ``roles``: clear ``user:password`` lines, hashed in place."""
        path = self.workdir / name
        passwords = self._passwords()
        users = sorted(u for u, r in self.roles.items() if r in roles)
        write_private(path, "".join(f"{u}:{passwords[u]}\n" for u in users).encode())
        done = subprocess.run([mosquitto_passwd, "-U", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            path.unlink(missing_ok=True)
            raise BrokerError(f"mosquitto_passwd -U failed ({done.returncode}): {done.stderr.strip()}")
        return path

    def acl_text(self) -> str:
        """The bus listener's ACL (see the module docstring for the rules).

        One rule set per user, no ``pattern`` lines: a pattern applies to every user, so
        ``pattern write .../bus/%u/#`` also let the read-only ``dashboard`` publish (retained!)
        under ``bus/dashboard/``."""
        lines = ["# Written by cloud_sync.devservers.mosquitto_server. Anything not allowed here is denied."]
        for name, role in sorted(self.roles.items()):
            if role == "bus":  # publish only under its own id, read only the cloud's topics for its own id
                lines += ["", f"user {name}", f"topic write {PREFIX}/bus/{name}/#",
                          f"topic read {PREFIX}/cloud/{name}/#"]  # fmt: skip
            elif role == "dashboard":
                lines += ["", f"user {name}"] + [f"topic read {PREFIX}/{t}" for t in DASHBOARD_TOPICS]
        return "\n".join(lines) + "\n"

    def cloud_acl_text(self) -> str:
        lines = ["# Written by cloud_sync.devservers.mosquitto_server: the cloud services' listener."]
        for name, role in sorted(self.roles.items()):
            if role == "cloud":
                lines += ["", f"user {name}", f"topic readwrite {PREFIX}/#"]
        return "\n".join(lines) + "\n"

    def conf_text(self) -> str:
        wd = self.workdir.resolve()
        tls = [f"cafile {wd / 'ca.pem'}", f"certfile {wd / 'server.pem'}", f"keyfile {wd / 'server.key'}",
               "tls_version tlsv1.2"]  # fmt: skip
        lines = [
            "# Written by cloud_sync.devservers.mosquitto_server for one FaceFare test or demo broker.",
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {wd}/",
            "persistence_file mosquitto.db",
            "autosave_interval 60",
            "max_queued_messages 100000",
            # Nothing larger than the protocol accepts is stored or forwarded (retained or not).
            f"message_size_limit {MAX_PAYLOAD_BYTES}",
            f"log_dest file {wd / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            "# Buses and the dashboard: the client id is the user name, so no one takes over another's session.",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            "use_username_as_clientid true",
            f"password_file {wd / 'passwd'}",
            f"acl_file {wd / 'acl'}",
            *tls,
            "",
            "# The cloud's own services (ledger, enrollment): trusted, several client ids.",
            f"listener {self.cloud_port} {self.host}",
            "allow_anonymous false",
            f"password_file {wd / 'passwd-cloud'}",
            f"acl_file {wd / 'acl-cloud'}",
            *tls,
        ]
        if os.geteuid() == 0:
            # As root Mosquitto would switch to user "mosquitto", which cannot read a private work dir.
            lines.insert(1, "user root")
        return "\n".join(lines) + "\n"

    # -- process --

    def start(self, timeout_s: float = 10.0) -> MosquittoServer:
        """Write the files (certificates once) and start the broker; return when it accepts TLS connections."""
        if self.running:
            return self
        mosquitto, mosquitto_passwd = find_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ca_file.exists():
            self._write_certs()
        self._write_password_file(mosquitto_passwd, "passwd", ("bus", "dashboard"))
        self._write_password_file(mosquitto_passwd, "passwd-cloud", ("cloud",))
        (self.workdir / "acl").write_text(self.acl_text())
        (self.workdir / "acl-cloud").write_text(self.cloud_acl_text())
        self.conf_file.write_text(self.conf_text())
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with open(self._stderr, "ab") as err:
            self._proc = subprocess.Popen(
                [mosquitto, "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

        def tls_handshake() -> None:
            with (
                socket.create_connection((self.host, self.port), timeout=1.0) as raw,
                ctx.wrap_socket(raw, server_hostname=self.host) as tls,  # the handshake: its errors go on
                contextlib.suppress(OSError),  # only for the close below
            ):
                tls.unwrap()  # a clean TLS close, so the broker logs no error for the probe

        self._wait_until(tls_handshake, timeout_s, "accept TLS connections")
        log.info("mosquitto listening on %s:%d (work dir %s)", self.host, self.port, self.workdir)
        return self

    def restart(self, timeout_s: float = 10.0) -> MosquittoServer:
        """Stop and start again on the same port with the same persistence file (sessions survive)."""
        self.stop()
        return self.start(timeout_s)
