"""What every camera source shares: the Frame, the source interface, the health flag, and the
reconnect loop of live cameras.

A live source (USB, RTSP, Pi camera, Jetson CSI) implements three small methods, ``_open``,
``_read`` and ``_close``; :class:`LiveSource` does the rest: it reopens the camera with
exponential backoff when it cannot be opened or stops giving frames, and keeps a health flag
(:meth:`LiveSource.health`) that the bus's MQTT heartbeat publishes as ``camera``. A backend read
through OpenCV (USB, RTSP, CSI) derives from :class:`VideoCaptureSource` and implements ``_open`` only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One picture from a source.

    ``index`` counts frames in capture order; ``ts`` is in seconds, from the start of the file for
    video files and from the opening of the source for live cameras (monotonic, never jumps).
    ``mono`` (``time.monotonic()``) and ``wall`` (``time.time()``, UTC epoch seconds) are when the
    frame was captured. ``image`` is an RGB ``uint8`` array (H, W, 3), or None when the frame
    could not be decoded.
    """

    index: int
    ts: float
    image: np.ndarray | None
    mono: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    nir: np.ndarray | None = None  # the near-infrared picture beside it (hardware.cameras.nir), grey


class Health(NamedTuple):
    """The camera's health flag, as the heartbeat's ``camera`` field carries it."""

    ok: bool
    detail: str


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields :class:`Frame` objects and can say whether it is healthy."""

    def __iter__(self) -> Iterator[Frame]: ...

    def health(self) -> Health: ...


class CameraError(OSError):
    """A camera cannot be used (missing package, no such device, gave up reconnecting)."""


@dataclass(frozen=True)
class Reconnect:
    """How a live source retries: ``initial_s`` doubling up to ``max_s`` between attempts;
    ``max_attempts`` failed opens in a row end the source with :class:`CameraError` (0: never);
    ``failed_reads`` reads in a row without a frame count as a lost camera; the health flag
    turns false when no frame came for ``stale_after_s`` seconds."""

    enabled: bool = True
    initial_s: float = 0.5
    max_s: float = 30.0
    max_attempts: int = 0
    failed_reads: int = 10
    stale_after_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure in a row (1, 2, ...).

        >>> [Reconnect(initial_s=0.5, max_s=3).delay(n) for n in (1, 2, 3, 4, 5, 5000)]
        [0.5, 1.0, 2.0, 3, 3, 3]
        """
        return min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 40))  # a bus may retry for days


class LiveSource:
    """A camera that is opened, read frame by frame, and reopened when it fails.

    Subclasses implement ``_open`` (raise on failure), ``_read`` (an RGB frame, or None when
    none came) and ``_close``, and set ``name`` (for logs and the health detail). Iterating
    yields frames until :meth:`close` is called from another thread, or until reconnecting
    gives up (``Reconnect.max_attempts``), which raises :class:`CameraError`.
    """

    name = "camera"

    def __init__(self, reconnect: Reconnect | None = None) -> None:
        self.reconnect = reconnect or Reconnect()
        self.reconnects = 0  # times the camera was lost and opened again
        self.last_activity = time.monotonic()  # a frame or an attempt to open: the source is not stuck
        self._stop = threading.Event()
        self._opened = False
        self._last_frame: float | None = None
        self._problem: str | None = "not started"

    # -- what a backend implements ---------------------------------------------------------

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- the shared behaviour --------------------------------------------------------------

    def health(self) -> Health:
        """``(ok, detail)``: ok while frames arrive; detail says what is wrong otherwise."""
        if self._problem is not None:
            return Health(False, f"{self.name}: {self._problem}")
        if self._last_frame is None:
            return Health(False, f"{self.name}: opened, no frame yet")
        age = time.monotonic() - self._last_frame
        if age > self.reconnect.stale_after_s:
            return Health(False, f"{self.name}: no frame for {age:.0f} s")
        return Health(True, f"{self.name}: streaming ({self.reconnects} reconnects)")

    def close(self) -> None:
        """Stop the iteration (from any thread, at any time, also before it starts); the camera is
        released by the iterating thread. A closed source yields nothing more."""
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        start = time.monotonic()
        index = attempts = failed = 0
        try:
            while not self._stop.is_set():
                if not self._opened:
                    attempts = self._try_open(attempts)
                    continue
                try:
                    image = self._read()
                except Exception as exc:  # a backend error is a failed read, not the end of the bus
                    log.warning("%s: read failed: %s", self.name, exc)
                    image = None
                mono, wall = time.monotonic(), time.time()
                self.last_activity = mono
                if image is None:
                    failed += 1
                    if failed >= self.reconnect.failed_reads:
                        self._lost(f"{failed} reads in a row without a frame")
                        failed = 0
                    continue
                failed = 0
                self._last_frame = mono
                yield Frame(index, mono - start, image, mono, wall)
                index += 1
        finally:
            self._release()

    def _try_open(self, attempts: int) -> int:
        """One attempt to open; returns the count of failed attempts in a row."""
        self.last_activity = time.monotonic()
        try:
            self._open()
        except CameraError as exc:  # permanent: a missing package or a build without the backend
            self._problem = str(exc)
            self._release()
            log.error("%s: %s", self.name, exc)
            raise
        except Exception as exc:
            attempts += 1
            self._problem = f"cannot open ({exc})"
            self._release()
            limit = self.reconnect.max_attempts
            if not self.reconnect.enabled or (limit and attempts >= limit):
                log.error("%s: cannot open after %d attempt(s): %s", self.name, attempts, exc)
                raise CameraError(f"{self.name}: cannot open after {attempts} attempt(s): {exc}") from exc
            delay = self.reconnect.delay(attempts)
            log.warning("%s: cannot open (%s); retrying in %.1f s", self.name, exc, delay)
            self._stop.wait(delay)
            return attempts
        self._opened = True
        self._problem = None
        self._last_frame = None
        log.info("%s: opened", self.name)
        return 0

    def _lost(self, why: str) -> None:
        log.warning("%s: camera lost (%s); reconnecting", self.name, why)
        self._problem = f"lost ({why}), reconnecting"
        self._release()
        self.reconnects += 1
        if not self.reconnect.enabled:
            raise CameraError(f"{self.name}: camera lost ({why}) and reconnect is off")

    def _release(self) -> None:
        """Close the backend (its ``_close`` must accept being called when half or not open)."""
        self._opened = False
        try:
            self._close()
        except Exception as exc:
            log.warning("%s: error while closing: %s", self.name, exc)
        if self._problem is None:
            self._problem = "closed"


class VideoCaptureSource(LiveSource):
    """A live source read through an OpenCV ``VideoCapture``: a backend's ``_open`` only opens it
    and sets ``self._cap``; reading BGR frames as RGB and releasing the capture are done here."""

    def __init__(self, reconnect: Reconnect | None = None) -> None:
        super().__init__(reconnect)
        self._cap: cv2.VideoCapture | None = None

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        if not ok or bgr is None or bgr.size == 0:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
