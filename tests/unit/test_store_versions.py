"""Every store opens a file written by the previous version (commit ab2c9fd, before versioned schemas)
and keeps its data; a file from a newer version is refused with its name.

The files in tests/fixtures/stores/v0/ were written by that commit's own code
(tests/fixtures/stores/make_v0.py): a bus ledger with one fare, a bus gallery holding rider r1, the
cloud's template store with its gallery-distribution tables, a cloud ledger on SQLite with the
fare, and the dashboard's users file.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from cloud_sync import protocol
from cloud_sync.cloud.ledger import SQLITE_MIGRATIONS, open_ledger
from cloud_sync.dashboard.auth import AuthError, UserStore
from cloud_sync.gallery.bus import MIGRATIONS as GALLERY_MIGRATIONS
from cloud_sync.gallery.bus import BusGallery
from cloud_sync.sqlite_schema import SchemaError, applied
from edge.fares.ledger import SCHEMA_VERSION, Ledger
from edge.fares.rules import FaresConfig
from enrollment.distribution import MIGRATIONS as DISTRIBUTION_MIGRATIONS
from enrollment.distribution import GalleryDistributor
from enrollment.store import MIGRATIONS as STORE_MIGRATIONS
from enrollment.store import TemplateStore

V0 = Path(__file__).resolve().parents[1] / "fixtures" / "stores" / "v0"
MODEL = "a" * 64


@pytest.fixture
def v0(tmp_path: Path) -> Path:
    out = tmp_path / "v0"
    shutil.copytree(V0, out)
    for path in out.iterdir():
        # git keeps no modes, and today's stores refuse files others can read (what the upgrade notes
        # tell an operator to chmod): the files as an operator upgrading would have them.
        path.chmod(0o600)
    return out


def test_bus_ledger_of_the_previous_version(v0: Path) -> None:
    with Ledger(v0 / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bus-1") as led:
        assert led.schema_version == SCHEMA_VERSION
        assert [f["rider_id"] for f in led.fares()] == ["r1"]
        assert len(led.outbox()) == 1


def test_template_store_and_distribution_of_the_previous_version(v0: Path) -> None:
    store = TemplateStore.open(v0 / "store.db", v0 / "store.key")
    assert [r["rider_id"] for r in store.riders()] == ["r1"]
    assert len(store.templates("r1", MODEL)) == 2
    dist = GalleryDistributor(store, protocol.generate_key(), MODEL)
    assert [b["bus_id"] for b in dist.buses()] == ["bus-1"]
    assert applied(store.db, STORE_MIGRATIONS) == ["0001_initial", "0002_codes_zones"]
    assert applied(store.db, DISTRIBUTION_MIGRATIONS) == ["0001_initial", "0002_bus_zones"]
    store.close()


def test_bus_gallery_of_the_previous_version(v0: Path) -> None:
    cloud_key = protocol.public_key_from_text((v0 / "cloud.pub").read_text())
    gallery = BusGallery(v0 / "gallery.db", "bus-1", (v0 / "gallery.secret").read_bytes(), MODEL, cloud_key)
    assert gallery.version == 1 and gallery.riders == ["r1"]
    assert gallery.match(gallery.gallery().embeddings[0]).rider_id == "r1"  # the sealed templates still open
    assert applied(gallery.db, GALLERY_MIGRATIONS) == ["0001_initial", "0002_codes"]
    gallery.close()


def test_cloud_ledger_of_the_previous_version(v0: Path) -> None:
    ledger = open_ledger(f"sqlite:///{v0 / 'cloud.db'}", FaresConfig(routes={"1": 250}))
    assert ledger.execute("SELECT rider_id FROM fares") == [("r1",)]
    assert applied(ledger.conn, SQLITE_MIGRATIONS) == ["0001_initial"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):  # the triggers are still there
        ledger.execute("DELETE FROM fares")
    ledger.close()


def test_dashboard_users_of_the_previous_version(v0: Path) -> None:
    users = UserStore(v0 / "users.json")
    assert users.authenticate("admin", "correct horse battery") is not None
    users.set_user("viewer", "another long password", "read-only")
    assert '"version": 1' in (v0 / "users.json").read_text()
    assert UserStore(v0 / "users.json").authenticate("admin", "correct horse battery") is not None


def test_a_store_from_a_newer_version_is_refused_by_name(v0: Path) -> None:
    TemplateStore.open(v0 / "store.db", v0 / "store.key").close()
    with sqlite3.connect(v0 / "store.db") as db:
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                   "VALUES ('facefare-template-store', '0099_future', 'later')")  # fmt: skip
    with pytest.raises(SchemaError, match=r"store\.db was written by a newer FaceFare"):
        TemplateStore.open(v0 / "store.db", v0 / "store.key")
    (v0 / "users.json").write_text('{"version": 2, "users": {}}')
    with pytest.raises(AuthError, match="newer"):
        UserStore(v0 / "users.json").names()
