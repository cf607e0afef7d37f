"""Dashboard users and sessions: argon2id password hashes in a users file, revocable server-side sessions.

The users file is JSON, readable by its owner only::

    {"users": {"alice": {"role": "admin", "hash": "$argon2id$v=19$m=65536,t=3,p=4$..."}}}

Hashes come from :mod:`cloud_sync.authn` (argon2-cffi); scrypt hashes of earlier versions still
verify and are replaced by argon2id at the user's next login.

A session token is ``<base64 JSON {"u": user, "exp": unix seconds, "sid": random}>.<base64 HMAC-SHA256>``
signed with a per-installation secret, and valid only while its ``sid`` is in the server's session
table: logging out revokes it at once (a copied cookie stops working), and so does a restart of
the dashboard. The role is looked up in the users file on every request, so changing or removing a
user takes effect at once.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cloud_sync import authn

Role = Literal["admin", "read-only"]
ROLES: tuple[Role, ...] = ("admin", "read-only")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8


class AuthError(ValueError):
    """A user, password or users file cannot be used; the message says why."""


def hash_password(password: str) -> str:
    """A salted argon2id hash of ``password`` in one self-describing string."""
    return authn.hash_password(password)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (argon2id, or scrypt from earlier versions)."""
    return authn.verify_password(password, encoded)


@functools.cache
def _dummy_hash() -> str:
    """A valid hash to check unknown user names against, so a wrong name costs as long as a wrong password."""
    return hash_password(secrets.token_hex(8))


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hash: str


#: The users file's layout: {"version": 1, "users": {name: {"role", "hash"}}}; files without a version are 1.
USERS_FILE_VERSION = 1


class UserStore:
    """The users file; re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def _load(self) -> dict[str, User]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text())
                version = raw.get("version", 1)  # files from before versioning have the same layout
                if version > USERS_FILE_VERSION:
                    raise AuthError(f"users file {self.path} has version {version}, newer than this software")
                users = {
                    name: User(name, u["role"], u["hash"]) for name, u in raw["users"].items() if u.get("role") in ROLES
                }
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise AuthError(f"users file {self.path} is not valid: {exc}") from None
            self._users, self._stamp = users, stamp
        return self._users

    def get(self, name: str) -> User | None:
        return self._load().get(name)

    def names(self) -> list[str]:
        return sorted(self._load())

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is right; None otherwise (in about the same time either way)."""
        user = self.get(name)
        ok = verify_password(password, user.hash if user else _dummy_hash())
        if not (ok and user):
            return None
        if authn.needs_rehash(user.hash):  # an scrypt hash of an earlier version: argon2id from now on
            with contextlib.suppress(AuthError, OSError):
                self.set_user(user.name, password, user.role, check_length=False)
        return user

    def set_user(self, name: str, password: str, role: Role, *, check_length: bool = True) -> None:
        """Add a user or replace their password and role; the file is written atomically, mode 0600."""
        if not USERNAME.match(name):
            raise AuthError(f"user name {name!r}: use letters, digits and _ . @ - (at most 64)")
        if role not in ROLES:
            raise AuthError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if check_length and len(password) < MIN_PASSWORD:
            raise AuthError(f"password too short: at least {MIN_PASSWORD} characters")
        users = dict(self._load())
        users[name] = User(name, role, hash_password(password))
        data = {
            "version": USERS_FILE_VERSION,
            "users": {u.name: {"role": u.role, "hash": u.hash} for u in sorted(users.values(), key=lambda u: u.name)}
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def load_secret(path: Path) -> bytes:
    """The session-signing secret kept at ``path``; created (32 random bytes, mode 0600) if missing."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    secret = path.read_bytes()
    if len(secret) < 32:
        raise AuthError(f"session secret {path} is shorter than 32 bytes")
    return secret


class Sessions:
    """Issues, checks and revokes session tokens (server-side: a token is valid only while listed)."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        self._secret = secret
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}  # sid -> expiry (unix seconds)

    def _mac(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.digest(self._secret, data, "sha256")).decode().rstrip("=")

    def issue(self, user: str, now: float | None = None) -> str:
        now = now if now is not None else time.time()
        exp = int(now) + self.max_age_s
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._live = {s: e for s, e in self._live.items() if e >= now}  # drop expired ones
            self._live[sid] = exp
        data = base64.urlsafe_b64encode(json.dumps({"u": user, "exp": exp, "sid": sid}).encode()).decode().rstrip("=")
        return f"{data}.{self._mac(data.encode())}"

    def _claims(self, token: str | None) -> dict | None:
        if not token or token.count(".") != 1:
            return None
        data, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            if not isinstance(claims, dict):
                return None
            int(claims["exp"])
            return claims
        except (ValueError, KeyError, TypeError):
            return None

    def user_of(self, token: str | None, now: float | None = None) -> str | None:
        """The user a token was issued to, if it is genuine, not expired and not revoked."""
        claims = self._claims(token)
        if claims is None:
            return None
        if int(claims["exp"]) < (now if now is not None else time.time()):
            return None
        with self._lock:
            if claims.get("sid") not in self._live:
                return None
        user = claims.get("u")
        return user if isinstance(user, str) else None

    def revoke(self, token: str | None) -> bool:
        """End the session of ``token`` (logout): the token is refused from now on."""
        claims = self._claims(token)
        if claims is None:
            return False
        with self._lock:
            return self._live.pop(str(claims.get("sid")), None) is not None
