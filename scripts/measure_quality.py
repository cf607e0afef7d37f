"""Measure the quality gate's inputs on the shipped clip and photos (for docs/thresholds.md).

    .venv/bin/python scripts/measure_quality.py

For every tracked face of ``short_hamilton_clip.mp4`` and the largest face of every photo in
facefare/demo/data/, prints the distribution (min / p10 / median / p90 / max) of eye distance,
yaw, pitch, sharpness and brightness, and which reasons the default ``QualityConfig`` gives.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.door.quality import QualityConfig, assess  # noqa: E402
from edge.door.tracker import IouTracker  # noqa: E402
from edge.faces.engine import FaceEngine  # noqa: E402
from edge.faces.geometry import scale_rect  # noqa: E402
from edge.faces.images import load_image_file, resize_for_detection  # noqa: E402
from facefare.config import load_config  # noqa: E402
from hardware.cameras import VideoFileSource  # noqa: E402

FACES = ROOT / "facefare" / "demo" / "data"
FIELDS = ("eye_distance", "yaw", "pitch", "sharpness", "brightness")


def summary(values: list[float]) -> str:
    a = np.asarray(values)
    return " / ".join(f"{v:.2f}" for v in (a.min(), *np.percentile(a, [10, 50, 90]), a.max()))


def main() -> None:
    cfg = load_config(None)
    engine = FaceEngine(cfg.models.dir, "cpu", 2)
    qcfg = QualityConfig()
    per_track: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    reasons: dict[int, Counter] = defaultdict(Counter)
    frames: dict[int, list[int]] = defaultdict(list)
    tracker = IouTracker()
    for frame in VideoFileSource(FACES / "short_hamilton_clip.mp4"):
        small, factor = resize_for_detection(frame.image, 640)
        rects = [scale_rect(d.rect, factor) for d in engine.detect(small, 0, "hog")]
        seen, _ = tracker.update(rects, frame.ts)
        for track in seen:
            lm = engine.landmarks(frame.image, [track.rect], "small")
            q = assess(lm[0], engine.chips(frame.image, lm)[0], track.rect, frame.image.shape, qcfg)
            for f in FIELDS:
                per_track[track.id][f].append(getattr(q, f))
            reasons[track.id].update(q.reasons or ["ok"])
            frames[track.id].append(frame.index)
    print("clip: min / p10 / median / p90 / max per track")
    for tid in sorted(per_track):
        print(f"track {tid}, frames {frames[tid][0]}-{frames[tid][-1]} ({len(frames[tid])} detections): "
              f"{dict(reasons[tid])}")
        for f in FIELDS:
            print(f"  {f:<13}{summary(per_track[tid][f])}")
    print("\nphotos (largest face): eye_distance yaw pitch sharpness brightness -> reasons")
    for path in sorted(FACES.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        img = load_image_file(path)
        dets = engine.detect(img, 1, "hog")
        if not dets:
            print(f"{path.name:<26} no face")
            continue
        rect = max(dets, key=lambda d: d.rect.area).rect
        lm = engine.landmarks(img, [rect], "small")
        q = assess(lm[0], engine.chips(img, lm)[0], rect, img.shape, qcfg)
        print(f"{path.name:<26}" + " ".join(f"{getattr(q, f):8.2f}" for f in FIELDS) + f"  {q.reasons or 'ok'}")


if __name__ == "__main__":
    main()
