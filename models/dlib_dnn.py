"""Parse a serialised dlib dnn network (``net_type`` saved with ``dlib::serialize``) into plain layers.

dlib writes a network from the outside in: the loss layer first (its version and details), then
each wrapping layer's version integer, down to the input layer, and then every layer's details on
the way back out. So after the input layer the stream lists the computational layers in forward
order. Tag and skip layers (``tag1``, ``skip1``, ...) write only their version (1) and no details:
they appear as :class:`Wrapper` markers, and which tag or skip each one is follows from the
network's known architecture (see :mod:`models.convert`).

Layer formats follow dlib's ``dnn/core.h``, ``dnn/layers.h``, ``dnn/input.h`` and ``dnn/loss.h``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.dlib_serial import DlibReader


@dataclass
class Layer:
    """One computational layer: ``kind`` is dlib's name without version suffix (con, fc, relu...)."""

    kind: str
    params: dict[str, object] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Wrapper:
    """A tag or skip layer: it has no details in the stream, only its position."""

    kind: str = "wrapper"


@dataclass
class Network:
    input: Layer
    layers: list[Layer | Wrapper]
    loss: Layer


# -- input and loss layers -----------------------------------------------------------------


def _read_input(r: DlibReader) -> Layer:
    name = r.expect_string(
        "input_rgb_image", "input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2"
    )
    mean = [r.float(), r.float(), r.float()]  # red, green, blue
    params: dict[str, object] = {"mean_rgb": mean}
    if name == "input_rgb_image_sized":
        params["size"] = (r.int(), r.int())
        name = "input_rgb_image"
    elif name.startswith("input_rgb_image_pyramid"):
        if name.endswith("2"):
            params["pyramid_padding"] = r.int()
            params["pyramid_outer_padding"] = r.int()
        else:
            params["pyramid_padding"], params["pyramid_outer_padding"] = 10, 11
        name = "input_rgb_image_pyramid"
    return Layer(name, params)


def _read_box_overlap(r: DlibReader) -> tuple[float, float]:
    return (r.float(), r.float())  # iou threshold, percent covered threshold


def _read_loss(r: DlibReader) -> Layer:
    name = r.expect_string("loss_mmod_", "loss_metric_", "loss_metric_2")
    if name == "loss_metric_":
        return Layer("loss_metric", {"margin": 0.1, "dist_thresh": 0.75})
    if name == "loss_metric_2":
        return Layer("loss_metric", {"margin": r.float(), "dist_thresh": r.float()})
    version = r.int()
    if not 1 <= version <= 4:
        raise r.fail(f"mmod_options version {version}")
    windows = []
    if version == 1:
        windows.append({"width": r.int(), "height": r.int(), "label": ""})
    else:
        for _ in range(r.int()):
            wv = r.int()
            win = {"width": r.int(), "height": r.int(), "label": r.string() if wv == 2 else ""}
            windows.append(win)
    params: dict[str, object] = {
        "detector_windows": windows,
        "loss_per_false_alarm": r.float(),
        "loss_per_missed_target": r.float(),
        "truth_match_iou_threshold": r.float(),
        "overlaps_nms": _read_box_overlap(r),
        "overlaps_ignore": _read_box_overlap(r),
    }
    if version >= 3:
        params["assume_image_pyramid"] = r.int()
    if version >= 4:
        params["use_bounding_box_regression"] = r.bool()
        params["bbr_lambda"] = r.float()
    return Layer("loss_mmod", params)


# -- computational layers ------------------------------------------------------------------


def _read_con(r: DlibReader, version: str) -> Layer:
    params_t = r.tensor()
    num_filters = r.int()
    nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
    filters_shape = r.alias_tensor()
    bias_shape = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
        r.bool()  # use_relu: a fused relu flag, False for every shipped model
    flat = params_t.reshape(-1)
    n_w = int(np.prod(filters_shape))
    filters = flat[:n_w].reshape(filters_shape)
    weights = {"filters": filters}
    if use_bias:
        weights["bias"] = flat[n_w : n_w + int(np.prod(bias_shape))].copy()
    return Layer(
        "con",
        {"num_filters": num_filters, "kernel": (nr, nc), "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)},
        weights,
    )


def _read_fc(r: DlibReader, version: str) -> Layer:
    num_outputs, num_inputs = r.int(), r.int()
    params_t = r.tensor()
    w_shape = r.alias_tensor()
    b_shape = r.alias_tensor()
    bias_mode = r.int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    for _ in range(4):
        r.float()
    use_bias = r.bool() if version == "fc_3" else True
    flat = params_t.reshape(-1)
    n_w = int(np.prod(w_shape))
    weights = {"weights": flat[:n_w].reshape(num_inputs, num_outputs)}
    if bias_mode == 0 and use_bias:
        weights["bias"] = flat[n_w : n_w + int(np.prod(b_shape))].copy()
    return Layer("fc", {"num_outputs": num_outputs, "num_inputs": num_inputs}, weights)


def _read_affine(r: DlibReader, version: str) -> Layer:
    if version in ("bn_con2", "bn_fc2"):
        # A batch-norm layer saved from training. At inference dlib turns it into the affine
        # transform gamma / sqrt(running_var + eps) * (x - running_mean) + beta; so do we.
        params_t = r.tensor()
        gamma_shape = r.alias_tensor()
        r.alias_tensor()
        r.tensor(), r.tensor()  # batch means and inverse stds from the last training step
        running_means, running_vars = r.tensor(), r.tensor()
        r.int(), r.int()  # num_updates, running_stats_window_size
        for _ in range(4):
            r.float()
        eps = r.float()
        flat = params_t.reshape(-1).astype(np.float64)
        n = int(np.prod(gamma_shape))
        gamma = flat[:n] / np.sqrt(running_vars.reshape(-1).astype(np.float64) + eps)
        beta = flat[n : 2 * n] - gamma * running_means.reshape(-1)
        return Layer(
            "affine",
            {"mode": "conv" if version == "bn_con2" else "fc", "disabled": False},
            {
                "gamma": gamma.astype(np.float32).reshape(gamma_shape),
                "beta": beta.astype(np.float32).reshape(gamma_shape),
            },
        )
    params_t = r.tensor()
    gamma_shape = r.alias_tensor()
    r.alias_tensor()
    mode = r.int()  # 0: CONV_MODE, 1: FC_MODE
    disabled = r.bool() if version == "affine_2" else False
    flat = params_t.reshape(-1)
    n = int(np.prod(gamma_shape))
    return Layer(
        "affine",
        {"mode": "conv" if mode == 0 else "fc", "disabled": disabled},
        {"gamma": flat[:n].reshape(gamma_shape), "beta": flat[n : 2 * n].reshape(gamma_shape)},
    )


def _read_pool(r: DlibReader, kind: str) -> Layer:
    nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
    return Layer(kind, {"kernel": (nr, nc), "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)})


def _read_details(r: DlibReader) -> Layer:
    version = r.string()
    if version in ("con_4", "con_5", "con_6"):
        return _read_con(r, version)
    if version in ("fc_2", "fc_3"):
        return _read_fc(r, version)
    if version in ("affine_", "affine_2", "bn_con2", "bn_fc2"):
        return _read_affine(r, version)
    if version in ("relu_", "relu_2"):
        disabled = r.bool() if version == "relu_2" else False
        return Layer("relu", {"disabled": disabled})
    if version == "max_pool_2":
        return _read_pool(r, "max_pool")
    if version == "avg_pool_2":
        return _read_pool(r, "avg_pool")
    if version == "add_prev_":
        return Layer("add_prev")
    raise r.fail(f"unsupported dlib layer {version!r}")


def _read_subnet(r: DlibReader, out: list[Layer | Wrapper]) -> Layer:
    """Read one nested level; append its layer (after its subnet's) to ``out``; return the input."""
    version = r.int()
    peek = r.peek_string()
    if peek is not None and peek.startswith("input"):
        # add_layer (version 2 or 3) directly on the input layer.
        inp = _read_input(r)
        out.append(_read_details(r))
        r.bool(), r.bool(), r.bool()
        r.tensor(), r.tensor(), r.tensor()  # x_grad, cached_output, grad_final
        if version == 3:
            r.int()  # sample expansion factor
        return inp
    if version == 1:
        # add_tag_layer or add_skip_layer: only the subnet follows.
        inp = _read_subnet(r, out)
        out.append(Wrapper())
        return inp
    if version == 2:
        inp = _read_subnet(r, out)
        out.append(_read_details(r))
        r.bool(), r.bool(), r.bool()  # setup called, gradient stale, output disabled
        r.tensor(), r.tensor(), r.tensor()  # x_grad, cached_output, params_grad
        return inp
    raise r.fail(f"unexpected layer version {version}")


def read_network(path: str | Path) -> Network:
    """Read a whole ``loss<...<input>>`` network file written by ``dlib::serialize``."""
    r = DlibReader.from_file(path)
    version = r.int()
    if version != 1:
        raise r.fail(f"loss layer version {version}, expected 1")
    loss = _read_loss(r)
    layers: list[Layer | Wrapper] = []
    inp = _read_subnet(r, layers)
    if not r.at_end:
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network")
    return Network(inp, layers, loss)
