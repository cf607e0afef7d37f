"""Turn parsed dlib dnn networks (:mod:`models.dlib_dnn`) into ONNX graphs.

Two graphs are built:

* the face embedder (``dlib_face_recognition_resnet_model_v1``): input ``chips`` float32
  (N, 150, 150, 3) RGB in 0..255, output ``embeddings`` float32 (N, 128), dynamic batch;
* the MMOD face detector: input ``input`` float32 (N, 3, H, W) already normalised as dlib's
  tensor ((pixel - mean) / 256), output ``scores`` (N, 1, H', W'), any H and W.

Affine layers (batch norm frozen at inference) are folded into the preceding convolution in
float64, which is what onnxruntime would do anyway and keeps the graph small. dlib's ``add_prev``
adds tensors of different sizes by treating missing elements as zero; the graph pads explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.dlib_dnn import Layer, Network, Wrapper, read_network

OPSET = 17
PRODUCER = "facefare-models"


@dataclass
class _Builder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs: object) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _fold_affine(con: Layer, affine: Layer | None) -> tuple[np.ndarray, np.ndarray]:
    w = con.weights["filters"].astype(np.float64)
    b = con.weights.get("bias", np.zeros(w.shape[0], np.float32)).astype(np.float64)
    if affine is not None:
        gamma = affine.weights["gamma"].reshape(-1).astype(np.float64)
        beta = affine.weights["beta"].reshape(-1).astype(np.float64)
        w = w * gamma[:, None, None, None]
        b = b * gamma + beta
    return w.astype(np.float32), b.astype(np.float32)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - kernel) // stride


def _emit_layers(
    g: _Builder, x: str, layers: list[Layer | Wrapper], shape: tuple[int, int, int] | None, tag_plan: list[str]
) -> str:
    """Emit nodes for ``layers`` from tensor ``x``; ``shape`` (C, H, W) is tracked when known.

    ``tag_plan`` names each Wrapper in order: ``tag1``, ``tag2`` or ``skip1`` (see resnet plan).
    """
    tags: dict[str, tuple[str, tuple[int, int, int] | None]] = {}
    wrappers = iter(tag_plan)
    pending_add_tag = "tag1"
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Wrapper):
            role = next(wrappers)
            if role.startswith("tag"):
                tags[role] = (x, shape)
            else:  # skip1: continue from what tag1 saw; the following add_prev adds tag2
                x, shape = tags["tag1"]
                pending_add_tag = "tag2"
            i += 1
            continue
        if layer.kind == "con":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            affine = nxt if isinstance(nxt, Layer) and nxt.kind == "affine" and not nxt.params["disabled"] else None
            w, b = _fold_affine(layer, affine)
            (kh, kw), (sy, sx), (py, px) = layer.params["kernel"], layer.params["stride"], layer.params["padding"]
            x = g.op(
                "Conv",
                [x, g.const("w", w), g.const("b", b)],
                kernel_shape=[kh, kw],
                strides=[sy, sx],
                pads=[py, px, py, px],
            )
            if shape is not None:
                shape = (w.shape[0], _conv_out(shape[1], kh, sy, py), _conv_out(shape[2], kw, sx, px))
            i += 2 if affine is not None else 1
            continue
        if layer.kind == "affine":
            if not layer.params["disabled"]:
                gamma = layer.weights["gamma"].reshape(1, -1, 1, 1)
                beta = layer.weights["beta"].reshape(1, -1, 1, 1)
                x = g.op("Add", [g.op("Mul", [x, g.const("gamma", gamma)]), g.const("beta", beta)])
        elif layer.kind == "relu":
            if not layer.params["disabled"]:
                x = g.op("Relu", [x])
        elif layer.kind in ("max_pool", "avg_pool"):
            (kh, kw), (sy, sx), (py, px) = layer.params["kernel"], layer.params["stride"], layer.params["padding"]
            if kh == 0 and kw == 0:  # avg_pool_everything
                x = g.op("GlobalAveragePool", [x])
                shape = (shape[0], 1, 1) if shape is not None else None
            else:
                op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
                extra = {} if op == "MaxPool" else {"count_include_pad": 0}
                x = g.op(op, [x], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px], **extra)
                if shape is not None:
                    shape = (shape[0], _conv_out(shape[1], kh, sy, py), _conv_out(shape[2], kw, sx, px))
        elif layer.kind == "add_prev":
            other, other_shape = tags[pending_add_tag]
            pending_add_tag = "tag1"
            if shape is None or other_shape is None:
                raise ValueError("add_prev needs static shapes")
            target = tuple(max(a, b) for a, b in zip(shape, other_shape, strict=True))
            x = _pad_to(g, x, shape, target)
            other = _pad_to(g, other, other_shape, target)
            x = g.op("Add", [x, other])
            shape = target
        elif layer.kind == "fc":
            x = g.op("Flatten", [x], axis=1)
            x = g.op("MatMul", [x, g.const("fc_w", layer.weights["weights"].astype(np.float32))])
            if "bias" in layer.weights:
                x = g.op("Add", [x, g.const("fc_b", layer.weights["bias"].reshape(1, -1))])
            shape = None
        else:
            raise ValueError(f"no ONNX mapping for dlib layer {layer.kind}")
        i += 1
    return x


def _pad_to(g: _Builder, x: str, shape: tuple[int, int, int], target: tuple[int, ...]) -> str:
    """Zero-pad (C, H, W) at the end of each axis up to ``target``, as dlib's add does."""
    if tuple(shape) == tuple(target):
        return x
    pads = [0, 0, 0, 0, 0, target[0] - shape[0], target[1] - shape[1], target[2] - shape[2]]
    return g.op("Pad", [x, g.const("pads", np.array(pads, np.int64))], mode="constant")


def resnet_tag_plan(layers: list[Layer | Wrapper]) -> list[str]:
    """Name the tag/skip markers of dlib's face ResNet.

    A residual block starts with ``tag1`` (its input); a down-sampling block ends its main branch
    with ``tag2`` immediately followed by ``skip1`` (back to the block input for the shortcut).
    """
    plan: list[str] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Wrapper):
            continue
        prev_is_wrapper = i > 0 and isinstance(layers[i - 1], Wrapper)
        next_is_wrapper = i + 1 < len(layers) and isinstance(layers[i + 1], Wrapper)
        plan.append("skip1" if prev_is_wrapper else "tag2" if next_is_wrapper else "tag1")
    return plan


def _model(g: _Builder, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_embedder(net: Network) -> onnx.ModelProto:
    if net.loss.kind != "loss_metric" or net.input.kind != "input_rgb_image":
        raise ValueError("not a dlib metric-learning network on RGB images")
    size = net.input.params.get("size", (150, 150))
    g = _Builder()
    x = g.op("Transpose", ["chips"], perm=[0, 3, 1, 2])
    mean = np.array(net.input.params["mean_rgb"], np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", [x, g.const("mean", mean)])
    x = g.op("Mul", [x, g.const("scale", np.array(1 / 256, np.float32))])
    _emit_layers(g, x, net.layers, (3, size[0], size[1]), resnet_tag_plan(net.layers))
    g.nodes[-1].output[0] = "embeddings"
    g.nodes[-1].name = "embeddings"
    inputs = [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["N", size[0], size[1], 3])]
    width = net.layers[-1].params["num_outputs"]
    outputs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", width])]
    return _model(g, inputs, outputs, "dlib_face_embedder")


def build_mmod(net: Network) -> onnx.ModelProto:
    if net.loss.kind != "loss_mmod":
        raise ValueError("not a dlib MMOD network")
    if any(isinstance(layer, Wrapper) for layer in net.layers):
        raise ValueError("MMOD networks with tags/skips are not supported")
    g = _Builder()
    _emit_layers(g, "input", net.layers, None, [])
    g.nodes[-1].output[0] = "scores"
    g.nodes[-1].name = "scores"
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, "Ho", "Wo"])]
    return _model(g, inputs, outputs, "dlib_mmod_face_detector")


def _save(model: onnx.ModelProto, path: Path) -> dict:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    tmp.replace(path)
    graph = model.graph

    def dims(v: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: dims(v) for v in graph.input},
        "outputs": {v.name: dims(v) for v in graph.output},
        "opset": OPSET,
        "nodes": len(graph.node),
    }


def export_embedder(dat_path: str | Path, onnx_path: str | Path) -> dict:
    """Convert ``dlib_face_recognition_resnet_model_v1.dat`` to ONNX; return manifest metadata."""
    return _save(build_embedder(read_network(dat_path)), Path(onnx_path))


def export_mmod(dat_path: str | Path, onnx_path: str | Path) -> dict:
    """Convert ``mmod_human_face_detector.dat`` to ONNX; return manifest metadata."""
    return _save(build_mmod(read_network(dat_path)), Path(onnx_path))
