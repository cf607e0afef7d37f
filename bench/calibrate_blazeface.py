"""Fit BlazeFace boxes to dlib's HOG box convention, and measure what the fit gives the embedding.

For every face found by both HOG (dlib-exact) and BlazeFace on the London photos and the demo
fixtures, the HOG box's centre offset (in BlazeFace box sizes) and side ratio are collected; the
medians are the calibration (edge.faces.blazeface.DLIB_BOX). With the calibration in place it
then prints the mean and largest embedding distance between face_encodings() on the HOG box and
on the calibrated BlazeFace box, and the IoU of the boxes.

    FACEFARE_MODELS__DIR=... .venv/bin/python bench/calibrate_blazeface.py [--london DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge import faces
from edge.faces import blazeface
from edge.faces.geometry import iou

ROOT = Path(__file__).resolve().parents[1]


def photos(london: Path) -> list[Path]:
    found = sorted(london.glob("*.jpg")) if london.is_dir() else []
    return found + sorted((ROOT / "facefare" / "demo" / "data").glob("*.jp*g"))


def pairs(paths: list[Path]):
    eng = faces.engine()
    for path in tqdm(paths, desc="photos", unit="photo"):
        img = faces.load_image_file(path)
        hog = [d.rect for d in eng.detect(img, 1, "hog")]
        bf = eng.detector("blazeface").detect_full(img)
        for box, _pts, _score in bf:
            cand = blazeface.to_dlib_rect(*box)
            best = max(hog, key=lambda r: iou(r, cand), default=None)
            if best is not None and iou(best, cand) > 0.3:
                yield path, img, box, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--london", type=Path, default=ROOT.parent / "shared" / "data" / "london")
    args = ap.parse_args()
    paths = photos(args.london)
    saved = dict(blazeface.DLIB_BOX)
    blazeface.DLIB_BOX.update(dx=0.0, dy=0.0, scale=1.0)
    dx, dy, sc = [], [], []
    for _p, _img, box, hog in pairs(paths):
        w, h = box[2] - box[0], box[3] - box[1]
        dx.append(((hog.left + hog.right) / 2 - (box[0] + box[2]) / 2) / w)
        dy.append(((hog.top + hog.bottom) / 2 - (box[1] + box[3]) / 2) / h)
        sc.append(hog.width / ((w + h) / 2))
    fit = {"dx": float(np.median(dx)), "dy": float(np.median(dy)), "scale": float(np.median(sc))}
    print(f"faces matched: {len(dx)}")
    print(f"fit: dx {fit['dx']:+.4f}  dy {fit['dy']:+.4f}  scale {fit['scale']:.4f}   (in use: {saved})")
    blazeface.DLIB_BOX.update(fit)
    dists, ious = [], []
    for _p, img, box, hog in pairs(paths):
        cand = blazeface.to_dlib_rect(*box)
        a, b = faces.face_encodings(img, [hog.css(), cand.css()])
        dists.append(float(np.linalg.norm(a - b)))
        ious.append(iou(hog, cand))
    print(f"embedding distance HOG box vs calibrated BlazeFace box: mean {np.mean(dists):.4f}  "
          f"p95 {np.percentile(dists, 95):.4f}  max {np.max(dists):.4f}  (n={len(dists)})")
    print(f"box IoU: mean {np.mean(ious):.3f}  min {np.min(ious):.3f}")


if __name__ == "__main__":
    main()
