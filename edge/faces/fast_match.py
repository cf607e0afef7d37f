"""Exact 1:N matching for large galleries: an int8 pre-filter with a proven error bound, then float32.

:class:`Gallery` (``edge.faces.match``) reads all N x 128 float32 values per query, which at a
million templates costs ~30-40 ms on two cores (memory bound). :class:`QuantizedGallery` gives
the *same answer* (best rider, distance, margin to the best other rider) faster:

1. Every template is stored once more as int8 (scale ``s_x``; 4x less memory to read) and the
   query is rounded to uint8 (scale ``s_q``); onnxruntime's ``MatMulInteger`` (prepacked int8
   weights) gives all approximate squared distances ``a_i`` in one call.
2. The rounding error of each ``a_i`` is bounded: ``|a_i - d_i^2| <= eps`` with
   ``eps = s_q * L1max + s_x * |q|_1`` (+ float slack), where ``L1max`` is the largest L1 norm
   of a template and ``|q|_1`` the query's.
3. Let ``A2`` be the smallest ``a_i`` among templates of riders other than the approximate
   best's. The true best and second-best riders' nearest templates both have ``a_i <= A2 + 2 eps``
   (per-rider minima move by at most ``eps``), so every template above that bound is dropped and
   the few that remain are measured exactly in float32.

Small galleries (below ``min_size``) and machines without onnxruntime use the plain float32 path.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from edge.faces.match import Gallery, Match

log = logging.getLogger(__name__)

SLACK = 1e-4  # float32 rounding of the distance formula, on squared distances


# -- a four-field ONNX model, written directly (onnx is not a bus dependency) -----------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray, onnx_type: int) -> bytes:
    dims = b"".join(_field(1, int(d)) for d in array.shape)
    return dims + _field(2, onnx_type) + _field(8, name) + _field(9, np.ascontiguousarray(array).tobytes())


def _value_info(name: str, onnx_type: int, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)
    return _field(1, name) + _field(2, _field(1, _field(1, onnx_type) + _field(2, dims)))


UINT8, INT8, INT32 = 2, 3, 6


def matmul_integer_model(weights: np.ndarray) -> bytes:
    """ONNX bytes of ``Y[1, N] = MatMulInteger(A[1, 128] uint8, W[128, N] int8, zero point 128)``."""
    dim, n = weights.shape
    node = _field(1, "A") + _field(1, "W") + _field(1, "zp") + _field(2, "Y") + _field(4, "MatMulInteger")
    graph = (
        _field(1, node)
        + _field(2, "match")
        + _field(5, _tensor("W", weights.astype(np.int8), INT8))
        + _field(5, _tensor("zp", np.array(128, np.uint8), UINT8))
        + _field(11, _value_info("A", UINT8, (1, dim)))
        + _field(12, _value_info("Y", INT32, (1, n)))
    )
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(7, graph) + _field(8, opset)


# -- the gallery ---------------------------------------------------------------------------------


class QuantizedGallery:
    """Drop-in for :class:`edge.faces.match.Gallery` (``match``, ``len``, ``riders``), exact and faster at scale."""

    def __init__(
        self, rider_ids: list[str], embeddings: np.ndarray, *, min_size: int = 20_000, threads: int = 2
    ) -> None:
        n = len(rider_ids)
        x = np.asarray(embeddings, np.float32).reshape(n, -1) if n else np.zeros((0, 128), np.float32)
        codes: dict[str, int] = {}  # rider id -> code, in order of first appearance (no string sort)
        index = np.fromiter((codes.setdefault(str(r), len(codes)) for r in rider_ids), dtype=np.int64, count=n)
        order = np.argsort(index, kind="stable")  # each rider's templates contiguous
        grouped = bool(np.all(order == np.arange(n)))
        self._names = np.asarray(list(codes), dtype=object)
        self._rider_index = index if grouped else index[order]
        self.embeddings = np.ascontiguousarray(x if grouped else x[order])
        self.rider_ids = self._names[self._rider_index]
        self.sq_norms = np.einsum("ij,ij->i", self.embeddings, self.embeddings)
        bounds = np.flatnonzero(np.diff(self._rider_index)) + 1
        self._starts = np.concatenate([[0], bounds]).astype(np.int64)
        self._ends = np.concatenate([bounds, [n]]).astype(np.int64)
        self._codes = codes
        self._gone: frozenset[str] = frozenset()  # riders removed by without()
        self._removed = np.zeros(0, np.int64)  # their rows
        self.session = None
        self.small: Gallery | None = None
        self.shortlist_sizes: list[int] = []
        if n < max(min_size, 1):
            self.small = Gallery(list(rider_ids), x)
            return
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is a bus dependency
            log.warning("onnxruntime missing: %d templates matched in plain float32", n)
            self.small = Gallery(list(rider_ids), x)
            return
        self.s_x = float(np.abs(self.embeddings).max() / 127.0) or 1.0
        scaled = self.embeddings * np.float32(1.0 / self.s_x)
        np.rint(scaled, out=scaled)
        np.clip(scaled, -127, 127, out=scaled)
        q8 = scaled.astype(np.int8)
        del scaled
        self.l1max = float(np.abs(q8).sum(axis=1, dtype=np.int64).max()) * self.s_x
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(matmul_integer_model(np.ascontiguousarray(q8.T)), opts,
                                            providers=["CPUExecutionProvider"])  # fmt: skip

    def __len__(self) -> int:
        return len(self.rider_ids) - len(self._removed)

    @property
    def riders(self) -> list[str]:
        return sorted(str(r) for r in self._names if r not in self._gone)

    def without(self, rider_ids: list[str]) -> QuantizedGallery:
        """A new matcher that never answers these riders, sharing this one's arrays (no rebuild).

        This is how an erasure reaches the matcher at once on a large gallery, while the full
        rebuild runs in the background.
        """
        clone = copy.copy(self)
        clone.shortlist_sizes = []
        clone._gone = self._gone | frozenset(rider_ids)
        rows = [np.arange(self._starts[c], self._ends[c]) for r in rider_ids if (c := self._codes.get(r)) is not None]
        clone._removed = np.concatenate([self._removed, *rows]) if rows else self._removed
        if self.small is not None:
            keep = ~np.isin(self.small.rider_ids.astype(str), list(clone._gone))
            clone.small = Gallery([str(r) for r in self.small.rider_ids[keep]], self.small.embeddings[keep])
        return clone

    def distances(self, query: np.ndarray) -> np.ndarray:
        """Exact Euclidean distance to every template (rows grouped by rider), as ``Gallery.distances``."""
        q = np.asarray(query, dtype=np.float32)
        return np.sqrt(np.maximum(self.sq_norms - 2.0 * (self.embeddings @ q) + float(q @ q), 0.0))

    def approximate(self, query: np.ndarray) -> tuple[np.ndarray, float]:
        """Approximate squared distances minus ``|q|^2`` for every template, and their error bound."""
        q = np.asarray(query, np.float32)
        s_q = float(np.abs(q).max() / 127.0) or 1.0
        a = (np.clip(np.rint(q / s_q), -127, 127) + 128).astype(np.uint8)[None]
        dots = self.session.run(None, {"A": a})[0][0].astype(np.float32)
        dots *= np.float32(2.0 * self.s_x * s_q)
        approx = np.subtract(self.sq_norms, dots, out=dots)
        if len(self._removed):
            approx[self._removed] = np.inf
        eps = 2.0 * (s_q / 2.0 * self.l1max + self.s_x / 2.0 * float(np.abs(q).sum())) + SLACK
        return approx, eps

    def shortlist(self, query: np.ndarray) -> np.ndarray:
        """Indices of the templates that can hold the best or second-best rider's nearest template."""
        approx, eps = self.approximate(query)
        best = int(np.argmin(approx))
        if not np.isfinite(approx[best]):
            return np.zeros(0, np.int64)  # every template was removed
        rider = self._rider_index[best]
        lo, hi = self._starts[rider], self._ends[rider]
        saved = approx[lo:hi].copy()
        approx[lo:hi] = np.inf
        second = float(approx.min())
        approx[lo:hi] = saved
        if not np.isfinite(second):
            return np.arange(lo, hi)  # the only rider left
        return np.flatnonzero(approx <= second + 2.0 * eps)

    def match(self, query: np.ndarray) -> Match:
        if self.small is not None:
            return self.small.match(query)
        if len(self) == 0:
            return Match(None, float("inf"), float("inf"))
        idx = self.shortlist(query)
        self.shortlist_sizes.append(len(idx))
        if len(idx) == 0:
            return Match(None, float("inf"), float("inf"))
        q = np.asarray(query, np.float32)
        x = self.embeddings[idx]
        dist = np.sqrt(np.maximum(self.sq_norms[idx] - 2.0 * (x @ q) + float(q @ q), 0.0))
        riders = self._rider_index[idx]
        order = np.lexsort((dist, riders))
        first = np.ones(len(order), bool)
        first[1:] = riders[order][1:] != riders[order][:-1]
        per_rider = order[first]  # each shortlisted rider's nearest template
        ranked = per_rider[np.argsort(dist[per_rider], kind="stable")]
        d1 = float(dist[ranked[0]])
        d2 = float(dist[ranked[1]]) if len(ranked) > 1 else float("inf")
        return Match(str(self._names[riders[ranked[0]]]), d1, d2 - d1)
