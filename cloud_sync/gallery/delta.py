"""The plaintext of a gallery delta and its per-bus encryption, shared by the cloud and the bus.

A delta's plaintext is JSON ``{"ops": [...]}``; each op is one of::

    {"op": "add" | "update", "rider_id": "r1", "concession": "adult", "templates": ["<base64 float32 x128>", ...]}
    {"op": "erase", "rider_id": "r1"}

It travels AES-256-GCM encrypted in a signed ``gallery`` envelope (``cloud_sync.protocol.GalleryDelta``)
under the bus's *delta key*; the associated data binds the ciphertext to the bus id, both versions
and the model hash, so a delta for bus-1 does not open on bus-2, and a version number or model
cannot be changed without the decryption failing. Each bus has one 256-bit secret, provisioned when
it is registered; HKDF derives from it the delta key and the key of the bus's own encrypted store.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Annotated, Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_sync.protocol import GalleryDelta

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DIM = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PutOp(_Strict):
    op: Literal["add", "update"]
    rider_id: Id
    concession: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    templates: Annotated[list[str], Field(min_length=1, max_length=20)]
    # The keyed hash of the rider's second-factor code for this bus (base64 of 32 bytes), if they chose one.
    code: Annotated[str, StringConstraints(min_length=44, max_length=44)] | None = None

    def code_hash(self) -> bytes | None:
        if self.code is None:
            return None
        raw = base64.b64decode(self.code, validate=True)
        if len(raw) != 32:
            raise ValueError(f"rider {self.rider_id}: the code hash is not 32 bytes")
        return raw

    def embeddings(self) -> np.ndarray:
        """The templates as a (k, 128) float32 array; ValueError if one is not 128 finite floats."""
        raw = [base64.b64decode(t, validate=True) for t in self.templates]
        if any(len(r) != 4 * DIM for r in raw):
            raise ValueError(f"rider {self.rider_id}: a template is not {DIM} float32 values")
        arr = np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), DIM).astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"rider {self.rider_id}: a template holds NaN or infinity")
        return arr


class EraseOp(_Strict):
    op: Literal["erase"]
    rider_id: Id


Op = Annotated[PutOp | EraseOp, Field(discriminator="op")]


class DeltaOps(_Strict):
    ops: list[Op]


class DeltaError(ValueError):
    """A delta does not open (``reason`` "tampered") or its plaintext is not valid (``reason`` "schema")."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def encode_template(embedding: np.ndarray) -> str:
    return base64.b64encode(np.asarray(embedding, dtype="<f4").reshape(DIM).tobytes()).decode()


def put_op(op: str, rider_id: str, concession: str, embeddings: list[np.ndarray], code: bytes | None = None) -> dict:
    """An add/update op; ``code`` (the keyed hash of the rider's code) only when they chose one, so a
    delta without codes is exactly what buses before the second factor accept."""
    out = {"op": op, "rider_id": rider_id, "concession": concession,
           "templates": [encode_template(e) for e in embeddings]}  # fmt: skip
    if code is not None:
        out["code"] = base64.b64encode(code).decode()
    return out


def op_size(op: dict) -> int:
    """Bytes the op adds to the JSON plaintext."""
    return len(json.dumps(op, separators=(",", ":"))) + 1


def derive_keys(secret: bytes) -> tuple[bytes, bytes]:
    """(delta key, store key) from a bus's 256-bit gallery secret."""
    keys = []
    for info in (b"facefare gallery delta v1", b"facefare gallery store v1"):
        keys.append(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret))
    return keys[0], keys[1]


def code_key(secret: bytes) -> bytes:
    """The key of a bus's second-factor code hashes, from its gallery secret (cloud and bus alike)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"facefare gallery code v1").derive(secret)


def aad(bus_id: str, base_version: int, version: int, model_sha256: str) -> bytes:
    return f"facefare-gallery|{bus_id}|{base_version}|{version}|{model_sha256}".encode()


def seal_delta(
    delta_key: bytes, bus_id: str, base_version: int, version: int, model_sha256: str, ops: list[dict]
) -> GalleryDelta:
    """The encrypted ``gallery`` body moving ``bus_id`` from ``base_version`` to ``version``."""
    nonce = secrets.token_bytes(12)
    plaintext = json.dumps({"ops": ops}, separators=(",", ":")).encode()
    ct = AESGCM(delta_key).encrypt(nonce, plaintext, aad(bus_id, base_version, version, model_sha256))
    return GalleryDelta(
        base_version=base_version, version=version, model_sha256=model_sha256,
        nonce=base64.b64encode(nonce).decode(), ciphertext=base64.b64encode(ct).decode(),
    )  # fmt: skip


def open_delta(delta_key: bytes, bus_id: str, body: GalleryDelta) -> tuple[DeltaOps, list[np.ndarray | None]]:
    """Decrypt and validate a delta for ``bus_id``: its ops and, per op, the decoded templates
    (None for an erase). Raises :class:`DeltaError`."""
    try:
        nonce = base64.b64decode(body.nonce, validate=True)
        ct = base64.b64decode(body.ciphertext, validate=True)
        plaintext = AESGCM(delta_key).decrypt(nonce, ct, aad(bus_id, body.base_version, body.version,
                                                             body.model_sha256))  # fmt: skip
    except (InvalidTag, ValueError) as exc:
        detail = f"delta {body.version} does not decrypt for {bus_id} ({type(exc).__name__})"
        raise DeltaError("tampered", detail) from None
    try:
        ops = DeltaOps.model_validate_json(plaintext)
        embeddings = [op.embeddings() if isinstance(op, PutOp) else None for op in ops.ops]
        for op in ops.ops:
            if isinstance(op, PutOp):
                op.code_hash()
    except ValueError as exc:
        raise DeltaError("schema", f"delta {body.version}: {exc}") from None
    return ops, embeddings
