"""The photo demo: enroll one photo per person from the shipped photos, identify all others.

Writes ``contact_sheet.jpg`` (each photo with boxes and names) and ``summary.tsv`` to the output
folder, and returns the rows so the CLI can print them.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge import faces
from edge.faces.images import ImageError
from facefare import wiring

log = logging.getLogger(__name__)

#: The shipped photos and clip (package data; see data/README.md for their sources and licence).
FIXTURES = Path(__file__).resolve().parent / "data"
ENROLL = {
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "kit_harington": "kit_harington1.jpeg",
    "rose_leslie": "rose_leslie1.jpg",
    "alex_lacamoire": "alex_lacamoire2.jpg",
    "lin_manuel_miranda": "lin_manuel_miranda.png",
}
THRESHOLD = 0.6


@dataclass
class Row:
    file: str
    expected: str
    found: str
    distance: float


def read_manifest(folder: Path = FIXTURES) -> dict[str, str]:
    with open(folder / "MANIFEST.tsv", newline="") as fh:
        return {r["file"]: r["identity"] for r in csv.DictReader(fh, delimiter="\t")}


def _thumb(img: np.ndarray, boxes, names, height: int = 240) -> np.ndarray:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    for (top, right, bottom, left), name in zip(boxes, names, strict=True):
        colour = (0, 200, 0) if name != "unknown" else (0, 0, 230)
        cv2.rectangle(bgr, (left, top), (right, bottom), colour, max(2, img.shape[0] // 200))
        cv2.putText(bgr, name, (left, max(15, top - 6)), cv2.FONT_HERSHEY_SIMPLEX, max(0.5, img.shape[0] / 600),
                    colour, max(1, img.shape[0] // 300))
    scale = height / bgr.shape[0]
    return cv2.resize(bgr, (max(1, int(bgr.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def run_photo_demo(cfg, out: Path, folder: Path = FIXTURES) -> list[Row]:
    """Run the demo with the configuration ``cfg``; returns one row per face found."""
    faces.use_models(cfg.models.dir, cfg.edge.providers, cfg.edge.threads)
    faces.engine().verify_all()
    identities = read_manifest(folder)
    # Photos, not a bus camera: the face API's default detector (dlib-exact HOG, which also finds
    # the small faces of group photos that BlazeFace's short-range model is not made for).
    gallery = enroll_gallery(faces.engine(), folder, "hog")
    rows: list[Row] = []
    thumbs = []
    for file in sorted(identities):
        if file.endswith(".mp4") or file in ENROLL.values():
            continue
        try:
            img = faces.load_image_file(folder / file)
        except ImageError as exc:
            log.warning("skipping %s: %s", file, exc)
            continue
        locs = faces.face_locations(img, 1, "hog")
        found = []
        for code in faces.face_encodings(img, locs):
            match = gallery.match(code)
            who = match.rider_id if match.distance <= THRESHOLD else "unknown"
            found.append(who)
            rows.append(Row(file, identities[file], who, match.distance))
        if not locs:
            rows.append(Row(file, identities[file], "no face", float("nan")))
        thumbs.append(_thumb(img, locs, found))
    out.mkdir(parents=True, exist_ok=True)
    _write_sheet(thumbs, out / "contact_sheet.jpg")
    with open(out / "summary.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["file", "expected", "found", "distance"])
        for r in rows:
            writer.writerow([r.file, r.expected, r.found, f"{r.distance:.3f}"])
    for r in rows:
        log.info("%-26s expected %-28s found %-20s distance %.3f", r.file, r.expected, r.found, r.distance)
    return rows


def _write_sheet(thumbs: list[np.ndarray], path: Path, per_row: int = 5) -> None:
    if not thumbs:
        return
    width = max(t.shape[1] for t in thumbs)
    padded = [cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1], cv2.BORDER_CONSTANT) for t in thumbs]
    blank = np.zeros_like(padded[0])
    while len(padded) % per_row:
        padded.append(blank)
    rows = [np.hstack(padded[i : i + per_row]) for i in range(0, len(padded), per_row)]
    cv2.imwrite(str(path), np.vstack(rows))


# -- the demo bus on the shipped clip --------------------------------------------------------


def frame_of(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` (0-based, as OpenCV decodes) of a video file, RGB."""
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ImageError(f"{path}: cannot read frame {index}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

CLIP = FIXTURES / "short_hamilton_clip.mp4"
FOOTAGE = FIXTURES / "footage"
#: The demo bus's camera: real footage played as one stream (footage/README.md: sources, licences).
#: The man of single_face.mp4 smiles and pays; the GRID speakers are enrolled but only talk; in the
#: Hamilton clip people talk and a grin starts mid-cut; new_face_video-90.mp4 is hand-held with
#: several people, none enrolled: bystanders, refused or asked to come one at a time.
DEMO_CLIPS: tuple[Path, ...] = (
    FOOTAGE / "single_face.mp4",
    FOOTAGE / "grid" / "bbaf2n.mpg",
    FOOTAGE / "grid" / "lbbc2a.mpg",
    FOOTAGE / "grid" / "swiz3n.mpg",
    CLIP,
    FOOTAGE / "new_face_video-90.mp4",
)
#: Riders enrolled from a frame of footage: (file under footage/, frame). The man is enrolled
#: from another recording of him than the one he boards in.
#: The second-factor code the demo's man chose at enrollment (4-8 digits; stored only as a keyed hash).
#: Should the face alone not confirm him at the default operating point (at most one wrong charge per
#: 1,000,000 boardings), the door asks for his code and the demo's scripted keypad types it for him.
DEMO_CODES: dict[str, str] = {"man_single_face": "4711"}
ENROLL_FOOTAGE: dict[str, tuple[str, int]] = {
    "man_single_face": ("face_noface.mov", 5),
    "grid_speaker_bbaf": ("grid/bbaf2n.mpg", 0),
    "grid_speaker_lbbc": ("grid/lbbc2a.mpg", 0),
    "grid_speaker_swiz": ("grid/swiz3n.mpg", 0),
}


def enroll_gallery(engine, folder: Path = FIXTURES, detector: str = "hog"):
    """A Gallery with one template per rider of ``ENROLL``, from their photo in ``folder``."""
    from edge.faces.match import Gallery

    ids, codes = [], []
    for rider, file in ENROLL.items():
        img = faces.load_image_file(folder / file)
        found = engine.detect(img, 1, detector)
        if len(found) != 1:
            raise RuntimeError(f"enrollment photo {file} must show exactly one face, found {len(found)}")
        codes.append(engine.embed(engine.chips(img, engine.landmarks(img, [found[0].rect], "small")))[0])
        ids.append(rider)
    return Gallery(ids, np.stack(codes))


def provision_demo_gallery(engine, folder: Path, out: Path, bus_id: str = "demo-bus"):
    """The demo bus's gallery, made the way a real bus gets one: the operator enrolls the riders of
    ``ENROLL`` into the encrypted template store; the cloud seals, signs and sends the bus its
    gallery deltas; the bus checks and applies them into its own encrypted store (``BusGallery``).
    Only the MQTT broker in between is left out: the delta bytes go straight to the bus.
    """
    from cloud_sync.gallery.bus import BusGallery
    from cloud_sync.protocol import generate_key
    from enrollment.distribution import GalleryDistributor
    from enrollment.enroll import Enroller
    from enrollment.store import RiderRecord, TemplateStore

    for name in ("store.db", "store.key", "gallery.db", "gallery.db-wal", "gallery.db-shm"):
        (out / name).unlink(missing_ok=True)
    store = TemplateStore.open(out / "store.db", out / "store.key")
    enroller = Enroller(engine, store)
    photos: dict[str, tuple[str, Path | np.ndarray]] = {r: (f, folder / f) for r, f in ENROLL.items()}
    photos.update({r: (f"{f}#{i}", frame_of(folder / "footage" / f, i)) for r, (f, i) in ENROLL_FOOTAGE.items()})
    for rider, (name, photo) in photos.items():
        result = enroller.enroll(RiderRecord(rider_id=rider, display_name=rider.replace("_", " ").title()),
                                 [(name, photo)], code=DEMO_CODES.get(rider))  # fmt: skip
        if result.status != "enrolled":
            raise RuntimeError(f"demo enrollment of {rider} from {name} failed: {result.message}")
    cloud_key, bus_key = generate_key(), generate_key()
    dist = GalleryDistributor(store, cloud_key, engine.embedder_sha256)
    secret = dist.register_bus(bus_id)
    gallery = BusGallery(out / "gallery.db", bus_id, secret, engine.embedder_sha256, cloud_key.public_key(),
                         bus_key=bus_key)  # fmt: skip
    dist.publish = lambda topic, payload: gallery.handle(topic, payload)
    dist.sync(bus_id)
    store.close()
    gallery.refresh()
    if sorted(gallery.riders) != sorted(photos):
        raise RuntimeError(f"the demo bus holds {sorted(gallery.riders)}, expected {sorted(photos)}")
    return gallery


def _smile_of(engine, rgb: np.ndarray, rect) -> float:
    """Smile score of any face box (the demo's annotation of faces the bus does not measure)."""
    from edge.faces.mesh import roi_from_rect, smile

    face = engine.mesh.landmarks(rgb, roi_from_rect(rect))
    return smile(engine.mesh.blendshapes(face.points))


def playlist(clips: tuple[Path, ...] | list[Path]):
    """The clips as one camera stream: frames with continuing index and time, a second apart between
    clips; yields (clip name, Frame)."""
    from hardware.cameras import Frame, VideoFileSource

    index, offset = 0, 0.0
    for clip in clips:
        last = 0.0
        for f in VideoFileSource(clip):
            yield clip.name, Frame(index, offset + f.ts, f.image)
            index += 1
            last = f.ts
        offset += last + 1.0


def run_bus_demo(cfg, out: Path, clips: tuple[Path, ...] | list[Path] = DEMO_CLIPS, folder: Path = FIXTURES) -> dict:
    """Enroll the riders, play ``clips`` as one camera through the bus pipeline into a fresh ledger.

    The bus matches against templates only, from its encrypted gallery (``provision_demo_gallery``).

    Writes ``demo_bus.mp4`` (per face: box, track id, smile score over the track's own neutral
    baseline, the smile gate's state, prompts and decisions), ``decisions.jpg`` (the frame of each
    decision) and ``decisions.tsv``; returns a summary dict.
    """
    from edge.door.node import BusNode
    from edge.door.pipeline import MESSAGES, BusPipeline, Feedback
    from edge.door.second_factor import SecondFactor
    from edge.fares.ledger import Ledger
    from edge.fares.rules import FaresConfig
    from hardware.keypad.scripted import ScriptedKeypad

    engine = wiring.face_engine(cfg)
    engine.verify_all()
    out.mkdir(parents=True, exist_ok=True)
    gallery = provision_demo_gallery(engine, folder, out)
    ledger_path = out / "ledger.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger_path) + suffix).unlink(missing_ok=True)
    rules = cfg.fares if cfg.fares.routes else FaresConfig(routes={cfg.pipeline.route_id: 250})
    ledger = Ledger(ledger_path, rules, bus_id="demo-bus")
    labels: dict[int, str] = {}
    prompts: dict[int, str] = {}
    clip_of: dict[int, str] = {}

    keypad = ScriptedKeypad()  # stands in for the rider's fingers on the door's keypad
    second_factor = SecondFactor(keypad, gallery.code_hash, gallery.code_key, cfg.second_factor)

    def door(fb: Feedback) -> None:
        log.info("door: track %s: %s", fb.track_id, fb.message)
        if fb.decision is None and fb.message == MESSAGES["enter_code"]:
            for wait in second_factor.waiting().values():  # the rider the face named types their code
                if wait in DEMO_CODES:
                    log.info("demo keypad: the rider types their code")
                    keypad.type(DEMO_CODES[wait])
        if fb.decision is not None:
            d = fb.decision
            labels[d.track_id] = f"{d.action}: {d.rider_id or d.reason}"
        elif fb.track_id is not None:
            prompts[fb.track_id] = fb.message

    pipe = BusPipeline(engine, gallery, cfg.pipeline, quality=cfg.quality, smile=cfg.smile,
                       second_factor=second_factor)  # fmt: skip
    writer = None
    shots = []
    size = (640, 480)

    def annotate(frame, decisions) -> None:
        nonlocal writer
        if frame.image is None:
            return
        bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        for d in decisions:
            labels.setdefault(d.track_id, f"{d.action}: {d.rider_id or d.reason}")
            clip_of[d.frame_index] = current[0]
        for track in pipe.tracker.tracks.values():
            if track.missed:
                continue
            st = pipe.states.get(track.id)
            r = track.rect
            lines = [labels.get(track.id) or f"#{track.id}"]
            if st is not None and st.last_smile is not None and track.id not in labels:
                sm = st.last_smile
                lines.append(f"smile {sm.score:.2f} (neutral {sm.baseline:.2f}) {sm.state}")
            elif track.id not in labels:
                # not the door face: the bus runs no mesh for it; the demo measures it for the video only
                lines.append(f"bystander, smile {_smile_of(engine, frame.image, r):.2f}")
            if st is not None and track.id not in labels and track.id in prompts:
                lines.append(prompts[track.id])
            text = lines[0]
            colour = (0, 200, 0) if text.startswith("charge") else (0, 0, 230) if ":" in text else (230, 180, 0)
            cv2.rectangle(bgr, (r.left, r.top), (r.right, r.bottom), colour, 2)
            for k, line in enumerate(lines):
                y = max(14, r.top - 6 - 16 * (len(lines) - 1 - k))
                cv2.putText(bgr, line, (r.left, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
        cv2.putText(bgr, f"{current[0]} frame {frame.index}", (8, bgr.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1)  # fmt: skip
        h, w = bgr.shape[:2]
        scale = min(size[0] / w, size[1] / h)
        m = np.array([[scale, 0, (size[0] - w * scale) / 2], [0, scale, (size[1] - h * scale) / 2]])
        canvas = cv2.warpAffine(bgr, m, size)
        if writer is None:
            writer = cv2.VideoWriter(str(out / "demo_bus.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, size)
        writer.write(canvas)
        if decisions:
            shots.append(canvas.copy())

    current = [""]

    def frames():
        for name, frame in playlist(clips):
            current[0] = name
            yield frame

    # The bus node's three threads (camera, pipeline, ledger); files are played without dropping frames.
    node = BusNode(pipe, ledger, feedback=door, drop_frames=False, on_frame=annotate)
    stats = node.run(frames())
    if writer is not None:
        writer.release()
    if shots:
        _write_sheet([cv2.resize(s, (s.shape[1] // 2, s.shape[0] // 2)) for s in shots], out / "decisions.jpg", 3)
    with open(out / "decisions.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["frame", "clip", "track", "action", "rider", "reason", "distance", "margin", "message"])
        for d in sorted(stats.decisions, key=lambda d: d.frame_index):
            w.writerow([d.frame_index, clip_of.get(d.frame_index, ""), d.track_id, d.action, d.rider_id or "", d.reason,
                        "" if d.distance is None else f"{d.distance:.3f}",
                        "" if d.margin is None else f"{d.margin:.3f}", d.message])  # fmt: skip
    fares = ledger.db.execute("SELECT rider_id, amount_minor, currency FROM fares").fetchall()
    ledger.close()
    gallery.close()
    return {"decisions": stats.decisions, "fares": fares, "frames": pipe.processed_frames,
            "skipped": pipe.skipped_frames, "out": out, "clips": {d.frame_index: clip_of.get(d.frame_index, "")
                                                                  for d in stats.decisions}}  # fmt: skip
