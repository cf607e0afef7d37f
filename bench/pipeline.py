"""The bus pipeline on the shipped clip against face_recognition's video loop, same run.

    .venv/bin/python bench/pipeline.py [--models DIR]

* FaceFare: the bus node (``edge.door.node.BusNode``: camera, pipeline and ledger threads) on every
  frame: detect at 640 px, track, gates, embed only for tracks that passed the gates, match,
  decide, charge into a ledger file. Its gallery is loaded from templates enrolled beforehand in
  another process, as on a bus, which holds templates only. It runs with the default
  ``detect_regions="motion"`` (HOG scans only regions around motion and live tracks, the whole
  frame every ``full_detect_every`` frames or when those regions would cover most of it; see
  ``edge.door.motion``).
* FaceFare, whole frames: the same node with ``detect_regions="full"`` (HOG scans every whole
  frame, as before motion gating), so that the gain of the regions is measured in the same run;
  the two must make the same decisions.
* Peer: the loop of face_recognition's own video example: every frame scaled to 1/4, HOG
  face_locations, then face_encodings of every face, then compare_faces with the gallery.
* Second peer, for scale: the same loop on the full frame, where its HOG does find this clip's
  faces (at 1/4 the 640x360 clip becomes 160x90 and no face is found, so the first peer does
  almost nothing per frame).

Prints frames per second of each, the ratios, the share of frames HOG scanned whole and the mean
fraction of the frame it scanned, FaceFare's frame-to-decision latency (p50/p95 of the processing
time of the frames on which a decision was made) and each process's peak RSS (each pipeline runs
in its own subprocess so that RSS is its own).

Last it prints the floors of the 5x target: how much time per frame 5x the 1/4 loop leaves, what
reading the clip alone costs, and what dlib's own C++ HOG costs at the smallest scale that finds
this clip's faces (``run_floors``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "facefare" / "demo" / "data" / "short_hamilton_clip.mp4"


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine(models: str | None):
    sys.path.insert(0, str(ROOT))
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    cfg = load_config(None)
    engine = FaceEngine(models or cfg.models.dir, "cpu", 2)
    engine.verify_all()
    return engine


def run_enroll(models: str | None, templates: Path) -> dict:
    """Enroll the fixture riders (the operator's job, not the bus's) and save their templates."""
    import numpy as np

    from facefare.demo.photos import enroll_gallery

    gallery = enroll_gallery(_engine(models))
    np.savez(templates, rider_ids=np.asarray(gallery.rider_ids, dtype=str), embeddings=gallery.embeddings)
    return {"riders": len(gallery)}


def run_ours(models: str | None, templates: Path, regions: str = "motion") -> dict:
    import tempfile

    import numpy as np

    from edge.door.node import BusNode
    from edge.door.pipeline import BusPipeline, PipelineConfig
    from edge.faces.match import Gallery
    from edge.fares.ledger import Ledger
    from edge.fares.rules import FaresConfig
    from hardware.cameras import VideoFileSource

    engine = _engine(models)
    saved = np.load(templates)
    gallery = Gallery([str(r) for r in saved["rider_ids"]], saved["embeddings"])
    BusPipeline(engine, gallery).process(next(iter(VideoFileSource(CLIP))).image, -10.0, -1)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bench")
        pipe = BusPipeline(engine, gallery, cfg=PipelineConfig(detect_regions=regions))
        node = BusNode(pipe, ledger, drop_frames=False)  # a file: process every frame, drop none
        start = time.perf_counter()
        stats = node.run(VideoFileSource(CLIP))  # streamed, as from a camera: RSS holds no frame buffer
        total = time.perf_counter() - start
        ledger.close()
    per_frame = stats.frame_ms
    decision_frames = {d.frame_index for d in stats.decisions}
    return {
        "fps": len(per_frame) / total,
        "frame_ms_p50": float(np.percentile(per_frame, 50)),
        "frame_ms_p95": float(np.percentile(per_frame, 95)),
        "decision_ms": [per_frame[i] for i in sorted(decision_frames) if i < len(per_frame)],
        "charge_ms": stats.charge_ms,
        "decisions": [[d.action, d.rider_id] for d in stats.decisions],
        "full_scans": pipe.regions.full_passes / pipe.regions.frames if pipe.regions else 1.0,
        "scanned": pipe.regions.scanned / pipe.regions.frames if pipe.regions else 1.0,
        "rss_mb": _peak_rss_mb(),
    }


def run_peer(scale: float) -> dict:
    import warnings

    import cv2
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    known = [fr.face_encodings(fr.load_image_file(ROOT / "facefare/demo/data/lin_manuel_miranda.png"))[0]]
    cap = cv2.VideoCapture(str(CLIP))
    per_frame = []
    with_face = 0
    start = time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        small = bgr if scale == 1.0 else cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        locs = fr.face_locations(rgb)
        with_face += bool(locs)
        for code in fr.face_encodings(rgb, locs):
            fr.compare_faces(known, code)
        per_frame.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - start
    return {"fps": len(per_frame) / total, "frame_ms_p50": float(np.percentile(per_frame, 50)),
            "frame_ms_p95": float(np.percentile(per_frame, 95)), "rss_mb": _peak_rss_mb(),
            "frames_with_face": with_face}


def run_floors() -> dict:
    """What any pipeline that reads and detects every frame of the clip must at least spend.

    ``decode_ms``: reading the clip alone (the same ``cv2.VideoCapture`` loop, no work per
    frame). ``dlib_hog_ms``: dlib's own C++ HOG detector (the one face_recognition calls) on the
    640x360 frame without up-sampling, the smallest scale at which it finds this clip's faces.
    """
    import cv2
    import dlib
    import numpy as np

    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    start = time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    decode_ms = (time.perf_counter() - start) / len(frames) * 1000
    detector = dlib.get_frontal_face_detector()
    sample = frames[::5]
    found = 0
    start = time.perf_counter()
    for bgr in sample:
        found += len(detector(np.ascontiguousarray(bgr[:, :, ::-1]), 0)) > 0
    hog_ms = (time.perf_counter() - start) / len(sample) * 1000
    return {"decode_ms": decode_ms, "dlib_hog_ms": hog_ms, "hog_found": found, "hog_frames": len(sample),
            "frames": len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None)
    children = ["enroll", "ours", "ours-full", "peer", "peer-full", "floors"]
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--templates", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = {
            "enroll": lambda: run_enroll(args.models, args.templates),
            "ours": lambda: run_ours(args.models, args.templates),
            "ours-full": lambda: run_ours(args.models, args.templates, "full"),
            "peer": lambda: run_peer(0.25),
            "peer-full": lambda: run_peer(1.0),
            "floors": run_floors,
        }[args.child]()
        print(json.dumps(result))
        return
    import tempfile

    import numpy as np
    from tqdm import tqdm

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        templates = Path(tmp) / "templates.npz"
        for who in tqdm(children, desc="benchmarking", unit="process"):
            cmd = [sys.executable, __file__, "--child", who, "--templates", str(templates)]
            cmd += ["--models", args.models] if args.models else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            results[who] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, full = results["ours"], results["ours-full"]
    rows = [("facefare bus node (motion regions)", ours), ("facefare bus node, whole frames", full),
            ("face_recognition video loop (1/4)", results["peer"]),
            ("face_recognition loop, full frame", results["peer-full"])]  # fmt: skip
    print(f"\n{'pipeline':<36}{'fps':>8}{'frame p50 ms':>14}{'frame p95 ms':>14}{'peak RSS MB':>13}")
    for name, r in rows:
        print(f"{name:<36}{r['fps']:>8.1f}{r['frame_ms_p50']:>14.1f}{r['frame_ms_p95']:>14.1f}{r['rss_mb']:>13.0f}")
    print(f"\nmotion regions vs whole frames: {ours['fps'] / full['fps']:.2f}x fps; HOG scanned the whole frame "
          f"on {ours['full_scans']:.0%} of frames, {ours['scanned']:.0%} of the frame on average")
    same = "same decisions" if ours["decisions"] == full["decisions"] else "DIFFERENT DECISIONS"
    print(f"decisions: motion {ours['decisions']}, whole frames {full['decisions']} ({same})")
    print(f"frames per second ratio vs the 1/4 loop: {ours['fps'] / results['peer']['fps']:.2f}x (target >= 5x)")
    print(f"frames per second ratio vs the full-frame loop: {ours['fps'] / results['peer-full']['fps']:.2f}x")
    peer, floors = results["peer"], results["floors"]
    budget = 1000 / (5 * peer["fps"])
    print(f"\nthe 1/4 loop found a face on {peer['frames_with_face']} of {floors['frames']} frames, the full-frame "
          f"loop on {results['peer-full']['frames_with_face']}")
    print(f"5x the 1/4 loop means {5 * peer['fps']:.0f} fps, {budget:.2f} ms per frame for everything; reading the "
          f"clip alone costs {floors['decode_ms']:.2f} ms per frame, dlib's own C++ HOG at the smallest scale that "
          f"finds these faces {floors['dlib_hog_ms']:.1f} ms ({floors['dlib_hog_ms'] / budget:.0f}x the budget; "
          f"faces on {floors['hog_found']} of {floors['hog_frames']} sampled frames)")
    if ours["decision_ms"]:
        d = np.array(ours["decision_ms"])
        print(f"frame-to-decision latency over {len(d)} decision frame(s): p50 {np.percentile(d, 50):.1f} ms, "
              f"p95 {np.percentile(d, 95):.1f} ms (target p95 < 150 ms)")
    if ours["charge_ms"]:
        print(f"decision-to-fare-on-disk (ledger thread): max {max(ours['charge_ms']):.1f} ms")
    print(f"peak RSS of the bus node: {ours['rss_mb']:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
