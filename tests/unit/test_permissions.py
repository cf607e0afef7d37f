"""Issue 19, defect 14: every secret or personal file is created 0600 and refused when others can read it.

The cloud's store.db (names, accounts, operators' password hashes) was created 0644, and Ed25519
private keys were loaded at 0644 without complaint. Checked here whatever the umask (the systemd
units set 0027 on the bus: group-readable files would be refused at the next start).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import protocol
from cloud_sync.cloud.ledger import open_ledger
from cloud_sync.gallery.bus import BusGallery
from edge.fares.ledger import Ledger
from edge.files import InsecureFileError
from enrollment.store import TemplateStore


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


OPENERS: dict[str, Callable[[Path], Any]] = {
    "bus ledger": lambda p: Ledger(p, bus_id="bus-1"),
    "cloud ledger": lambda p: open_ledger(f"sqlite:///{p}"),
    "template store": lambda p: TemplateStore.open(p, p.with_suffix(".key")),
    "bus gallery": lambda p: BusGallery(p, "bus-1", b"k" * 32, "ab" * 32, protocol.generate_key().public_key()),
}


@pytest.mark.parametrize("what", sorted(OPENERS))
def test_personal_databases_are_created_0600_and_refused_when_others_can_read_them(what: str, tmp_path: Path) -> None:
    path = tmp_path / "data" / "file.db"
    OPENERS[what](path).close()
    assert mode(path) == 0o600, f"{what}: {mode(path):04o}"
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if extra.exists():
            assert mode(extra) & 0o077 == 0, extra
    path.chmod(0o644)
    with pytest.raises(InsecureFileError, match=f"chmod 600 {path}"):
        OPENERS[what](path)


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bus_key.pem"
    protocol.save_private_key(protocol.generate_key(), path)
    assert mode(path) == 0o600
    protocol.load_private_key(path)
    path.chmod(0o644)
    with pytest.raises(InsecureFileError, match="private key"):
        protocol.load_private_key(path)
