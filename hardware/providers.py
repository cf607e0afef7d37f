"""Choosing an onnxruntime execution provider and opening inference sessions.

``auto`` takes the best provider this onnxruntime build offers (TensorRT, then CUDA, then CPU);
asking for one that is not available falls back to CPU with a warning in the log, so a bus with
a broken GPU driver still charges fares.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_PREFERENCE = ("tensorrt", "cuda", "cpu")


def choose_providers(choice: str, available: list[str] | None = None, cache_dir: Path | None = None) -> list:
    """The onnxruntime provider list for ``choice`` (``auto|cpu|cuda|tensorrt``), CPU always last."""
    if choice not in ("auto", *_NAMES):
        raise ValueError(f"unknown execution provider {choice!r}; expected auto, cpu, cuda or tensorrt")
    available = available if available is not None else ort.get_available_providers()
    wanted = list(_PREFERENCE) if choice == "auto" else [choice]
    chosen: list = []
    for key in wanted:
        name = _NAMES[key]
        if name not in available:
            if choice != "auto":
                log.warning("execution provider %s is not available here; falling back to CPU", name)
            continue
        if key == "tensorrt" and cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            chosen.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}))
        elif key != "cpu":
            chosen.append(name)
    chosen.append("CPUExecutionProvider")
    return chosen


def make_session(
    model_path: str | Path, provider: str = "cpu", threads: int = 2, cache_dir: Path | None = None
) -> ort.InferenceSession:
    """Open an inference session for ``model_path`` with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = choose_providers(provider, cache_dir=cache_dir)
    session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    log.info("opened %s on %s", Path(model_path).name, session.get_providers()[0])
    return session
