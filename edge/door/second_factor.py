"""The second factor at the door: a short code the rider chose at enrollment, typed on a keypad.

When the face alone may not charge (a gallery larger than the face can serve at the error-rate
target, or a rider flagged as a lookalike; see ``edge.faces.match.operating_point``), the door
pipeline asks the rider the face named for their code: 1:N becomes 1:1 plus a code.

* **Offline**: the bus checks the code against a *keyed hash* (:func:`code_hash`): HMAC-SHA256,
  under a code key only that bus and the cloud can derive (from the bus's gallery secret), of the
  code's slow rider-salted digest (scrypt). The cloud keeps only the digest, sealed; each bus gets
  its own keyed hash inside its encrypted deltas and stores it sealed in its encrypted gallery.
  The code itself is never stored, logged, sent or kept in a decision. (A short code checked
  offline can be brute-forced by whoever holds a bus's key and gallery: the sealing at rest and
  the bus's own key are what protect it.)
* **Rate-limited**: ``max_attempts`` wrong codes end the track ("see the driver");
  ``max_failures`` wrong codes for one rider within ``lockout_s`` lock that rider's code on this
  bus for the rest of the window (someone trying codes against one account across tracks).
* **Keypad**: anything with ``poll() -> str | None`` that returns one finished entry (the digits
  typed before Enter) or None; ``hardware.keypad`` has the console (demo) and USB/GPIO keypads.

A wrong code is never told apart from a locked one at the door, and no message names the rider.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Outcome = Literal["pending", "ok", "wrong", "refused"]


class SecondFactorConfig(BaseModel):
    """The ``[second_factor]`` settings: code length and the attempt limits."""

    model_config = ConfigDict(extra="forbid")

    min_digits: int = Field(4, ge=4, le=12, description="Shortest code a rider may choose")
    max_digits: int = Field(8, ge=4, le=12, description="Longest code a rider may choose")
    max_attempts: int = Field(3, ge=1, le=10, description="Wrong codes per boarding (track) before 'see the driver'")
    max_failures: int = Field(5, ge=1, le=100, description="Wrong codes per rider within lockout_s before a lockout")
    lockout_s: float = Field(3600.0, gt=0, description="Window (and lockout) for max_failures, seconds")
    timeout_s: float = Field(20.0, gt=0, description="Seconds a rider has to type the code")
    keypad: Literal["none", "console", "usb"] = Field(
        "none", description="Keypad by the door: none (the driver instead), console (demo), usb (/dev/input keypad)"
    )
    keypad_device: str = Field("", description="With keypad = usb: the /dev/input/event* device")


class Keypad(Protocol):
    def poll(self) -> str | None: ...


def valid_code(code: str, cfg: SecondFactorConfig | None = None) -> bool:
    c = cfg or SecondFactorConfig()
    return code.isdigit() and code.isascii() and c.min_digits <= len(code) <= c.max_digits


def code_digest(rider_id: str, code: str) -> bytes:
    """The slow, rider-salted digest of a code (scrypt): what the cloud keeps, sealed, instead of the code."""
    return hashlib.scrypt(code.encode(), salt=b"facefare-code\0" + rider_id.encode(), n=2**14, r=8, p=1, dklen=32)


def keyed(key: bytes, digest: bytes) -> bytes:
    """The keyed hash a bus stores: HMAC-SHA256 of the code's digest under that bus's code key."""
    if len(key) < 16:
        raise ValueError("the code key must be at least 16 bytes")
    return hmac.new(key, digest, hashlib.sha256).digest()


def code_hash(key: bytes, rider_id: str, code: str) -> bytes:
    """The keyed hash of ``rider_id``'s code under ``key`` (32 bytes); the code itself is never stored."""
    return keyed(key, code_digest(rider_id, code))


@dataclass
class _Wait:
    rider_id: str  # the face's nearest rider: wrong codes count against them
    started: float
    attempts: int = 0
    also: tuple[str, ...] = ()  # the other riders of the face's shortlist (1:few)


@dataclass
class SecondFactor:
    """Checks typed codes for the riders the face named, offline, with attempt limits."""

    keypad: Keypad
    hashes: Callable[[str], bytes | None]  # rider id -> stored keyed hash (None: no code enrolled)
    key: bytes
    cfg: SecondFactorConfig = field(default_factory=SecondFactorConfig)
    clock: Callable[[], float] = time.monotonic
    _waits: dict[int, _Wait] = field(default_factory=dict, repr=False)
    _failures: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _confirmed: dict[int, str] = field(default_factory=dict, repr=False)

    def start(self, track_id: int, rider_id: str, also: Sequence[str] = ()) -> bool:
        """Ask this track for a code: ``rider_id``'s (the face's nearest) or, when the face only narrowed
        the gallery to a few, one of ``also``'s. Riders with no code or locked out are left out;
        False if nobody is left."""
        candidates = [r for r in dict.fromkeys([rider_id, *also]) if self.hashes(r) is not None and not self.locked(r)]
        if not candidates:
            log.info("track %d: no second factor available for the named rider", track_id)
            return False
        self._waits[track_id] = _Wait(candidates[0], self.clock(), also=tuple(candidates[1:]))
        while self.keypad.poll() is not None:  # drop anything typed before the prompt
            pass
        return True

    def locked(self, rider_id: str) -> bool:
        now = self.clock()
        recent = [t for t in self._failures.get(rider_id, []) if now - t < self.cfg.lockout_s]
        self._failures[rider_id] = recent
        return len(recent) >= self.cfg.max_failures

    def poll(self, track_id: int) -> Outcome:
        """'ok' (charge the rider), 'refused' (attempts, lockout or timeout: see the driver),
        'wrong' (ask again) or 'pending' (nothing typed yet)."""
        wait = self._waits.get(track_id)
        if wait is None:
            return "refused"
        if self.clock() - wait.started > self.cfg.timeout_s:
            self._waits.pop(track_id, None)
            log.info("track %d: second factor timed out", track_id)
            return "refused"
        entry = self.keypad.poll()
        if entry is None:
            return "pending"
        matches = [r for r in (wait.rider_id, *wait.also) if self._checks(r, entry)]
        del entry  # nothing of the code outlives this check
        if len(matches) == 1:  # two riders of the shortlist with the same code: nobody is charged
            self._waits.pop(track_id, None)
            self._confirmed[track_id] = matches[0]
            log.info("track %d: second factor confirmed", track_id)
            return "ok"
        wait.attempts += 1
        self._failures.setdefault(wait.rider_id, []).append(self.clock())
        log.info("track %d: wrong code (%d of %d)", track_id, wait.attempts, self.cfg.max_attempts)
        if wait.attempts >= self.cfg.max_attempts or self.locked(wait.rider_id):
            self._waits.pop(track_id, None)
            return "refused"
        return "wrong"

    def _checks(self, rider_id: str, entry: str) -> bool:
        stored = self.hashes(rider_id)
        return (
            stored is not None
            and not self.locked(rider_id)
            and valid_code(entry, self.cfg)
            and hmac.compare_digest(code_hash(self.key, rider_id, entry), stored)
        )

    def confirmed(self, track_id: int) -> str | None:
        """The rider whose code this track typed, once :meth:`poll` said 'ok' (asked once)."""
        return self._confirmed.pop(track_id, None)

    def waiting(self) -> dict[int, str]:
        """Track id -> the rider whose code that track is asked for (for a door display or the demo)."""
        return {track: wait.rider_id for track, wait in self._waits.items()}

    def cancel(self, track_id: int) -> None:
        self._waits.pop(track_id, None)
