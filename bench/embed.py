"""Per-stage time of the face pipeline against face_recognition, measured in the same run.

    .venv/bin/python bench/embed.py [--repeat 5] [--models DIR]

For each of obama-240p/480p/720p/1080p both pipelines go from a JPEG file to 128-d encodings:
decode, detect, landmarks (5-point), align, embed. face_recognition aligns inside
``compute_face_descriptor``, so its align and embed are reported together. Two FaceFare rows:

* ``facefare bus``: the bus setting: detection on a copy scaled to ``--detect-side`` pixels on
  its longer side (a fixed detection resolution; faces at a bus door are large), landmarks and
  chips at full size;
* ``facefare bus cnn``: the same with the MMOD CNN detector (ONNX) instead of HOG;
* ``facefare blazeface``: the bus's new front end: BlazeFace on the whole image (it letterboxes
  to 128 px itself, so no scaled copy), boxes in dlib's convention, then the same landmarks,
  chips and embedding;
* ``facefare same``: face_recognition's own settings (HOG, upsample once, full frame).

Every number is the median over ``--repeat`` runs; the ratio is peer time / our time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge.faces.engine import FaceEngine  # noqa: E402
from edge.faces.geometry import scale_rect  # noqa: E402
from edge.faces.images import load_image_file, resize_for_detection  # noqa: E402

IMAGES = ["obama-240p.jpg", "obama-480p.jpg", "obama-720p.jpg", "obama-1080p.jpg"]
STAGES = ["decode", "detect", "landmarks", "align", "embed"]


def ours(
    engine: FaceEngine, path: Path, detect_side: int | None, upsample: int, detector: str = "hog"
) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    img = load_image_file(path)
    t1 = time.perf_counter()
    small, scale = resize_for_detection(img, detect_side) if detect_side and detector != "blazeface" else (img, 1.0)
    rects = [scale_rect(d.rect, scale) for d in engine.detect(small, upsample, detector)]
    t2 = time.perf_counter()
    marks = engine.landmarks(img, rects, "small")
    t3 = time.perf_counter()
    chips = engine.chips(img, marks)
    t4 = time.perf_counter()
    codes = engine.embed(chips)
    t5 = time.perf_counter()
    assert len(codes) == 1, f"{path.name}: expected one face, found {len(codes)}"
    t.update(decode=t1 - t0, detect=t2 - t1, landmarks=t3 - t2, align=t4 - t3, embed=t5 - t4)
    return t


def peer(fr, path: Path) -> dict[str, float]:
    api = fr.api
    t0 = time.perf_counter()
    img = fr.load_image_file(path)
    t1 = time.perf_counter()
    rects = api.face_detector(img, 1)
    t2 = time.perf_counter()
    shapes = [api.pose_predictor_5_point(img, r) for r in rects]
    t3 = time.perf_counter()
    codes = [np.array(api.face_encoder.compute_face_descriptor(img, s, 1)) for s in shapes]
    t4 = time.perf_counter()
    assert len(codes) == 1, f"{path.name}: peer expected one face, found {len(codes)}"
    return {"decode": t1 - t0, "detect": t2 - t1, "landmarks": t3 - t2, "align": 0.0, "embed": t4 - t3}


def median_times(fn: Callable[[], dict[str, float]], repeat: int) -> dict[str, float]:
    fn()  # warm-up: first-call allocations, onnxruntime graph preparation
    runs = [fn() for _ in range(repeat)]
    return {k: statistics.median(r[k] for r in runs) * 1000 for k in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", type=Path, default=None, help="converted models (default: config)")
    parser.add_argument("--detect-side", type=int, default=640, help="bus setting: longest side for detection")
    parser.add_argument("--faces", type=Path, default=ROOT / "facefare" / "demo" / "data")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    from facefare.config import load_config

    engine = FaceEngine(args.models or load_config(None).models.dir, "cpu", 2)
    engine.verify_all()
    rows = []
    with tqdm(total=len(IMAGES) * 5, desc="benchmarking", unit="run") as bar:
        for name in IMAGES:
            path = args.faces / name
            for label, fn in (
                ("facefare bus", lambda p=path: ours(engine, p, args.detect_side, 0)),
                ("facefare bus cnn", lambda p=path: ours(engine, p, args.detect_side, 0, "cnn")),
                ("facefare blazeface", lambda p=path: ours(engine, p, None, 0, "blazeface")),
                ("facefare same", lambda p=path: ours(engine, p, None, 1)),
                ("face_recognition", lambda p=path: peer(fr, p)),
            ):
                rows.append((name, label, median_times(fn, args.repeat)))
                bar.update()

    print(f"\nmedian milliseconds over {args.repeat} runs (align is inside embed for face_recognition)\n")
    print(f"{'image':<17}{'pipeline':<18}" + "".join(f"{s:>10}" for s in STAGES) + f"{'total':>10}{'speed-up':>10}")
    totals: dict[tuple[str, str], float] = {}
    for name, label, t in rows:
        totals[(name, label)] = sum(t.values())
    for name, label, t in rows:
        total = totals[(name, label)]
        ratio = totals[(name, "face_recognition")] / total
        print(f"{name:<17}{label:<18}" + "".join(f"{t[s]:>10.1f}" for s in STAGES) + f"{total:>10.1f}{ratio:>9.1f}x")
    print("\nwhere the time goes (share of total, facefare bus):")
    for name, label, t in rows:
        if label == "facefare bus":
            total = totals[(name, label)]
            print(f"  {name:<17}" + "  ".join(f"{s} {100 * t[s] / total:4.0f}%" for s in STAGES))
    bf = [totals[(n, "facefare blazeface")] for n in IMAGES]
    bus = [totals[(n, "facefare bus")] for n in IMAGES]
    ref = [totals[(n, "face_recognition")] for n in IMAGES]
    print(f"\nend to end, all four images: facefare bus {sum(bus):.0f} ms, face_recognition {sum(ref):.0f} ms, "
          f"ratio {sum(ref) / sum(bus):.1f}x (target >= 3x)")
    print(f"end to end, all four images: facefare blazeface {sum(bf):.0f} ms, ratio {sum(ref) / sum(bf):.1f}x; "
          f"detect alone {sum(t['detect'] for n, lb, t in rows if lb == 'facefare blazeface'):.1f} ms vs HOG at "
          f"{args.detect_side} px {sum(t['detect'] for n, lb, t in rows if lb == 'facefare bus'):.1f} ms")


if __name__ == "__main__":
    main()
