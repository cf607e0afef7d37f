"""Secrets at rest: 256-bit key files (mode 0600) and AES-256-GCM sealing with associated data.

Shared by the cloud's template store (:mod:`enrollment.store`) and the bus's gallery
(:mod:`cloud_sync.gallery.bus`): every template on disk, on the bus or in the cloud, is sealed
with :func:`seal` and bound by its associated data to the rider, row and model it belongs to.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store or its key cannot be used, or an operation is not allowed (the message says why)."""


def create_key(path: Path) -> bytes:
    """Write a new random 256-bit key to ``path`` (base64, mode 0600); refuses to overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreError(f"key file {path} already exists; not overwriting it") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key


def load_key(path: Path, *, create: bool = False) -> bytes:
    """Read a 256-bit key file; refuse one that others can read. ``create``: make it if absent."""
    path = Path(path)
    if not path.exists():
        if create:
            log.info("created key file %s", path)
            return create_key(path)
        raise StoreError(f"key file {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StoreError(f"key file {path} has mode {mode:04o}; it must be readable by its owner only (chmod 600)")
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError:
        raise StoreError(f"key file {path} is not base64") from None
    if len(key) != 32:
        raise StoreError(f"key file {path} holds {len(key)} bytes; a 256-bit key has 32")
    return key


def seal(key: bytes, data: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM: returns (nonce, ciphertext with tag)."""
    nonce = secrets.token_bytes(12)
    return nonce, AESGCM(key).encrypt(nonce, data, aad)


def unseal(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Open what :func:`seal` made; raises :class:`StoreError` if it was altered or bound elsewhere."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise StoreError("a sealed value does not open: altered, or bound to another rider, row or model") from None
