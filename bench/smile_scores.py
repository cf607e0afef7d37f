"""Smile and mouth blendshape scores of the largest face, frame by frame, on the shipped footage.

The measurement behind the smile gate's thresholds (docs/thresholds.md): per clip and labelled
frame range (from footage/README.md), the range of smile = mean(mouthSmileLeft, mouthSmileRight)
and jawOpen, and with --frames every frame's values.

    FACEFARE_MODELS__DIR=... .venv/bin/python bench/smile_scores.py [--frames] [--photos]

``--photos`` also scores the 40 London people (neutral photo, then smiling photo) against the
gate's thresholds, and prints the mesh quality measures (head pose, blink, iris distance,
sharpness, brightness) per clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge import faces
from edge.faces.mesh import INDEX, roi_from_points, roi_from_rect, smile

DATA = Path(__file__).resolve().parents[1] / "facefare" / "demo" / "data"
#: clip -> labelled frame ranges (inclusive), from footage/README.md and docs/thresholds.md
CLIPS: dict[str, dict[str, tuple[int, int]]] = {
    "short_hamilton_clip.mp4": {"grin": (82, 95), "talking": (145, 190)},
    "footage/single_face.mp4": {"neutral": (0, 15), "smile": (21, 64), "neutral again": (67, 71)},
    "footage/face_noface.mov": {"neutral": (0, 15), "smile": (30, 61)},
    "footage/new_face_video-90.mp4": {"woman talking": (78, 104), "woman wide smile": (234, 247)},
    "footage/grid/bbaf2n.mpg": {"talking": (0, 74)},
    "footage/grid/lbbc2a.mpg": {"talking": (0, 74)},
    "footage/grid/swiz3n.mpg": {"talking": (0, 74)},
    "footage/cremad/1001_DFA_NEU_XX.flv": {"neutral speech": (0, 70)},
    "footage/cremad/1001_DFA_HAP_XX.flv": {"happy speech": (0, 39), "closed smile": (40, 55)},
}


def frames(path: Path):
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


QUALITY: dict[str, list[tuple[float, ...]]] = {}


def scores(path: Path) -> list[tuple[float, float] | None]:
    """Per frame, (smile, jawOpen) of the largest face, or None; the mesh ROI comes from the detection."""
    from edge.door.quality import QualityConfig, assess_mesh, face_patch
    from edge.faces.mesh import blink

    eng = faces.engine()
    out: list[tuple[float, float] | None] = []
    qual = QUALITY.setdefault(path.name, [])
    for rgb in frames(path):
        dets = eng.detect(rgb, 0, "blazeface")
        if not dets:
            out.append(None)
            continue
        d = max(dets, key=lambda d: d.rect.area)
        m = eng.mesh.landmarks(rgb, roi_from_rect(d.rect, d.keypoints))
        m = eng.mesh.landmarks(rgb, roi_from_points(m.points))
        b = eng.mesh.blendshapes(m.points)
        out.append((smile(b), float(b[INDEX["jawOpen"]])))
        q = assess_mesh(m.points, blink(b), face_patch(rgb, d.rect), d.rect, rgb.shape, QualityConfig())
        qual.append((q.yaw, q.pitch, q.roll, q.blink, q.eye_distance, q.sharpness, q.brightness, float(q.ok)))
    return out


def photos(london: Path) -> None:
    from edge.door.smile import SmileConfig

    cfg = SmileConfig()
    rows = []
    for neutral in sorted(london.glob("*_neutral.jpg")):
        n = faces.face_blendshapes(faces.load_image_file(neutral))[0]
        s = faces.face_blendshapes(faces.load_image_file(str(neutral).replace("neutral", "smiling")))[0]
        ns = (n["mouthSmileLeft"] + n["mouthSmileRight"]) / 2
        ss = (s["mouthSmileLeft"] + s["mouthSmileRight"]) / 2
        rows.append((ns, ss, s["jawOpen"]))
    a = np.array(rows)
    ok = (a[:, 1] >= cfg.smile_min) & (a[:, 1] - a[:, 0] >= cfg.rise_min) & (a[:, 1] - a[:, 2] >= cfg.smile_over_jaw)
    print(f"London photos, {len(a)} people: neutral smile median {np.median(a[:, 0]):.3f} max {a[:, 0].max():.3f}; "
          f"smiling median {np.median(a[:, 1]):.3f} min {a[:, 1].min():.3f}; rise median "
          f"{np.median(a[:, 1] - a[:, 0]):.3f}, rise > 0 for {(a[:, 1] > a[:, 0]).sum()}")
    print(f"  neutral photos at or above the floor {cfg.smile_min}: {(a[:, 0] >= cfg.smile_min).sum()}; "
          f"smiling photos the gate takes as consent (floor, rise {cfg.rise_min}, smile-jaw "
          f"{cfg.smile_over_jaw}): {ok.sum()} of {len(a)}; without the floor: "
          f"{((a[:, 1] - a[:, 0] >= cfg.rise_min) & (a[:, 1] - a[:, 2] >= cfg.smile_over_jaw)).sum()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", action="store_true", help="print every frame's scores")
    ap.add_argument("--photos", action="store_true", help="London photos and mesh quality measures too")
    args = ap.parse_args()
    if args.photos:
        photos(DATA / "london")
    for clip, ranges in CLIPS.items():
        s = scores(DATA / clip)
        print(f"{clip}: {len(s)} frames, face in {sum(v is not None for v in s)}")
        for label, (a, b) in ranges.items():
            vals = np.array([v for v in s[a : b + 1] if v is not None])
            if not len(vals):
                print(f"  {label:18s} {a}-{b}: no face")
                continue
            print(f"  {label:18s} {a:3d}-{b:3d}: smile min {vals[:, 0].min():.3f} median {np.median(vals[:, 0]):.3f} "
                  f"max {vals[:, 0].max():.3f} | jawOpen median {np.median(vals[:, 1]):.3f} max {vals[:, 1].max():.3f}")
        if args.photos and QUALITY.get((DATA / clip).name):
            q = np.array(QUALITY[(DATA / clip).name])
            names = ("yaw", "pitch", "roll", "blink", "iris px", "sharpness", "brightness")
            ranges = "; ".join(f"{n} {q[:, i].min():.1f}..{q[:, i].max():.1f}" for i, n in enumerate(names))
            print(f"  quality: {ranges}; passes {int(q[:, 7].sum())} of {len(q)}")
        if args.frames:
            for i, v in enumerate(s):
                if v is not None:
                    print(f"    {i:4d} smile {v[0]:.3f} jaw {v[1]:.3f}")


if __name__ == "__main__":
    main()
