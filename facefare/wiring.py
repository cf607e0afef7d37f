"""Build each process's parts from its one :class:`~facefare.config.FacefareConfig`.

This is the only place that reads the whole config to make an object: every lower package takes
its own section objects (``[ledger]``, ``[mqtt]``, ...) and plain values. A new part that needs
the config gets a function here, never a ``from_config`` in its own package.
"""

from __future__ import annotations

import time
from typing import Any

from cloud_sync import protocol
from cloud_sync.bus_sync import BusSync
from cloud_sync.cloud.ledger import open_ledger
from cloud_sync.cloud.service import CloudService
from cloud_sync.gallery.bus import BusGallery
from cloud_sync.sealing import load_key
from edge.door.second_factor import SecondFactor
from edge.faces.engine import FaceEngine
from edge.fares.ledger import Ledger
from enrollment.store import TemplateStore
from facefare.config import FacefareConfig
from hardware.keypad import open_keypad


def face_engine(cfg: FacefareConfig) -> FaceEngine:
    """The face models of ``[models]``, run as ``[edge]`` says (provider, threads, detector, landmarks)."""
    e = cfg.edge
    return FaceEngine(cfg.models.dir, e.providers, e.threads, trt_cache_dir=cfg.data_dir / "trt-cache",
                      detector=e.detector, landmarks=e.landmarks, embedder=e.embedder, mesh=e.mesh)  # fmt: skip


def bus_ledger(cfg: FacefareConfig, *, readonly: bool = False, charging: bool = False) -> Ledger:
    """The bus's fare ledger: ``[ledger]`` for the file and limits, ``[fares]`` for the rules.

    ``charging``: the door's ledger: its boarding times come from the wall clock and are checked
    against a monotonic record (:meth:`edge.fares.ledger.Ledger._trusted_time`), and the file
    passes ``PRAGMA quick_check`` at start or charges no one."""
    lc = cfg.ledger
    return Ledger(
        lc.resolve_path(cfg.data_dir),
        cfg.fares,
        bus_id=lc.bus_id,
        max_bytes=lc.max_bytes,
        busy_timeout_ms=lc.busy_timeout_ms,
        min_free_bytes=lc.min_free_bytes,
        readonly=readonly,
        monotonic_ns=time.monotonic_ns if charging else None,
        check_integrity=charging,
    )


def bus_gallery(cfg: FacefareConfig, model_sha256: str) -> BusGallery:
    """The bus's encrypted gallery: ``[enrollment]`` paths, ``[ledger] bus_id``, ``[sync]`` keys."""
    e = cfg.enrollment
    return BusGallery(
        e.path("gallery_db", cfg.data_dir),
        cfg.ledger.bus_id,
        load_key(e.path("gallery_key_file", cfg.data_dir)),
        model_sha256,
        protocol.public_key_from_text(cfg.sync.cloud_public_key),
        bus_key=protocol.load_private_key(cfg.sync.resolve_key_file(cfg.data_dir)),
        sync_timeout_s=e.sync_timeout_s,
    )


def second_factor(cfg: FacefareConfig, gallery: BusGallery) -> SecondFactor | None:
    """The door's second factor: ``[second_factor]`` keypad and limits, codes from the bus's gallery."""
    sf = cfg.second_factor
    keypad = open_keypad(sf.keypad, sf.keypad_device)
    if keypad is None:
        return None
    return SecondFactor(keypad, gallery.code_hash, gallery.code_key, sf)


def bus_sync(cfg: FacefareConfig, ledger: Ledger, **kwargs: Any) -> BusSync:
    """The bus's outbox sync: ``[sync]`` keys and batching, ``[mqtt]``, ``[ledger] bus_id``."""
    sc = cfg.sync
    key_file = sc.resolve_key_file(cfg.data_dir)
    if not key_file.exists():
        raise FileNotFoundError(f"no bus key at {key_file}; create one with 'facefare cloud keygen --out {key_file}'")
    if not sc.cloud_public_key:
        raise ValueError("sync.cloud_public_key is not set; copy the cloud's public key from 'facefare cloud keygen'")
    return BusSync(
        cfg.ledger.bus_id,
        ledger,
        protocol.load_private_key(key_file),
        protocol.public_key_from_text(sc.cloud_public_key),
        cfg.mqtt,
        batch_size=sc.batch_size,
        max_inflight_batches=sc.max_inflight_batches,
        ack_timeout_s=sc.ack_timeout_s,
        heartbeat_interval_s=sc.heartbeat_interval_s,
        **kwargs,
    )


def cloud_service(cfg: FacefareConfig) -> CloudService:
    """The cloud ledger service: ``[cloud]`` for the ledger and key, ``[mqtt]`` for the broker."""
    cc = cfg.cloud
    key_file = cc.resolve_key_file(cfg.data_dir)
    if not key_file.exists():
        raise FileNotFoundError(f"no cloud key at {key_file}; create one with 'facefare cloud keygen'")
    key = protocol.load_private_key(key_file)
    url = cc.resolve_url(cfg.data_dir)
    ledger = open_ledger(url, cfg.fares)
    more = [open_ledger(url, cfg.fares) for _ in range(cc.writers - 1)] if ledger.concurrent_writers else []
    return CloudService(
        ledger,
        key,
        cfg.mqtt,
        client_id=cfg.mqtt.client_id or protocol.CLOUD,
        window_ms=cc.window_s * 1000,
        max_batch_messages=cc.max_batch_messages,
        settle_interval_s=cc.settle_interval_s,
        settle_ledger=open_ledger(url, cfg.fares),  # settlement on its own connection and thread
        writer_ledgers=more,
    )


def template_store(cfg: FacefareConfig) -> TemplateStore:
    """The cloud's encrypted template store: ``[enrollment]`` store, key file and photo policy."""
    e = cfg.enrollment
    store, key = e.path("store", cfg.data_dir), e.path("key_file", cfg.data_dir)
    return TemplateStore.open(store, key, keep_photos=e.keep_photos)
