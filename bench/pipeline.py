"""The bus pipeline on real footage against face_recognition's video loop, same run.

    .venv/bin/python bench/pipeline.py [--models DIR]

The footage: the shipped Hamilton clip (275 frames, 640x360: people talking, a grin, no consent)
followed by single_face.mp4 (72 frames: a man goes from neutral to a smile and is charged), one
stream with continuing frame numbers and times, read as a camera is read.

* FaceFare: the bus node (``edge.door.node.BusNode``: camera, pipeline and ledger threads) on every
  frame with the bus defaults: BlazeFace on every whole frame, Face Mesh V2 and blendshapes for
  the door face only, quality and smile gates, 5-point landmarks + ResNet embedding only for a
  track that passed the smile gate, match, decide, charge into a ledger file. Its gallery is
  loaded from templates enrolled beforehand in another process, as on a bus.
* FaceFare with the old front end: the same node with ``[edge] detector = "hog"`` (numpy HOG,
  motion regions), for the gain of the new front end in the same run.
* FaceFare on one thread: the pipeline alone (no node threads) with one onnxruntime thread; its
  CPU milliseconds per frame (process time) is the figure that predicts a Raspberry Pi 4.
* Peer: the loop of face_recognition's own video example, every frame at full size: HOG
  face_locations, face_encodings of every face, compare_faces with the gallery (the 1/4-scale
  variant of that example finds no face in 640x360 footage, so it is reported for scale only).

Prints frames per second of each and the ratios, FaceFare's per-stage milliseconds (decode,
detect, mesh, blendshapes, quality, smile, embed, match), frame p50/p95, frame-to-decision
latency (capture to decision, p50/p95, from the node) and each process's peak RSS (each pipeline
runs in its own subprocess so that RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "facefare" / "demo" / "data"
CLIP = DATA / "short_hamilton_clip.mp4"
CLIPS = (CLIP, DATA / "footage" / "single_face.mp4")


def footage():
    """The clips as one camera stream: ``Frame`` objects with continuing index and time."""
    from hardware.cameras import Frame, VideoFileSource

    index, offset = 0, 0.0
    for clip in CLIPS:
        last = 0.0
        for f in VideoFileSource(clip):
            yield Frame(index, offset + f.ts, f.image)
            index += 1
            last = f.ts
        offset += last + 1.0  # a second between the riders


def bgr_frames():
    import cv2

    for clip in CLIPS:
        cap = cv2.VideoCapture(str(clip))
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield bgr
        cap.release()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine(models: str | None, detector: str = "blazeface", threads: int = 2):
    sys.path.insert(0, str(ROOT))
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    cfg = load_config(None)
    engine = FaceEngine(models or cfg.models.dir, "cpu", threads, detector=detector)
    engine.verify_all()
    return engine


def run_enroll(models: str | None, templates: Path) -> dict:
    """Enroll the fixture riders (the operator's job, not the bus's) and save their templates."""
    import numpy as np

    from edge.faces.match import Gallery
    from facefare.demo.photos import enroll_gallery, frame_of

    engine = _engine(models)
    gallery = enroll_gallery(engine)
    # the man of single_face.mp4, enrolled from another recording of him (face_noface.mov, frame 5)
    img = frame_of(DATA / "footage" / "face_noface.mov", 5)
    rect = max(engine.detect(img, 0), key=lambda d: d.rect.area).rect
    code = engine.embed(engine.chips(img, engine.landmarks(img, [rect])))[0]
    gallery = Gallery([*gallery.rider_ids, "man"], np.vstack([gallery.embeddings, code[None]]))
    np.savez(templates, rider_ids=np.asarray(gallery.rider_ids, dtype=str), embeddings=gallery.embeddings)
    return {"riders": len(gallery)}


def _gallery(templates: Path):
    import numpy as np

    from edge.faces.match import Gallery

    saved = np.load(templates)
    return Gallery([str(r) for r in saved["rider_ids"]], saved["embeddings"])


def run_ours(models: str | None, templates: Path, detector: str = "blazeface") -> dict:
    import tempfile

    import numpy as np

    from edge.door.node import BusNode
    from edge.door.pipeline import BusPipeline
    from edge.fares.ledger import Ledger
    from edge.fares.rules import FaresConfig
    from hardware.cameras import VideoFileSource

    engine = _engine(models, detector)
    gallery = _gallery(templates)
    BusPipeline(engine, gallery).process(next(iter(VideoFileSource(CLIP))).image, -10.0, -1)  # warm-up
    stages: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.db", FaresConfig(routes={"1": 250}), bus_id="bench")
        pipe = BusPipeline(engine, gallery)

        def collect(frame, decisions) -> None:
            for k, v in pipe.stage_ms.items():
                stages.setdefault(k, []).append(v)

        node = BusNode(pipe, ledger, drop_frames=False, on_frame=collect)  # a file: process every frame
        start = time.perf_counter()
        stats = node.run(footage())  # streamed, as from a camera: RSS holds no frame buffer
        total = time.perf_counter() - start
        ledger.close()
    per_frame = stats.frame_ms
    return {
        "fps": len(per_frame) / total,
        "frames": len(per_frame),
        "frame_ms_p50": float(np.percentile(per_frame, 50)),
        "frame_ms_p95": float(np.percentile(per_frame, 95)),
        # processing time of the frames a decision was made on (the camera's frame to the door's answer)
        "decision_ms": [per_frame[d.frame_index] for d in stats.decisions if d.frame_index < len(per_frame)],
        # the node's capture -> decision, which for a file played without dropping includes the queue wait
        "queued_decision_ms": stats.decision_ms,
        "charge_ms": stats.charge_ms,
        "decisions": [[d.action, d.rider_id] for d in stats.decisions],
        "stages": {k: [float(np.mean(v)), len(v)] for k, v in stages.items()},
        "rss_mb": _peak_rss_mb(),
    }


def run_one_thread(models: str | None, templates: Path) -> dict:
    """The pipeline alone on one onnxruntime thread: wall and CPU (process) ms per frame."""
    import numpy as np

    from edge.door.pipeline import BusPipeline

    engine = _engine(models, "blazeface", threads=1)
    pipe = BusPipeline(engine, _gallery(templates))
    frames = list(footage())
    pipe.process(frames[0].image, -10.0, -1)
    pipe = BusPipeline(engine, _gallery(templates))
    wall, cpu = [], []
    for f in frames:
        w0, c0 = time.perf_counter(), time.process_time()
        pipe.process(f.image, f.ts, f.index)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"wall_ms": float(np.mean(wall)), "cpu_ms": float(np.mean(cpu)), "cpu_ms_p95": float(np.percentile(cpu, 95)),
            "fps": len(frames) / (sum(wall) / 1000)}


def run_peer(scale: float) -> dict:
    import warnings

    import cv2
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    known = [fr.face_encodings(fr.load_image_file(ROOT / "facefare/demo/data/lin_manuel_miranda.png"))[0]]
    per_frame = []
    with_face = 0
    start = time.perf_counter()
    for bgr in bgr_frames():
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
    import dlib
    import numpy as np

    start = time.perf_counter()
    frames = list(bgr_frames())
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
    children = ["enroll", "ours", "ours-hog", "ours-1thread", "peer", "peer-full", "floors"]
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--templates", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = {
            "enroll": lambda: run_enroll(args.models, args.templates),
            "ours": lambda: run_ours(args.models, args.templates),
            "ours-hog": lambda: run_ours(args.models, args.templates, "hog"),
            "ours-1thread": lambda: run_one_thread(args.models, args.templates),
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
    ours, hog, one = results["ours"], results["ours-hog"], results["ours-1thread"]
    peer_full, floors = results["peer-full"], results["floors"]
    rows = [("facefare bus node (blazeface)", ours), ("facefare bus node, old HOG front end", hog),
            ("face_recognition loop, full frame", peer_full),
            ("face_recognition video loop (1/4)", results["peer"])]  # fmt: skip
    print(f"\nfootage: {ours['frames']} frames (Hamilton clip + single_face.mp4)")
    print(f"{'pipeline':<38}{'fps':>8}{'frame p50 ms':>14}{'frame p95 ms':>14}{'peak RSS MB':>13}")
    for name, r in rows:
        print(f"{name:<38}{r['fps']:>8.1f}{r['frame_ms_p50']:>14.1f}{r['frame_ms_p95']:>14.1f}{r['rss_mb']:>13.0f}")
    print(f"\ndecisions: blazeface {ours['decisions']}, HOG {hog['decisions']}")
    print(f"per-stage ms (mean over the frames the stage ran on / frames): decode {floors['decode_ms']:.2f} / all")
    for k in ("detect", "mesh", "blendshapes", "quality", "smile", "embed", "match"):
        if k in ours["stages"]:
            mean, n = ours["stages"][k]
            print(f"  {k:<12}{mean:>8.2f} ms on {n} frames")
    print(f"one thread, pipeline alone: {one['wall_ms']:.1f} ms wall, CPU {one['cpu_ms']:.1f} ms per frame "
          f"(p95 {one['cpu_ms_p95']:.1f} ms), {one['fps']:.0f} fps")
    print(f"frame p95: {ours['frame_ms_p95']:.1f} ms (target < 40 ms)")
    if ours["decision_ms"]:
        d = np.array(ours["decision_ms"])
        print(f"frame-to-decision latency over {len(d)} decision(s): p50 {np.percentile(d, 50):.1f} ms, "
              f"p95 {np.percentile(d, 95):.1f} ms (target p95 < 100 ms)")
        q = max(ours["queued_decision_ms"])
        print(f"capture-to-decision through the node's queue (a file is read faster than it plays, nothing "
              f"dropped): max {q:.1f} ms")
    if ours["charge_ms"]:
        print(f"decision-to-fare-on-disk (ledger thread): max {max(ours['charge_ms']):.1f} ms")
    print(f"new front end vs old HOG front end: {ours['fps'] / hog['fps']:.2f}x fps")
    print(f"frames per second ratio vs the 1/4 loop: {ours['fps'] / results['peer']['fps']:.2f}x "
          f"(that loop found a face on {results['peer']['frames_with_face']} of {floors['frames']} frames)")
    print(f"frames per second ratio vs the full-frame loop: {ours['fps'] / peer_full['fps']:.2f}x (target >= 10x)")
    print(f"peak RSS of the bus node: {ours['rss_mb']:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
