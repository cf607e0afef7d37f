"""The bus pipeline on the shipped clip against face_recognition's video loop, same run.

    .venv/bin/python bench/pipeline.py [--models DIR]

* FaceFare: ``BusPipeline`` on every frame (detect at 640 px, track, gates, embed only for
  tracks that passed the gates, match, decide; ledger in memory).
* Peer: the loop of face_recognition's own video example: every frame scaled to 1/4, HOG
  face_locations, then face_encodings of every face, then compare_faces with the gallery.

Prints frames per second of each, their ratio, FaceFare's frame-to-decision latency (p50/p95 of
the processing time of the frames on which a decision was made) and each process's peak RSS
(each pipeline runs in its own subprocess so that RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "tests" / "fixtures" / "faces" / "short_hamilton_clip.mp4"


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(models: str | None) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from edge.demo import enroll_gallery
    from edge.face_engine import FaceEngine
    from edge.fares import FaresConfig
    from edge.ledger import Ledger
    from edge.pipeline import BusPipeline
    from facefare.config import load_config
    from hardware.cameras import VideoFileSource

    cfg = load_config(None)
    engine = FaceEngine(models or cfg.models.dir, "cpu", 2)
    engine.verify_all()
    gallery = enroll_gallery(engine)
    ledger = Ledger(":memory:", FaresConfig(routes={"1": 250}), bus_id="bench")
    pipe = BusPipeline(engine, gallery, ledger)
    pipe.process(next(iter(VideoFileSource(CLIP))).image, -10.0, -1)  # warm-up
    pipe = BusPipeline(engine, gallery, ledger)
    per_frame, decision_ms = [], []
    start = time.perf_counter()
    for f in VideoFileSource(CLIP):  # streamed, as from a camera: RSS holds no frame buffer
        t0 = time.perf_counter()
        decisions = pipe.process(f.image, f.ts, f.index)
        dt = (time.perf_counter() - t0) * 1000
        per_frame.append(dt)
        decision_ms += [dt] * len(decisions)
    total = time.perf_counter() - start
    return {
        "fps": len(per_frame) / total,
        "frame_ms_p50": float(np.percentile(per_frame, 50)),
        "frame_ms_p95": float(np.percentile(per_frame, 95)),
        "decision_ms": decision_ms,
        "decisions": len(pipe.decisions),
        "rss_mb": _peak_rss_mb(),
    }


def run_peer() -> dict:
    import warnings

    import cv2
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    known = [fr.face_encodings(fr.load_image_file(ROOT / "tests/fixtures/faces/lin_manuel_miranda.png"))[0]]
    cap = cv2.VideoCapture(str(CLIP))
    per_frame = []
    start = time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        small = cv2.resize(bgr, (0, 0), fx=0.25, fy=0.25)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        locs = fr.face_locations(rgb)
        for code in fr.face_encodings(rgb, locs):
            fr.compare_faces(known, code)
        per_frame.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - start
    return {"fps": len(per_frame) / total, "frame_ms_p50": float(np.percentile(per_frame, 50)),
            "frame_ms_p95": float(np.percentile(per_frame, 95)), "rss_mb": _peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None)
    parser.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_ours(args.models) if args.child == "ours" else run_peer()
        print(json.dumps(result))
        return
    from tqdm import tqdm

    results = {}
    for who in tqdm(["ours", "peer"], desc="benchmarking", unit="pipeline"):
        cmd = [sys.executable, __file__, "--child", who] + (["--models", args.models] if args.models else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results[who] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, peer = results["ours"], results["peer"]
    import numpy as np

    print(f"\n{'pipeline':<34}{'fps':>8}{'frame p50 ms':>14}{'frame p95 ms':>14}{'peak RSS MB':>13}")
    print(f"{'facefare BusPipeline':<34}{ours['fps']:>8.1f}{ours['frame_ms_p50']:>14.1f}{ours['frame_ms_p95']:>14.1f}"
          f"{ours['rss_mb']:>13.0f}")
    print(f"{'face_recognition video loop (1/4)':<34}{peer['fps']:>8.1f}{peer['frame_ms_p50']:>14.1f}"
          f"{peer['frame_ms_p95']:>14.1f}{peer['rss_mb']:>13.0f}")
    print(f"\nframes per second ratio: {ours['fps'] / peer['fps']:.2f}x (target >= 5x)")
    if ours["decision_ms"]:
        d = np.array(ours["decision_ms"])
        print(f"frame-to-decision latency over {len(d)} decision(s): p50 {np.percentile(d, 50):.1f} ms, "
              f"p95 {np.percentile(d, 95):.1f} ms (target p95 < 150 ms)")
    print(f"peak RSS: {ours['rss_mb']:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
