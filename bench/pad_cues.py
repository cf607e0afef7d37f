"""The screen and print cues (edge.door.pad_cues): false-refusal cost on genuine footage, detection
of synthetic attacks.

Genuine: every clip the project ships (``GENUINE_CLIPS``), the largest BlazeFace face per
frame; each cue per frame, then 45-frame windows every 5 frames, as the door decides over a
track's last 45 frames. A window is refused when its median (moire, glare), its median at or
below (saturation), or its count of enclosing sides (bezel) crosses the cue's threshold.

Attacks: ``--n`` presentations of 45 frames per type, rendered with bench/pad.py's own attack
presentations (a hand-moved halftone print; a photo on a hand-held phone; the rider's video
replayed on a hand-held phone), before any prompt. Each presentation is one window.

    .venv/bin/python bench/pad_cues.py [--n 20] [--seed 7]

Before switching a cue on for a bus, measure its cost on that door's own camera: record riders
boarding (the door camera, ordinary days and nights) and run

    .venv/bin/python bench/pad_cues.py --genuine door1.mp4 door2.mp4 --n 0

with the bus's config (FACEFARE_CONFIG or --config): the thresholds are its ``[liveness]`` values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pad import CLIPS, DATA, FPS, Door, attack, backgrounds, clip, read_video  # noqa: E402
from edge.door.liveness import LivenessConfig  # noqa: E402
from edge.door.pad_cues import (  # noqa: E402
    border_lines,
    enclosing_sides,
    face_saturation,
    glare_area,
    moire_peak,
)
from edge.door.quality import face_patch  # noqa: E402

#: Real footage of genuine people for the cues' false-refusal cost: every clip the project ships.
GENUINE_CLIPS = (
    "footage/single_face.mp4", "footage/face_noface.mov", "footage/new_face_video-90.mp4",
    "footage/grid/bbaf2n.mpg", "footage/grid/lbbc2a.mpg", "footage/grid/swiz3n.mpg",
    "footage/cremad/1001_DFA_NEU_XX.flv", "footage/cremad/1001_DFA_HAP_XX.flv", "short_hamilton_clip.mp4",
)  # fmt: skip
WINDOW, STEP = 45, 5
KINDS = ("photo_hand", "photo_screen", "replay_naive")
CUES = ("moire", "glare", "saturation", "bezel")


def frame_cues(engine, img: np.ndarray) -> dict | None:
    """Every per-frame cue of the largest face in ``img`` (None: no face)."""
    dets = engine.detect(img, 0)
    if not dets:
        return None
    rect = max(dets, key=lambda d: d.rect.area).rect
    return {
        "moire": moire_peak(face_patch(img, rect)),
        "glare": glare_area(img, rect),
        "saturation": face_saturation(img, rect),
        "lines": border_lines(img, rect),
    }


def refused(frames: list[dict], cfg: LivenessConfig) -> dict[str, bool]:
    """Each cue's decision over one window of frames, at the ``[liveness]`` thresholds."""
    return {
        "moire": float(np.median([f["moire"] for f in frames])) >= cfg.screen_peak,
        "glare": float(np.median([f["glare"] for f in frames])) >= cfg.glare_area,
        "saturation": float(np.median([f["saturation"] for f in frames])) <= cfg.min_saturation,
        "bezel": enclosing_sides([f["lines"] for f in frames]) >= cfg.bezel_sides,
    }


def genuine_costs(engine, cfg: LivenessConfig, clips: list[Path]) -> dict[str, int]:
    print(f"{'genuine clip':36} {'frames':>6} {'moire med/max':>13} {'glare med/max':>13} "
          f"{'sat med/min':>11} {'sides max':>9} {'windows':>7}  refused (moire glare sat bezel any)")  # fmt: skip
    totals = dict.fromkeys((*CUES, "any"), 0) | {"windows": 0}
    for path in tqdm(clips, desc="genuine clips", leave=False):
        name = str(path.relative_to(DATA)) if path.is_relative_to(DATA) else path.name
        frames = [c for img in read_video(path) if (c := frame_cues(engine, img)) is not None]
        if len(frames) < WINDOW:
            tqdm.write(f"{name:36} {len(frames):6d} frames with a face: fewer than {WINDOW}, skipped")
            continue
        windows = [frames[i : i + WINDOW] for i in range(0, max(1, len(frames) - WINDOW + 1), STEP)]
        decisions = [refused(w, cfg) for w in windows]
        counts = {cue: sum(d[cue] for d in decisions) for cue in CUES} | {
            "any": sum(any(d.values()) for d in decisions)
        }
        sides = max(enclosing_sides([f["lines"] for f in w]) for w in windows)
        m, g, s = (np.array([f[k] for f in frames]) for k in ("moire", "glare", "saturation"))
        tqdm.write(f"{name:36} {len(frames):6d} {np.median(m):6.2f}/{m.max():6.2f} {np.median(g):6.3f}/{g.max():6.3f} "
                   f"{np.median(s):5.0f}/{s.min():5.0f} {sides:9d} {len(windows):7d}  "
                   + " ".join(f"{counts[c]:d}" for c in (*CUES, "any")))  # fmt: skip
        totals["windows"] += len(windows)
        for cue in (*CUES, "any"):
            totals[cue] += counts[cue]
    return totals


def attack_detection(engine, n: int, seed: int, cfg: LivenessConfig) -> dict[str, dict[str, int]]:
    rng = np.random.default_rng(seed)
    clips = {name: clip(name) for name in CLIPS}
    bgs = backgrounds()
    photos = sorted(int(f.name[:3]) for f in (DATA / "london").glob("*_neutral.jpg"))
    out: dict[str, dict[str, int]] = {}
    bar = tqdm(total=n * len(KINDS), desc="attacks", leave=False)
    for kind in KINDS:
        res = dict.fromkeys((*CUES, "any"), 0) | {"n": 0, "no face": 0}
        for _ in range(n):
            p = attack(kind, np.random.default_rng(rng.integers(2**32)), bgs, clips, photos)
            frames = [c for i in range(WINDOW) if (c := frame_cues(engine, p.frame(i / FPS, Door()))) is not None]
            res["n"] += 1
            bar.update()
            if len(frames) < 5:  # the door's screen cue needs 5 frames of the track too
                res["no face"] += 1
                continue
            decision = refused(frames, cfg)
            for cue, r in decision.items():
                res[cue] += r
            res["any"] += any(decision.values())
        out[kind] = res
    bar.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="presentations per attack type")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--genuine", nargs="+", type=Path, metavar="VIDEO",  # fmt: skip
                    help="genuine footage to measure (a door's own recordings); default: every clip the project ships")
    ap.add_argument("--config", type=Path, help="the bus's TOML config (default: FACEFARE_CONFIG or built-in)")
    args = ap.parse_args()
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    cfg = load_config(args.config)
    live = cfg.liveness
    engine = FaceEngine(cfg.models.dir, "cpu", 1, detector="blazeface")
    print(f"thresholds: moire median >= {live.screen_peak}, glare median >= {live.glare_area}, saturation median "
          f"<= {live.min_saturation}, bezel sides >= {live.bezel_sides}; windows of {WINDOW} frames")  # fmt: skip
    totals = genuine_costs(engine, live, args.genuine or [DATA / c for c in GENUINE_CLIPS])
    w = max(totals["windows"], 1)
    print(
        f"genuine windows refused, of {w}: "
        + ", ".join(f"{c} {totals[c]} ({totals[c] / w:.1%})" for c in (*CUES, "any"))
    )
    if args.n <= 0:
        return
    res = attack_detection(engine, args.n, args.seed, live)
    print(f"\n{'attack (refused / n)':22} {'no face':>7} " + " ".join(f"{c:>10}" for c in CUES) + f" {'any':>10}")
    for kind, r in res.items():
        print(f"{kind:22} {r['no face']:7d} " + " ".join(f"{r[c]:4d} ({r[c] / r['n']:4.0%})" for c in (*CUES, "any")))


if __name__ == "__main__":
    main()
