"""The photo demo: enroll one photo per person from the shipped fixtures, identify all others.

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
from edge.images import ImageError

log = logging.getLogger(__name__)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "faces"
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
    names, known = [], []
    for name, file in ENROLL.items():
        img = faces.load_image_file(folder / file)
        locs = faces.face_locations(img, 1, cfg.edge.detector)
        if len(locs) != 1:
            raise RuntimeError(f"enrollment photo {file} must show exactly one face, found {len(locs)}")
        known.append(faces.face_encodings(img, locs)[0])
        names.append(name)
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
        locs = faces.face_locations(img, 1, cfg.edge.detector)
        found = []
        for code in faces.face_encodings(img, locs):
            dist = faces.face_distance(known, code)
            best = int(np.argmin(dist))
            who = names[best] if dist[best] <= THRESHOLD else "unknown"
            found.append(who)
            rows.append(Row(file, identities[file], who, float(dist[best])))
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
