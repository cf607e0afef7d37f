"""The encrypted template store, the audit log, deltas applied on a bus, and the exact fast matcher.

No face models and no broker here: templates are synthetic 128-d vectors and deltas are handed to
the bus directly (tests/test_gallery_sync.py does the same over a real Mosquitto).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cloud_sync.gallery.bus import BusGallery
from cloud_sync.protocol import Envelope, GalleryAck, encode, generate_key, parse, topic_for
from edge.faces.fast_match import QuantizedGallery, matmul_integer_model
from edge.faces.match import Gallery
from enrollment.store import RiderRecord, StoreError, TemplateStore, create_key, load_key
from tests.helpers import MODEL, OTHER_MODEL, Fleet, reference, vectors


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")


def enroll_many(store: TemplateStore, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    emb = vectors(2 * n, seed).reshape(n, 2, 128)
    riders = {f"r{i:03d}": emb[i] for i in range(n)}
    for rider, e in riders.items():
        store.add_rider(RiderRecord(rider_id=rider, concession="adult"), list(e), model_sha256=MODEL)
    return riders


# -- keys and encryption at rest ------------------------------------------------------------------


def test_key_file_is_private_and_must_stay_so(tmp_path: Path) -> None:
    key = create_key(tmp_path / "k")
    assert oct(os.stat(tmp_path / "k").st_mode & 0o777) == "0o600"
    assert load_key(tmp_path / "k") == key
    with pytest.raises(StoreError, match="already exists"):
        create_key(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        load_key(tmp_path / "k")


def test_store_refuses_another_key(tmp_path: Path, store: TemplateStore) -> None:
    store.close()
    create_key(tmp_path / "other.key")
    with pytest.raises(StoreError, match="does not belong"):
        TemplateStore.open(tmp_path / "store.db", tmp_path / "other.key")


def test_templates_are_encrypted_and_bound_to_rider_and_model(tmp_path: Path, store: TemplateStore) -> None:
    riders = enroll_many(store, 3)
    raw = (tmp_path / "store.db").read_bytes()
    for emb in riders.values():
        assert emb[0].tobytes()[:16] not in raw  # no plaintext float bytes on disk
    t = store.templates("r000")
    assert [x.model_sha256 for x in t] == [MODEL, MODEL]
    np.testing.assert_array_equal(t[0].embedding, riders["r000"][0])
    # a sealed row moved to another rider does not open
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("UPDATE templates SET rider_id = 'r001' WHERE template_id = ?", (t[0].template_id,))
    with pytest.raises(StoreError, match="does not open"):
        store.templates("r001")


def test_audit_log_is_append_only_and_holds_no_biometrics(store: TemplateStore) -> None:
    enroll_many(store, 2)
    store.erase("r001")
    log = store.audit_log()
    assert [a["action"] for a in log] == ["enroll", "enroll", "erase"]
    assert log[-1]["detail"] == {"templates_deleted": 2, "photos_deleted": 0}
    text = json.dumps(log)
    assert len(text) < 2000  # counts, ids and hashes: no 128-number vectors
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit SET actor = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")


def test_erase_deletes_templates_and_personal_data_for_good(tmp_path: Path, store: TemplateStore) -> None:
    store.add_rider(RiderRecord(rider_id="r9", display_name="Ada", account="acct-9"), list(vectors(2)),
                    model_sha256=MODEL)  # fmt: skip
    sealed = [bytes(r[0]) for r in store.db.execute("SELECT ciphertext FROM templates")]
    assert store.erase("r9") == 2
    assert store.templates("r9") == []
    row = store.rider("r9")
    assert row is not None and row["status"] == "erased" and row["display_name"] == row["account"] == ""
    raw = (tmp_path / "store.db").read_bytes()
    assert not any(ct[:32] in raw for ct in sealed)  # secure_delete overwrote them
    with pytest.raises(StoreError, match="already erased"):
        store.erase("r9")
    with pytest.raises(StoreError, match="was erased"):
        store.add_rider(RiderRecord(rider_id="r9"), list(vectors(1)), model_sha256=MODEL)


def test_photos_are_kept_only_when_the_operator_opts_in(tmp_path: Path) -> None:
    off = TemplateStore.open(tmp_path / "a.db", tmp_path / "a.key")
    off.add_rider(RiderRecord(rider_id="r1"), list(vectors(1)), model_sha256=MODEL, photos=[("p.jpg", b"JPEGDATA")])
    assert off.photos("r1") == []
    on = TemplateStore.open(tmp_path / "b.db", tmp_path / "b.key", keep_photos=True)
    on.add_rider(RiderRecord(rider_id="r1"), list(vectors(1)), model_sha256=MODEL, photos=[("p.jpg", b"JPEGDATA")])
    assert on.photos("r1") == [("p.jpg", b"JPEGDATA")]
    assert b"JPEGDATA" not in (tmp_path / "b.db").read_bytes()
    on.erase("r1")
    assert on.photos("r1") == []


# -- deltas on the bus ----------------------------------------------------------------------------


def test_sync_erase_and_confirmation(tmp_path: Path, store: TemplateStore) -> None:
    riders = enroll_many(store, 40)
    fleet = Fleet(tmp_path, store, ("bus-1", "bus-2"))
    fleet.dist.delta_bytes = 20_000  # several deltas
    fleet.dist.sync()
    assert set(fleet.deliver()) == {"applied"}
    for bus in fleet.buses.values():
        assert bus.version == fleet.dist.buses()[0]["version"] > 2
        assert bus.match(riders["r007"][1]).rider_id == "r007"
    assert [b["acked_version"] for b in fleet.dist.buses()] == [b["version"] for b in fleet.dist.buses()]

    bus1 = fleet.buses["bus-1"]
    before = set(bus1.sealed_templates())
    fleet.dist.erase("r007")
    fleet.deliver()
    assert "r007" not in bus1.riders
    assert bus1.match(riders["r007"][1]).rider_id != "r007"
    gone = before - set(bus1.sealed_templates())
    assert len(gone) == 2 and not any(ct[:32] in bus1.stored_bytes() for ct in gone)
    status = fleet.dist.erase_status("r007")
    assert [(s.bus_id, s.confirmed) for s in status] == [("bus-1", True), ("bus-2", True)]
    actions = [a["action"] for a in store.audit_log("r007")]
    assert actions == ["enroll", "erase", "erase_requested", "erase_confirmed", "erase_confirmed"]


def test_rider_scoped_to_some_buses(tmp_path: Path, store: TemplateStore) -> None:
    store.add_rider(RiderRecord(rider_id="r1", buses=["bus-2"]), list(vectors(1)), model_sha256=MODEL)
    fleet = Fleet(tmp_path, store, ("bus-1", "bus-2"))
    fleet.dist.sync()
    fleet.deliver()
    assert fleet.buses["bus-1"].riders == [] and fleet.buses["bus-2"].riders == ["r1"]
    store.update_rider(RiderRecord(rider_id="r1", buses=["bus-1"]))
    fleet.dist.sync()
    fleet.deliver()
    assert fleet.buses["bus-1"].riders == ["r1"] and fleet.buses["bus-2"].riders == []


def test_out_of_order_delta_waits_and_resync_catches_up(tmp_path: Path, store: TemplateStore) -> None:
    enroll_many(store, 3)
    fleet = Fleet(tmp_path, store)
    bus = fleet.buses["bus-1"]
    fleet.dist.sync()
    fleet.deliver()
    store.erase("r001")
    fleet.dist.sync()
    lost = fleet.sent.pop()  # the erase delta is lost on the way
    store.add_rider(RiderRecord(rider_id="r100"), list(vectors(1, 5)), model_sha256=MODEL)
    fleet.dist.sync()
    topic, payload = fleet.sent.pop()
    assert bus.handle(topic, payload) == "pending"  # its base is the lost version
    assert bus.pending_erasures == 0 and bus.rejected["out_of_order"] == 1
    ack = parse(*fleet.acks[-1], {"bus-1": fleet.bus_keys["bus-1"].public_key()}.get)
    assert ack.body.resync is True
    fleet.deliver()  # the resync request makes the cloud resend from the bus's version
    assert "r001" not in bus.riders and "r100" in bus.riders
    assert bus.version == fleet.dist.buses()[0]["version"]
    assert bus.handle(*lost) == "old"


def test_tampered_foreign_and_wrong_model_deltas_are_refused(tmp_path: Path, store: TemplateStore) -> None:
    enroll_many(store, 2)
    fleet = Fleet(tmp_path, store, ("bus-1", "bus-2"))
    fleet.dist.sync("bus-1")
    topic, payload = fleet.sent.pop()
    bus1, bus2 = fleet.buses["bus-1"], fleet.buses["bus-2"]

    data = json.loads(payload)
    ct = bytearray(base64.b64decode(data["body"]["ciphertext"]))
    ct[10] ^= 1
    data["body"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    assert bus1.handle(topic, json.dumps(data).encode()) == "rejected:signature"  # altered on the way
    env = Envelope.model_validate({**{k: v for k, v in data.items() if k != "sig"}})
    resigned = encode(env, fleet.cloud_key)
    assert bus1.handle(topic, resigned) == "rejected:tampered"  # even signed, the ciphertext does not open
    assert bus1.handle(topic, encode(env, generate_key())) == "rejected:signature"  # not the cloud's key

    original = Envelope.model_validate(json.loads(payload))
    foreign = encode(original.model_copy(update={"sig": ""}), fleet.cloud_key)
    assert bus2.handle(topic_for("gallery", "bus-2"), foreign) == "rejected:tampered"  # sealed for bus-1
    assert bus1.version == bus2.version == 0

    other = BusGallery(tmp_path / "other.db", "bus-1", load_secret(fleet, "bus-1"), OTHER_MODEL,
                       fleet.cloud_key.public_key())  # fmt: skip
    assert other.handle(topic, payload) == "rejected:model"
    assert bus1.handle(topic, payload) == "applied"
    assert bus1.version == 1 and len(bus1.riders) == 2


def load_secret(fleet: Fleet, bus_id: str) -> bytes:
    with fleet.dist.store.transaction() as db:
        return fleet.dist._secret(db, bus_id)


def test_apply_is_atomic(tmp_path: Path, store: TemplateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    enroll_many(store, 5)
    fleet = Fleet(tmp_path, store)
    bus = fleet.buses["bus-1"]
    fleet.dist.sync()
    topic, payload = fleet.sent.pop()
    import cloud_sync.gallery.bus as bg

    calls = {"n": 0}
    real_seal = bg.seal

    def failing_seal(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk full")
        return real_seal(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bg, "seal", failing_seal)
    gallery_before = bus.gallery()
    assert bus.handle(topic, payload) == "failed"  # handle never raises (issue 19): it asks for a resync
    assert bus.rejected["apply_failed"] == 1
    assert bus.version == 0 and bus.riders == [] and bus.gallery() is gallery_before
    assert bus.db.execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 0
    monkeypatch.setattr(bg, "seal", real_seal)
    assert bus.handle(topic, payload) == "applied" and len(bus.riders) == 5


def test_bus_reopens_its_encrypted_gallery_and_drops_another_models(tmp_path: Path, store: TemplateStore) -> None:
    riders = enroll_many(store, 3)
    fleet = Fleet(tmp_path, store)
    fleet.dist.sync()
    fleet.deliver()
    secret = load_secret(fleet, "bus-1")
    fleet.buses["bus-1"].close()
    again = BusGallery(tmp_path / "bus-1.db", "bus-1", secret, MODEL, fleet.cloud_key.public_key())
    assert again.version == 1 and again.match(riders["r002"][0]).rider_id == "r002"
    assert riders["r002"][0].tobytes()[:16] not in again.stored_bytes()
    again.close()
    new_model = BusGallery(tmp_path / "bus-1.db", "bus-1", secret, OTHER_MODEL, fleet.cloud_key.public_key())
    assert new_model.version == 0 and new_model.riders == []


def test_readiness_after_reconnect_waits_for_the_head(tmp_path: Path, store: TemplateStore) -> None:
    enroll_many(store, 2)
    fleet = Fleet(tmp_path, store)
    bus = fleet.buses["bus-1"]
    fleet.dist.sync()
    topic, payload = fleet.sent.pop()
    bus.connected()
    assert not bus.ready
    assert bus.handle(topic, payload, retained=True) == "applied"
    assert bus.ready
    bus.sync_timeout_s = 0.0
    bus.connected()
    assert bus.ready  # no head at all: after the timeout the bus charges with what it has


def test_ack_from_unknown_or_forged_bus_is_refused(tmp_path: Path, store: TemplateStore) -> None:
    fleet = Fleet(tmp_path, store)
    forged = encode(Envelope.make("gallery_ack", "bus-1", GalleryAck(version=99)), generate_key())
    assert fleet.dist.handle(topic_for("gallery_ack", "bus-1"), forged) == "rejected:signature"
    stranger = encode(Envelope.make("gallery_ack", "bus-9", GalleryAck(version=1)), generate_key())
    assert fleet.dist.handle(topic_for("gallery_ack", "bus-9"), stranger) == "rejected:unknown_sender"


# -- the fast exact matcher -----------------------------------------------------------------------


def test_quantized_gallery_agrees_with_brute_force() -> None:
    n_riders = 15_000
    x = vectors(2 * n_riders, seed=3)
    ids = [f"r{i}" for i in range(n_riders) for _ in range(2)]
    fast = QuantizedGallery(ids, x, min_size=1_000)
    slow = Gallery(ids, x)
    assert fast.session is not None
    rng = np.random.default_rng(4)
    for k in range(150):
        q = x[rng.integers(len(x))] + rng.normal(0, 0.03, 128).astype(np.float32) if k % 2 else vectors(1, 100 + k)[0]
        a, b = fast.match(q), slow.match(q)
        assert a.rider_id == b.rider_id
        assert a.distance == pytest.approx(b.distance, abs=1e-5)
        assert a.margin == pytest.approx(b.margin, abs=1e-5)
    assert max(fast.shortlist_sizes) < len(x) / 10


def test_handwritten_onnx_model_is_valid_onnx() -> None:
    onnx = reference("onnx")
    model = onnx.load_from_string(matmul_integer_model(np.zeros((128, 5), np.int8)))
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger"]


def test_erasure_reaches_a_large_bus_matcher_at_once(tmp_path: Path, store: TemplateStore) -> None:
    riders = enroll_many(store, 60)
    fleet = Fleet(tmp_path, store)
    bus = fleet.buses["bus-1"]
    bus.fast_min_size = 50  # 120 templates: the int8 index, rebuilt in the background
    fleet.dist.sync()
    fleet.deliver()
    bus.refresh()
    assert isinstance(bus.gallery(), QuantizedGallery)
    assert bus.match(riders["r010"][0]).rider_id == "r010"
    fleet.dist.erase("r010")
    fleet.deliver()
    # before any rebuild: the erased rider is already out, the others still match exactly
    assert bus._stale and bus.match(riders["r010"][0]).rider_id != "r010"
    remaining = Gallery([r for r in riders if r != "r010" for _ in range(2)],
                        np.concatenate([e for r, e in riders.items() if r != "r010"]))  # fmt: skip
    for probe in (riders["r010"][0], riders["r011"][1] + 0.02, vectors(1, 99)[0]):
        a, b = bus.match(probe), remaining.match(probe)
        assert a.rider_id == b.rider_id
        assert a.distance == pytest.approx(b.distance, abs=1e-5) and a.margin == pytest.approx(b.margin, abs=1e-5)
    bus.refresh()
    assert not bus._stale and "r010" not in bus.gallery().riders


def test_quantized_gallery_without_riders() -> None:
    x = vectors(3_000, seed=8)
    ids = [f"r{i // 3}" for i in range(3_000)]
    fast = QuantizedGallery(ids, x, min_size=100)
    fewer = fast.without(["r5", "r6", "nobody"])
    assert len(fewer) == len(fast) - 6 and "r5" not in fewer.riders and "r5" in fast.riders
    assert fast.match(x[16]).rider_id == "r5" and fewer.match(x[16]).rider_id != "r5"
    alone = QuantizedGallery(["a", "a", "b"], x[:3], min_size=1).without(["a"])
    assert alone.match(x[0]).rider_id == "b" and alone.match(x[0]).margin == float("inf")
    assert alone.without(["b"]).match(x[0]).rider_id is None
