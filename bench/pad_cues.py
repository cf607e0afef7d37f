"""The screen and print cues (edge.door.pad_cues): false-refusal cost on genuine footage, detection
of synthetic attacks.

Genuine: every clip the project ships (bench/pad.py GENUINE_CLIPS), the largest BlazeFace face per
frame; each cue per frame, then 45-frame windows every 5 frames, as the door decides over a
track's last 45 frames. A window is refused when its median (moire, glare), its median at or
below (saturation), or its count of enclosing sides (bezel) crosses the cue's threshold.

Attacks: ``--n`` presentations of 45 frames per type, rendered with bench/pad.py's own attack
presentations (a hand-moved halftone print; a photo on a hand-held phone; the rider's video
replayed on a hand-held phone), before any prompt. Each presentation is one window.

    .venv/bin/python bench/pad_cues.py [--n 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pad import CLIPS, DATA, FPS, GENUINE_CLIPS, Door, attack, backgrounds, clip, read_video  # noqa: E402
from edge.door.liveness import LivenessConfig  # noqa: E402
from edge.door.pad_cues import (  # noqa: E402
    BEZEL_SIDES,
    GLARE_AREA,
    MAX_SATURATION,
    border_lines,
    enclosing_sides,
    face_saturation,
    glare_area,
    moire_peak,
)
from edge.door.quality import face_patch  # noqa: E402

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


def refused(frames: list[dict], moire_peak_min: float) -> dict[str, bool]:
    """Each cue's decision over one window of frames."""
    return {
        "moire": float(np.median([f["moire"] for f in frames])) >= moire_peak_min,
        "glare": float(np.median([f["glare"] for f in frames])) >= GLARE_AREA,
        "saturation": float(np.median([f["saturation"] for f in frames])) <= MAX_SATURATION,
        "bezel": enclosing_sides([f["lines"] for f in frames]) >= BEZEL_SIDES,
    }


def genuine_costs(engine, moire_min: float) -> dict[str, int]:
    print(f"{'genuine clip':36} {'frames':>6} {'moire med/max':>13} {'glare med/max':>13} "
          f"{'sat med/min':>11} {'sides max':>9} {'windows':>7}  refused (moire glare sat bezel any)")  # fmt: skip
    totals = dict.fromkeys((*CUES, "any"), 0) | {"windows": 0}
    for name in tqdm(GENUINE_CLIPS, desc="genuine clips", leave=False):
        frames = [c for img in read_video(DATA / name) if (c := frame_cues(engine, img)) is not None]
        windows = [frames[i : i + WINDOW] for i in range(0, max(1, len(frames) - WINDOW + 1), STEP)]
        decisions = [refused(w, moire_min) for w in windows]
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


def attack_detection(engine, n: int, seed: int, moire_min: float) -> dict[str, dict[str, int]]:
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
            decision = refused(frames, moire_min)
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
    args = ap.parse_args()
    from edge.faces.engine import FaceEngine
    from facefare.config import load_config

    cfg = load_config(None)
    engine = FaceEngine(cfg.models.dir, "cpu", 1, detector="blazeface")
    moire_min = LivenessConfig().screen_peak
    print(f"thresholds: moire median >= {moire_min}, glare median >= {GLARE_AREA}, saturation median <= "
          f"{MAX_SATURATION}, bezel sides >= {BEZEL_SIDES}; windows of {WINDOW} frames")  # fmt: skip
    totals = genuine_costs(engine, moire_min)
    w = totals["windows"]
    print(
        f"genuine windows refused, of {w}: "
        + ", ".join(f"{c} {totals[c]} ({totals[c] / w:.1%})" for c in (*CUES, "any"))
    )
    res = attack_detection(engine, args.n, args.seed, moire_min)
    print(f"\n{'attack (refused / n)':22} {'no face':>7} " + " ".join(f"{c:>10}" for c in CUES) + f" {'any':>10}")
    for kind, r in res.items():
        print(f"{kind:22} {r['no face']:7d} " + " ".join(f"{r[c]:4d} ({r[c] / r['n']:4.0%})" for c in (*CUES, "any")))


if __name__ == "__main__":
    main()
