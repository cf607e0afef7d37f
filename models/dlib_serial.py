"""Reader for dlib's binary serialisation format (our own code, written from dlib's serialize.h).

The primitives, as dlib writes them:

* signed/unsigned integers: one control byte whose low 4 bits give how many little-endian
  bytes follow and whose bit 0x80 marks a negative number, then those bytes;
* floats and doubles: the integer ``mantissa`` then the integer ``exponent`` (value =
  mantissa * 2**exponent; exponents 32000/32001/32002 stand for +inf/-inf/nan);
* bool: one ASCII byte, ``'1'`` or ``'0'``;
* std::string: its length as an integer, then the bytes;
* std::vector: its length as an integer, then the items;
* dlib::matrix: ``-rows`` and ``-cols`` as integers (negative marks the current format), then
  the items row by row;
* dnn tensors: version 2, then num_samples, k, nr, nc as integers, then raw little-endian
  float32 data; alias tensors: version 1 and the four sizes, no data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibFormatError(ValueError):
    """The bytes are not what dlib's serialisation format allows at this point."""


class DlibReader:
    """Sequential reader over the bytes of one serialised dlib object."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = data
        self.pos = 0
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path) -> DlibReader:
        path = Path(path)
        return cls(path.read_bytes(), name=path.name)

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: byte {self.pos}: {what}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"wanted {n} bytes but the data ends at byte {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    # -- primitives ------------------------------------------------------------------------

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("float in dlib's old ASCII format is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def string(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def peek_string(self) -> str | None:
        """The string at the current position if one plausibly starts here, else None."""
        start = self.pos
        try:
            n = self.int()
            if not 0 < n < 64:
                return None
            text = self.take(n)
        except DlibFormatError:
            return None
        finally:
            self.pos = start
        if all(32 < b < 127 for b in text):
            return text.decode("ascii")
        return None

    def expect_string(self, *allowed: str) -> str:
        found = self.string()
        if found not in allowed:
            raise self.fail(f"expected one of {allowed}, found {found!r}")
        return found

    def vector(self, item: Callable[[], T]) -> list[T]:
        return [item() for _ in range(self.int())]

    def matrix(self, item: Callable[[], float] | None = None) -> np.ndarray:
        """A dlib::matrix of floats (or of whatever ``item`` reads) as a 2-D float64 array."""
        rows, cols = self.int(), self.int()
        if rows > 0 or cols > 0:
            raise self.fail("matrix in dlib's pre-2009 format is not supported")
        rows, cols = -rows, -cols
        read = item or self.float
        return np.array([read() for _ in range(rows * cols)], dtype=np.float64).reshape(rows, cols)

    def tensor(self) -> np.ndarray:
        """A dnn resizable_tensor, as a float32 array of shape (num_samples, k, nr, nc)."""
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        return (self.int(), self.int(), self.int(), self.int())
