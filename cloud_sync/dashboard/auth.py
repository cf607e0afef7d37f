"""Dashboard users and sessions: scrypt password hashes in a users file, HMAC-signed session tokens.

The users file is JSON, readable by its owner only::

    {"users": {"alice": {"role": "admin", "hash": "scrypt$16384$8$1$<salt b64>$<hash b64>"}}}

A session token is ``<base64 JSON {"u": user, "exp": unix seconds}>.<base64 HMAC-SHA256>``
signed with a per-installation secret; the role is looked up in the users file on every request,
so changing or removing a user takes effect at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["admin", "read-only"]
ROLES: tuple[Role, ...] = ("admin", "read-only")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
# scrypt cost: 16 MiB and about 50 ms per login on a server core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthError(ValueError):
    """A user, password or users file cannot be used; the message says why."""


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in one self-describing string."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


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
        return user if ok and user else None

    def set_user(self, name: str, password: str, role: Role) -> None:
        """Add a user or replace their password and role; the file is written atomically, mode 0600."""
        if not USERNAME.match(name):
            raise AuthError(f"user name {name!r}: use letters, digits and _ . @ - (at most 64)")
        if role not in ROLES:
            raise AuthError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
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
    """Signs and checks session tokens."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        self._secret = secret
        self.max_age_s = max_age_s

    def _mac(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.digest(self._secret, data, "sha256")).decode().rstrip("=")

    def issue(self, user: str, now: float | None = None) -> str:
        exp = int(now if now is not None else time.time()) + self.max_age_s
        data = base64.urlsafe_b64encode(json.dumps({"u": user, "exp": exp}).encode()).decode().rstrip("=")
        return f"{data}.{self._mac(data.encode())}"

    def user_of(self, token: str | None, now: float | None = None) -> str | None:
        """The user a token was issued to, if it is genuine and not expired."""
        if not token or token.count(".") != 1:
            return None
        data, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            user, exp = claims["u"], int(claims["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if exp < (now if now is not None else time.time()):
            return None
        return user if isinstance(user, str) else None
