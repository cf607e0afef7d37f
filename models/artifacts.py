"""Writing artefacts so that the same input gives the same bytes (reproducible conversion)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``numpy.savez`` but byte-for-byte reproducible: sorted names, fixed timestamps."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
