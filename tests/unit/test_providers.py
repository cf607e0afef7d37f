"""Execution-provider choice and fallback, on this CPU-only machine (hardware/providers.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from hardware.providers import (
    choose_providers,
    make_session,
    recommended_threads,
    session_options,
    tensorrt_options,
)
from tests.helpers import reference

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CUDA_ONLY = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-node ONNX model (Relu on a 1x4 float tensor), written with the onnx package."""
    onnx = reference("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "relu.onnx"
    onnx.save(model, str(path))
    return path


def test_auto_picks_the_best_offered(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.INFO, logger="hardware.providers"):
        chosen = choose_providers("auto", ALL, cache_dir=tmp_path / "trt")
    assert [p if isinstance(p, str) else p[0] for p in chosen] == ALL
    assert "picked TensorrtExecutionProvider" in caplog.text
    assert choose_providers("auto", CUDA_ONLY) == CUDA_ONLY
    assert choose_providers("auto", CPU_ONLY) == CPU_ONLY


def test_asking_for_a_missing_provider_falls_back_to_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hardware.providers"):
        assert choose_providers("tensorrt", CUDA_ONLY) == CPU_ONLY
        assert choose_providers("cuda", CPU_ONLY) == CPU_ONLY
    assert "TensorrtExecutionProvider is not available here; falling back to CPU" in caplog.text
    assert "CUDAExecutionProvider is not available here" in caplog.text
    assert choose_providers("cuda", ALL) == CUDA_ONLY  # an explicit choice does not climb to TensorRT


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or tensorrt"):
        choose_providers("gpu", ALL)


def test_tensorrt_keeps_its_engine_cache_under_the_given_dir(tmp_path: Path) -> None:
    cache = tmp_path / "data" / "trt-cache"
    name, opts = choose_providers("tensorrt", ALL, cache_dir=cache)[0]
    assert name == "TensorrtExecutionProvider"
    assert opts["trt_engine_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == str(cache)
    assert opts["trt_timing_cache_path"] == str(cache)
    assert opts["trt_fp16_enable"] is False  # FP16 would break the 1e-3 agreement with CPU
    assert cache.is_dir()
    assert "trt_engine_cache_enable" not in tensorrt_options(None)


def test_threads_suit_a_four_core_pi() -> None:
    assert recommended_threads(4) == 3
    assert recommended_threads(1) == 1
    opts = session_options(3)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    with pytest.raises(ValueError, match="threads"):
        session_options(0)


def test_cpu_session_runs(relu_model: Path) -> None:
    session = make_session(relu_model, "auto", threads=1)
    assert session.get_providers()[0] in ort.get_available_providers()
    out = session.run(None, {"x": np.array([[-1, 0, 2, -3]], np.float32)})[0]
    assert out.tolist() == [[0, 0, 2, 0]]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_gpu_provider_that_does_not_load_is_reported_and_cpu_runs(
    relu_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime is told CUDA is offered (as onnxruntime-gpu says even with a broken driver); this
    CPU build runs the model on CPU instead, and make_session says so."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine really has CUDA")
    with caplog.at_level(logging.WARNING, logger="hardware.providers"):
        session = make_session(relu_model, "auto", threads=1, available=CUDA_ONLY)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "asked for CUDAExecutionProvider but onnxruntime runs it on CPUExecutionProvider" in caplog.text
    assert session.run(None, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 4)


def test_providers_command_lists_what_each_setting_uses(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facefare.cli import main

    env = {"FACEFARE_HOME": str(tmp_path), "FACEFARE_CONFIG": "", "FACEFARE_EDGE__PROVIDERS": "auto"}
    result = CliRunner().invoke(main, ["hardware", "providers"], env=env)
    assert result.exit_code == 0, result.output
    assert f"offers: {', '.join(ort.get_available_providers())}" in result.output
    assert "  cpu       -> CPUExecutionProvider" in result.output
    assert "edge.providers = 'auto'" in result.output
    assert f"TensorRT engine cache: {tmp_path / 'trt-cache'}" in result.output


def test_a_gpu_session_that_fails_to_start_falls_back_to_cpu(
    relu_model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime-gpu raises when CUDA cannot start (driver too old, library missing); there is no
    such GPU here, so a wrapper raises that error for any session asked to use CUDA, as it would."""
    real = ort.InferenceSession

    def cuda_broken(path, sess_options=None, providers=None, **kwargs):
        if any((p if isinstance(p, str) else p[0]) != "CPUExecutionProvider" for p in providers or []):
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version")
        return real(path, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", cuda_broken)
    with caplog.at_level(logging.WARNING, logger="hardware.providers"):
        session = make_session(relu_model, "cuda", threads=1, available=CUDA_ONLY)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider failed (CUDA failure 35" in caplog.text and "falling back to CPU" in caplog.text
