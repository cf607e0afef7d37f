"""Embeddings on each onnxruntime execution provider: agreement with CPU and time per batch.

    .venv/bin/python bench/providers.py [--providers cpu,cuda,tensorrt] [--threads N] [--repeat 20]
                                        [--tolerance 1e-3] [--json FILE] [--models DIR]

The aligned face chips of the fixture photos (facefare/demo/data, detected and aligned once on
CPU) are embedded on every provider asked for. For each one it reports the provider onnxruntime
really used (a silent fallback to CPU is reported as such, not timed as a GPU), the largest
absolute difference of any embedding component from the CPU embeddings, and the median time of
one batch and of one chip (after a warm-up, which for TensorRT builds or loads the engine from
``--trt-cache``). Exits 1 if a provider ran and differs from CPU by more than ``--tolerance``,
2 if a provider asked for did not run. scripts/gpu-check.sh runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edge.faces.embedder import FaceEmbedder  # noqa: E402
from edge.faces.engine import FaceEngine  # noqa: E402
from edge.faces.images import load_image_file  # noqa: E402
from hardware.providers import make_session  # noqa: E402

FACES = ROOT / "facefare" / "demo" / "data"
PHOTOS = ["obama.jpg", "biden.jpg", "two_people.jpg", "kit_harington1.jpeg", "rose_leslie1.jpg", "alex_lacamoire1.jpg"]
EXPECTED = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def fixture_chips(engine: FaceEngine) -> np.ndarray:
    chips = []
    for name in PHOTOS:
        img = load_image_file(FACES / name)
        rects = [d.rect for d in engine.detect(img, 1, "hog")]
        chips.append(engine.chips(img, engine.landmarks(img, rects, "small")))
    return np.concatenate(chips)


def measure(provider: str, model: Path, chips: np.ndarray, threads: int, repeat: int, cache: Path) -> dict:
    session = make_session(model, provider, threads, cache_dir=cache)
    used = session.get_providers()[0]
    embedder = FaceEmbedder(session)
    t0 = time.perf_counter()
    codes = embedder.embed(chips)  # warm-up: TensorRT builds (or loads) its engine here
    warmup = time.perf_counter() - t0
    batch = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        embedder.embed(chips)
        batch.append(time.perf_counter() - t0)
    one = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        embedder.embed(chips[:1])
        one.append(time.perf_counter() - t0)
    return {
        "provider": provider,
        "ran_on": used,
        "ran_as_asked": used == EXPECTED[provider],
        "warmup_s": round(warmup, 3),
        "batch_ms": round(statistics.median(batch) * 1000, 2),
        "one_chip_ms": round(statistics.median(one) * 1000, 2),
        "codes": codes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--providers", default="cpu,cuda,tensorrt", help="comma-separated: cpu, cuda, tensorrt")
    ap.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |gpu - cpu| per component")
    ap.add_argument("--models", type=Path, default=None, help="converted models (default: the config's)")
    ap.add_argument("--trt-cache", type=Path, default=ROOT / "artifacts" / "trt-cache")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    if args.models is None:
        from facefare.config import load_config

        args.models = load_config(None).models.dir
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if "cpu" not in providers:
        providers.insert(0, "cpu")
    if set(providers) - {"cpu"} and hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from their pip wheels (onnxruntime-gpu >= 1.21), before any session
            ort.preload_dlls()
        except Exception as exc:
            print(f"preload_dlls: {exc}", file=sys.stderr)
    engine = FaceEngine(args.models, "cpu", args.threads)
    engine.verify_all()
    chips = fixture_chips(engine)
    model = args.models / "face_embedder.onnx"
    print(f"onnxruntime {ort.__version__}, offers {', '.join(ort.get_available_providers())}")
    print(f"{len(chips)} face chips from {len(PHOTOS)} photos, {args.repeat} repeats, {args.threads} CPU threads\n")
    rows = [measure(p, model, chips, args.threads, args.repeat, args.trt_cache) for p in providers]
    reference = rows[0]["codes"]
    status = 0
    print(f"| provider | ran on | max abs diff vs CPU | warm-up | batch of {len(chips)} | one chip |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        row["max_abs_diff"] = float(np.abs(row.pop("codes") - reference).max())
        if not row["ran_as_asked"]:
            status = max(status, 2)
            verdict = "did not run (fell back)"
        elif row["max_abs_diff"] > args.tolerance:
            status = max(status, 1)
            verdict = f"{row['max_abs_diff']:.2e} > {args.tolerance:g}: FAIL"
        else:
            verdict = f"{row['max_abs_diff']:.2e} (ok)"
        print(f"| {row['provider']} | {row['ran_on']} | {verdict} | {row['warmup_s']} s | "
              f"{row['batch_ms']} ms | {row['one_chip_ms']} ms |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"onnxruntime": ort.__version__, "chips": len(chips), "repeat": args.repeat, "threads": args.threads}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
