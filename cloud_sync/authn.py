"""Password hashes and login rate limits for the cloud's web front ends (dashboard, enrollment API).

Kept libraries rather than hand-written security code (issue 19, defects 9, 10 and 13):

* new password hashes are argon2id (``argon2-cffi``, OWASP's first choice); scrypt hashes written
  by earlier versions (``scrypt$N$r$p$salt$hash``) still verify, and :func:`needs_rehash` says
  when to replace one after a successful login;
* login attempts are limited with ``limits`` (moving window, in memory): each attempt is counted
  *before* the password is checked, per client address and per user name, so parallel guesses
  cannot slip past the count; once the window has moved on, the right password works again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

#: argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4).
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """A salted argon2id hash of ``password`` (the PHC string ``$argon2id$v=19$...``)."""
    return _HASHER.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (argon2id, or a legacy scrypt hash)."""
    if encoded.startswith("$argon2"):
        try:
            return _HASHER.verify(encoded, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    if encoded.startswith("scrypt$"):
        try:
            _kind, n, r, p, salt, digest = encoded.split("$")
            want = base64.b64decode(digest)
            got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                 dklen=len(want), maxmem=2**27)  # fmt: skip
        except ValueError:
            return False
        return hmac.compare_digest(got, want)
    return False


def needs_rehash(encoded: str) -> bool:
    """Whether a hash should be replaced by a new argon2id one (legacy scheme or weaker parameters)."""
    if not encoded.startswith("$argon2"):
        return True
    try:
        return _HASHER.check_needs_rehash(encoded)
    except InvalidHashError:
        return True


class LoginLimiter:
    """At most ``per_address`` login attempts from one client address and ``per_user`` for one
    user name (``limits`` notation, e.g. ``"10/minute"``), counted before the password is checked."""

    def __init__(self, per_address: str = "10/minute", per_user: str = "10/minute") -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_address = parse(per_address)
        self.per_user = parse(per_user)

    def attempt(self, address: str, user: str) -> bool:
        """Count one attempt; False if the address or the user name is over its limit (refuse it)."""
        ok_address = self._limiter.hit(self.per_address, "address", address)
        ok_user = self._limiter.hit(self.per_user, "user", user.lower()[:64])
        return ok_address and ok_user

    def reset(self) -> None:
        self._limiter.storage.reset()
