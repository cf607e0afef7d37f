"""Constants and small builders that several test modules share (test modules never import each other)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from cloud_sync.gallery.bus import BusGallery
from cloud_sync.protocol import generate_key
from edge.faces.match import Gallery
from enrollment.distribution import GalleryDistributor
from enrollment.store import TemplateStore

ROOT = Path(__file__).resolve().parents[1]
#: The face photos and clip, shipped as the demo's data (facefare/demo/data/README.md).
FIXTURES = ROOT / "facefare" / "demo" / "data"
CLIP = "short_hamilton_clip.mp4"
#: Real footage of a boarding with consent: a man, neutral (frames 0-15), then smiling (from ~18);
#: enrolled as "man" from another recording of him (RIDER_ENROLL_FRAME). footage/README.md.
RIDER_CLIP = "footage/single_face.mp4"
RIDER_ENROLL_FRAME = ("footage/face_noface.mov", 5)
#: One enrollment photo per rider of the clip tests.
ENROLL = {
    "lin": "lin_manuel_miranda.png",
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "rose": "rose_leslie1.jpg",
    "kit": "kit_harington1.jpeg",
    "alex": "alex_lacamoire2.jpg",
}


def write_man_photo(path: Path) -> Path:
    """The man of RIDER_CLIP as an enrollment photo file (a frame of another recording of him)."""
    import cv2

    from facefare.demo.photos import frame_of

    rgb = frame_of(FIXTURES / RIDER_ENROLL_FRAME[0], RIDER_ENROLL_FRAME[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_door_camera_file(path: Path) -> Path:
    """One video file for a bus camera: the Hamilton clip (Lin only talks), then RIDER_CLIP (the
    man smiles from neutral and is charged). Both are 640x360."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
    for clip in (CLIP, RIDER_CLIP):
        cap = cv2.VideoCapture(str(FIXTURES / clip))
        while (got := cap.read())[0]:
            writer.write(got[1])
        cap.release()
    writer.release()
    return path


def fixture_identities() -> dict[str, str]:
    with open(FIXTURES / "MANIFEST.tsv", newline="") as fh:
        return {r["file"]: r["identity"] for r in csv.DictReader(fh, delimiter="\t")}


def make_gallery(templates: dict[str, np.ndarray], riders: list[str]) -> Gallery:
    return Gallery(riders, np.stack([templates[r] for r in riders]))


def reference(module: str) -> ModuleType:
    """Import a reference package (dlib, face_recognition, ...) of the 'reference' extra.

    On a developer's machine without it the test is skipped; in CI (``CI`` set) a missing
    reference package fails the test, so parity is never silently left unchecked.
    """
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


# -- galleries: synthetic templates, a cloud distributor wired straight to its buses ----------------

MODEL = "a" * 64
OTHER_MODEL = "b" * 64


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * 0.9


class Fleet:
    """A cloud distributor and buses wired directly (publish = hand the payload to the bus)."""

    def __init__(self, tmp: Path, store: TemplateStore, buses: tuple[str, ...] = ("bus-1",)) -> None:
        self.cloud_key = generate_key()
        self.bus_keys = {b: generate_key() for b in buses}
        self.dist = GalleryDistributor(store, self.cloud_key, MODEL,
                                       bus_keys={b: k.public_key() for b, k in self.bus_keys.items()}.get)  # fmt: skip
        self.sent: list[tuple[str, bytes]] = []
        self.acks: list[tuple[str, bytes]] = []
        self.dist.publish = lambda topic, payload: self.sent.append((topic, payload))
        self.buses = {}
        for b in buses:
            secret = self.dist.register_bus(b)
            bus = BusGallery(tmp / f"{b}.db", b, secret, MODEL, self.cloud_key.public_key(), bus_key=self.bus_keys[b])
            bus.publish = lambda topic, payload: self.acks.append((topic, payload))
            self.buses[b] = bus

    def deliver(self) -> list[str]:
        """Hand every published delta to its bus, then every ack to the cloud."""
        outcomes = []
        while self.sent or self.acks:
            sent, self.sent = self.sent, []
            for topic, payload in sent:
                bus = topic.split("/")[3]
                outcomes.append(self.buses[bus].handle(topic, payload))
            acks, self.acks = self.acks, []
            for topic, payload in acks:
                self.dist.handle(topic, payload)
        return outcomes


# -- a cloud and one bus, provisioned as an operator does it, for tests that run `facefare bus run` --

FARES_TOML = '[fares]\ncurrency = "EUR"\n[fares.routes]\n"1" = 250\n'


def mqtt_toml(cfg) -> str:
    """The ``[mqtt]`` section for one user of a test broker (``MosquittoServer.config_for``)."""
    return (f'[mqtt]\nhost = "{cfg.host}"\nport = {cfg.port}\nca_file = "{cfg.ca_file}"\n'
            f'username = "{cfg.username}"\npassword_file = "{cfg.password_file}"\nkeepalive_s = 5\n')  # fmt: skip


@dataclass
class ProvisionedBus:
    """What :func:`provision_bus` leaves: the cloud's config and CLI, bus-1's keys, the door's camera file."""

    cloud_toml: Path
    cloud_dir: Path
    bus_dir: Path
    cloud_public: str
    camera_file: Path
    cloud_cli: Callable[..., str]
    bus_key: Any  # bus-1's Ed25519 private key (its public key verifies the bus's messages)


def provision_bus(tmp_path: Path, models_dir: Path, faces_dir: Path, broker, *, register_key: bool = True):
    """The cloud's key, bus-1's key (registered with the cloud ledger if ``register_key``) and gallery
    key, Lin and the man of single_face.mp4 enrolled (their deltas wait at the broker, retained), and
    the door camera file: the Hamilton clip, then the man's boarding."""
    from click.testing import CliRunner

    from cloud_sync import protocol
    from facefare.cli import main

    cloud_dir, bus_dir = tmp_path / "cloud", tmp_path / "bus"
    cloud_toml = tmp_path / "cloud.toml"
    cloud_toml.write_text(f'data_dir = "{cloud_dir}"\nlog_level = "INFO"\n[models]\ndir = "{models_dir}"\n'
                          + FARES_TOML + mqtt_toml(broker.config_for("cloud")))  # fmt: skip
    runner = CliRunner()

    def cloud_cli(*args: str) -> str:
        res = runner.invoke(main, ["--config", str(cloud_toml), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    cloud_cli("cloud", "keygen")
    cloud_public = protocol.public_key_text(protocol.load_private_key(cloud_dir / "cloud_key.pem").public_key())
    bus_key = protocol.generate_key()
    protocol.save_private_key(bus_key, bus_dir / "bus_key.pem")
    if register_key:
        cloud_cli("cloud", "register-bus", "bus-1", "--public-key", protocol.public_key_text(bus_key.public_key()))
    cloud_cli("enrollment", "register-bus", "bus-1", "--out", str(bus_dir / "gallery.key"))
    photos = tmp_path / "photos"
    (photos / "lin").mkdir(parents=True)
    (photos / "lin" / "lin_manuel_miranda.png").write_bytes((faces_dir / "lin_manuel_miranda.png").read_bytes())
    write_man_photo(photos / "man" / "man.jpg")
    assert "published" in cloud_cli("enroll", str(photos), "--quiet")
    camera_file = write_door_camera_file(tmp_path / "door.mp4")
    return ProvisionedBus(cloud_toml, cloud_dir, bus_dir, cloud_public, camera_file, cloud_cli, bus_key)
