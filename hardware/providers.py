"""Choosing an onnxruntime execution provider and opening inference sessions.

``auto`` takes the best provider this onnxruntime build offers (TensorRT, then CUDA, then CPU)
and says in the log which one it picked. Asking for one that is not available falls back to
CPU with a WARNING, and so does a GPU provider that fails when the session is created (a
broken driver or a missing CUDA library): a bus with a bad GPU still charges fares.

TensorRT builds an engine for each model the first time it sees it (minutes on a Jetson); the
engine and timing caches are kept under ``<data_dir>/trt-cache`` so a restart reuses them.
FP16 is left off so that embeddings stay within 1e-3 of the CPU ones.

Threads: a Raspberry Pi 4 or 5 has 4 cores; :func:`recommended_threads` leaves one for the
camera and the rest of the process, and :func:`make_session` turns off onnxruntime's busy
spinning so that idle inference threads do not steal the camera's core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_PREFERENCE = ("tensorrt", "cuda", "cpu")
CHOICES = ("auto", *_PREFERENCE)

#: The onnxruntime provider list: names, or (name, options) pairs.
ProviderList = list[str | tuple[str, dict[str, Any]]]


def available_providers() -> list[str]:
    """What this onnxruntime build offers (``onnxruntime.get_available_providers()``)."""
    return list(ort.get_available_providers())


def recommended_threads(cpu_count: int | None = None) -> int:
    """Intra-op threads for a bus node: all cores but one, at least 1, at most 4.

    >>> recommended_threads(4), recommended_threads(2), recommended_threads(1), recommended_threads(12)
    (3, 1, 1, 4)
    """
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(4, cores - 1))


def tensorrt_options(cache_dir: Path | None, fp16: bool = False) -> dict[str, Any]:
    """TensorRT provider options: engine and timing caches under ``cache_dir`` (created), FP16 off."""
    opts: dict[str, Any] = {"trt_fp16_enable": fp16}
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache_dir),
        )
    return opts


def best_provider(choice: str, available: list[str]) -> str:
    """The provider ``choice`` ends up on with ``available`` (no logging, no options).

    >>> best_provider("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    'CPUExecutionProvider'
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown execution provider {choice!r}; expected auto, cpu, cuda or tensorrt")
    wanted = _PREFERENCE if choice == "auto" else (choice,)
    return next((_NAMES[k] for k in wanted if _NAMES[k] in available), "CPUExecutionProvider")


def choose_providers(choice: str, available: list[str] | None = None, cache_dir: Path | None = None) -> ProviderList:
    """The onnxruntime provider list for ``choice`` (``auto|cpu|cuda|tensorrt``), CPU always last.

    >>> choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown execution provider {choice!r}; expected auto, cpu, cuda or tensorrt")
    available = available if available is not None else available_providers()
    wanted = list(_PREFERENCE) if choice == "auto" else [choice]
    chosen: ProviderList = []
    for key in wanted:
        name = _NAMES[key]
        if name not in available:
            if choice != "auto":
                log.warning("execution provider %s is not available here; falling back to CPU", name)
            continue
        if key == "tensorrt":
            chosen.append((name, tensorrt_options(cache_dir)))
        elif key != "cpu":
            chosen.append(name)
    chosen.append("CPUExecutionProvider")
    if choice == "auto":
        log.info("execution provider auto: picked %s (onnxruntime offers %s)", _name(chosen[0]), ", ".join(available))
    return chosen


def _name(entry: str | tuple[str, dict[str, Any]]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def session_options(threads: int = 2) -> ort.SessionOptions:
    """Session options for the bus: ``threads`` intra-op threads, one inter-op, no busy spinning."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def make_session(
    model_path: str | Path,
    provider: str = "cpu",
    threads: int = 2,
    cache_dir: Path | None = None,
    available: list[str] | None = None,
) -> ort.InferenceSession:
    """Open an inference session for ``model_path`` on ``provider`` with ``threads`` intra-op threads.

    If the GPU providers cannot create the session, or onnxruntime quietly runs it on another
    provider than the one asked for, a WARNING says so and the session runs on CPU.
    """
    name = Path(model_path).name
    providers = choose_providers(provider, available=available, cache_dir=cache_dir)
    opts = session_options(threads)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
        if providers == ["CPUExecutionProvider"]:
            raise
        log.warning("%s: %s failed (%s); falling back to CPU", name, _name(providers[0]), exc)
        providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(model_path), sess_options=session_options(threads), providers=providers)
    got = session.get_providers()[0]
    if got != _name(providers[0]):
        log.warning("%s: asked for %s but onnxruntime runs it on %s", name, _name(providers[0]), got)
    log.info("opened %s on %s with %d threads", name, got, threads)
    return session
