"""The door camera between boardings: one still scene, frame after frame, motion regions against whole frames.

    .venv/bin/python bench/still_door.py [--frames 240] [--models DIR]

A bus camera spends most of its time looking at a doorway where nothing moves. This repeats one
frame of the shipped clip ``--frames`` times, for two still scenes:

* **empty door**: the first clip frame in which the detector finds no face;
* **rider waiting**: clip frame 150, where Lin-Manuel Miranda stands still in view.

and measures the time per frame of the door pipeline (``BusPipeline.process``: detect, track,
gates; no gallery match ever happens because a repeated frame never passes the smile gate) with
``detect_regions="motion"`` (the default) and ``"full"``, plus the loop of face_recognition's video
example (frame scaled to 1/4, HOG, encodings) on the same frames. All in one process, the three
alternating per scene. Prints ms per frame, frames per second and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "facefare" / "demo" / "data" / "short_hamilton_clip.mp4"


def clip_frames() -> list[np.ndarray]:
    from hardware.cameras import VideoFileSource

    return [f.image for f in VideoFileSource(CLIP)]


def time_ours(engine, scene: np.ndarray, frames: int, regions: str) -> float:
    """Mean ms per frame of a fresh pipeline fed ``scene`` ``frames`` times."""
    from edge.door.pipeline import BusPipeline, PipelineConfig
    from edge.faces.match import Gallery

    pipe = BusPipeline(engine, Gallery([], np.zeros((0, 128), np.float32)), cfg=PipelineConfig(detect_regions=regions))
    start = time.perf_counter()
    for i in tqdm(range(frames), desc=f"facefare {regions}", unit="frame", leave=False):
        pipe.process(scene, i / 30.0, i)
    return (time.perf_counter() - start) * 1000 / frames


def time_peer(scene_bgr: np.ndarray, frames: int) -> float:
    import warnings

    import cv2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    start = time.perf_counter()
    for _ in tqdm(range(frames), desc="face_recognition 1/4", unit="frame", leave=False):
        small = cv2.resize(scene_bgr, (0, 0), fx=0.25, fy=0.25)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        fr.face_encodings(rgb, fr.face_locations(rgb))
    return (time.perf_counter() - start) * 1000 / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240, help="repetitions of each still frame (default 240)")
    parser.add_argument("--models", default=None)
    args = parser.parse_args()
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    engine = FaceEngine(args.models or load_config(None).models.dir, "cpu", 2)
    frames = clip_frames()  # RGB
    empty = next(f for f in frames if not engine.detect(f, 0, "hog"))
    scenes = {"empty door": empty, "rider waiting": frames[150]}
    print(f"{'scene':<15}{'pipeline':<28}{'ms/frame':>10}{'fps':>8}")
    for name, scene in scenes.items():
        ms = {
            "facefare, motion regions": time_ours(engine, scene, args.frames, "motion"),
            "facefare, whole frames": time_ours(engine, scene, args.frames, "full"),
            "face_recognition loop (1/4)": time_peer(np.ascontiguousarray(scene[:, :, ::-1]), args.frames),
        }
        for who, value in ms.items():
            print(f"{name:<15}{who:<28}{value:>10.2f}{1000 / value:>8.1f}")
        motion, full, peer = ms.values()
        print(f"{name:<15}motion vs whole frames {full / motion:.1f}x; motion vs face_recognition's 1/4 loop "
              f"{peer / motion:.2f}x (the issue's target: 5x)\n")  # fmt: skip


if __name__ == "__main__":
    main()
