"""Convert a TFLite flatbuffer (MediaPipe's face models) into an ONNX graph, with no TensorFlow.

The flatbuffer is read with the ``tflite`` package (the generated schema classes only); the graph
is written with ``onnx``'s helpers. Only the operators MediaPipe's face detector, face mesh and
blendshape models use are supported (an unknown operator stops the conversion and names it).

Layout: TFLite activations are NHWC; convolutions, pooling, padding and PReLU run in ONNX's NCHW.
Every tensor remembers the layout it is stored in and a transpose is inserted only where an
operator needs the other one (one at the graph input, one per NHWC-only operator such as RESHAPE
or STRIDED_SLICE on a 4-D tensor). Graph inputs and outputs keep the TFLite shapes and names, so
an ONNX session and a TFLite interpreter take and give the same arrays. fp16 weights behind
DEQUANTIZE are widened to float32 at conversion time. The same file always gives the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PRODUCER = "facefare-models"
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)
_NP_TYPES = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT64: np.int64,
    tflite.TensorType.UINT8: np.uint8,
    tflite.TensorType.INT8: np.int8,
}
_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


class ConversionError(ValueError):
    """The TFLite file uses something this converter does not support."""


@dataclass
class _Value:
    """A tensor as stored in the ONNX graph."""

    name: str | None  # None: a constant only known as ``const``
    shape: tuple[int, ...]  # the TFLite (native) shape
    nchw: bool = False  # stored transposed to NCHW (4-D activations only)
    const: np.ndarray | None = None  # native-layout value of a constant


@dataclass
class _Graph:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0
    consts: dict[int, str] = field(default_factory=dict)  # id of an array -> initializer name

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{re.sub(r'[^A-Za-z0-9_]', '_', stem)[:40]}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, **attrs: object) -> str:
        out = self.fresh(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _options(op: tflite.Operator, cls: type) -> object:
    table = op.BuiltinOptions()
    opts = cls()
    if table is not None:
        opts.Init(table.Bytes, table.Pos)
    return opts


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, data: bytes) -> None:
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ConversionError("not a TFLite flatbuffer (no 'TFL3' identifier)")
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise ConversionError(f"expected one subgraph, found {self.model.SubgraphsLength()}")
        self.sg = self.model.Subgraphs(0)
        self.g = _Graph()
        self.values: dict[int, _Value] = {}
        self.cache: dict[tuple[str, bool], str] = {}

    # -- tensors ---------------------------------------------------------------------------

    def _tensor_shape(self, index: int) -> tuple[int, ...]:
        t = self.sg.Tensors(index)
        return tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()

    def _buffer(self, index: int) -> np.ndarray | None:
        t = self.sg.Tensors(index)
        buf = self.model.Buffers(t.Buffer())
        if buf is None or buf.DataLength() == 0:
            return None
        if t.Type() not in _NP_TYPES:
            raise ConversionError(f"tensor {t.Name().decode()!r} has unsupported type {t.Type()}")
        raw = buf.DataAsNumpy().tobytes()
        return np.frombuffer(raw, dtype=_NP_TYPES[t.Type()]).reshape(self._tensor_shape(index)).copy()

    def value(self, index: int) -> _Value:
        if index not in self.values:
            data = self._buffer(index)
            if data is None:
                raise ConversionError(f"tensor {index} is used before it is produced")
            self.values[index] = _Value(None, data.shape, const=data)
        return self.values[index]

    def const(self, index: int) -> np.ndarray:
        v = self.value(index)
        if v.const is None:
            raise ConversionError(f"tensor {self.sg.Tensors(index).Name().decode()!r} must be constant")
        return v.const

    def name_in(self, index: int, nchw: bool) -> str:
        """The ONNX name of tensor ``index`` stored in the wanted layout (NCHW only for 4-D)."""
        v = self.value(index)
        nchw = nchw and len(v.shape) == 4
        key = (str(index), nchw)
        if key in self.cache:
            return self.cache[key]
        if v.const is not None:
            arr = v.const.astype(np.float32) if v.const.dtype == np.float16 else v.const
            name = self.g.const("c", arr.transpose(_TO_NCHW) if nchw else arr)
        elif v.nchw == nchw:
            name = v.name
        else:
            name = self.g.op("Transpose", [v.name], "t", perm=list(_TO_NCHW if nchw else _TO_NHWC))
        self.cache[key] = name
        return name

    def broadcast_in(self, index: int, nchw: bool) -> str:
        """Like :meth:`name_in`, but a lower-rank constant is broadcast the NHWC way into NCHW."""
        v = self.value(index)
        if nchw and v.const is not None and len(v.shape) < 4:
            arr = v.const.astype(np.float32).reshape((1,) * (4 - v.const.ndim) + v.const.shape)
            return self.g.const("c", arr.transpose(_TO_NCHW))
        return self.name_in(index, nchw)

    def set_out(self, index: int, name: str, nchw: bool) -> None:
        self.values[index] = _Value(name, self._tensor_shape(index), nchw and len(self._tensor_shape(index)) == 4)

    def set_const(self, index: int, value: np.ndarray) -> None:
        self.values[index] = _Value(None, value.shape, const=value)

    def activation(self, name: str, fused: int) -> str:
        if fused == tflite.ActivationFunctionType.NONE:
            return name
        if fused == tflite.ActivationFunctionType.RELU:
            return self.g.op("Relu", [name], "relu")
        if fused == tflite.ActivationFunctionType.RELU6:
            lo, hi = self.g.const("lo", np.float32(0)), self.g.const("hi", np.float32(6))
            return self.g.op("Clip", [name, lo, hi], "relu6")
        raise ConversionError(f"unsupported fused activation {fused}")

    # -- operators -------------------------------------------------------------------------

    def convert(self) -> onnx.ModelProto:
        inputs = []
        for i in range(self.sg.InputsLength()):
            idx = int(self.sg.Inputs(i))
            t = self.sg.Tensors(idx)
            name = t.Name().decode()
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(self._tensor_shape(idx))))
            self.values[idx] = _Value(name, self._tensor_shape(idx))
        for i in range(self.sg.OperatorsLength()):
            op = self.sg.Operators(i)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            opname = _OP_NAMES.get(code, str(code))
            handler = getattr(self, f"_op_{opname.lower()}", None)
            if handler is None:
                raise ConversionError(f"operator {opname} is not supported")
            ins = [int(v) for v in op.InputsAsNumpy()]
            outs = [int(v) for v in op.OutputsAsNumpy()]
            handler(op, ins, outs)
        outputs = []
        for i in range(self.sg.OutputsLength()):
            idx = int(self.sg.Outputs(i))
            name = self.sg.Tensors(idx).Name().decode()
            self.g.nodes.append(helper.make_node("Identity", [self.name_in(idx, False)], [name], name=f"out_{i}"))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(self._tensor_shape(idx))))
        graph = helper.make_graph(self.g.nodes, "tflite", inputs, outputs, self.g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def _op_dequantize(self, op, ins, outs) -> None:
        self.set_const(outs[0], self.const(ins[0]).astype(np.float32))

    def _conv_pads(self, x_shape, kh, kw, opts, dh=1, dw=1) -> list[int]:
        if opts.Padding() == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        t, b = _same_pads(x_shape[1], kh, opts.StrideH(), dh)
        left, r = _same_pads(x_shape[2], kw, opts.StrideW(), dw)
        return [t, left, b, r]

    def _op_conv_2d(self, op, ins, outs) -> None:
        opts = _options(op, tflite.Conv2DOptions)
        w = self.const(ins[1]).astype(np.float32)  # O, KH, KW, I
        x = self.value(ins[0])
        args = [self.name_in(ins[0], True), self.g.const("w", w.transpose(0, 3, 1, 2))]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.g.const("b", self.const(ins[2]).astype(np.float32)))
        dh, dw = opts.DilationHFactor() or 1, opts.DilationWFactor() or 1
        y = self.g.op("Conv", args, "conv", kernel_shape=[w.shape[1], w.shape[2]],
                      strides=[opts.StrideH(), opts.StrideW()], dilations=[dh, dw],
                      pads=self._conv_pads(x.shape, w.shape[1], w.shape[2], opts, dh, dw))  # fmt: skip
        self.set_out(outs[0], self.activation(y, opts.FusedActivationFunction()), True)

    def _op_depthwise_conv_2d(self, op, ins, outs) -> None:
        opts = _options(op, tflite.DepthwiseConv2DOptions)
        w = self.const(ins[1]).astype(np.float32)  # 1, KH, KW, C*M
        x = self.value(ins[0])
        channels = x.shape[3]
        args = [self.name_in(ins[0], True), self.g.const("w", w.transpose(3, 0, 1, 2))]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.g.const("b", self.const(ins[2]).astype(np.float32)))
        dh, dw = opts.DilationHFactor() or 1, opts.DilationWFactor() or 1
        y = self.g.op("Conv", args, "dwconv", kernel_shape=[w.shape[1], w.shape[2]], group=channels,
                      strides=[opts.StrideH(), opts.StrideW()], dilations=[dh, dw],
                      pads=self._conv_pads(x.shape, w.shape[1], w.shape[2], opts, dh, dw))  # fmt: skip
        self.set_out(outs[0], self.activation(y, opts.FusedActivationFunction()), True)

    def _op_max_pool_2d(self, op, ins, outs) -> None:
        opts = _options(op, tflite.Pool2DOptions)
        x = self.value(ins[0])
        kh, kw = opts.FilterHeight(), opts.FilterWidth()
        pads = self._conv_pads(x.shape, kh, kw, opts)
        y = self.g.op("MaxPool", [self.name_in(ins[0], True)], "pool", kernel_shape=[kh, kw],
                      strides=[opts.StrideH(), opts.StrideW()], pads=pads)  # fmt: skip
        self.set_out(outs[0], self.activation(y, opts.FusedActivationFunction()), True)

    def _op_pad(self, op, ins, outs) -> None:
        pads = self.const(ins[1]).astype(np.int64)  # rank x 2, native order
        x = self.value(ins[0])
        nchw = len(x.shape) == 4
        if nchw:
            pads = pads[list(_TO_NCHW)]
        flat = self.g.const("pads", np.concatenate([pads[:, 0], pads[:, 1]]))
        y = self.g.op("Pad", [self.name_in(ins[0], nchw), flat], "pad", mode="constant")
        self.set_out(outs[0], y, nchw)

    def _op_prelu(self, op, ins, outs) -> None:
        x = self.value(ins[0])
        nchw = len(x.shape) == 4
        y = self.g.op("PRelu", [self.name_in(ins[0], nchw), self.broadcast_in(ins[1], nchw)], "prelu")
        self.set_out(outs[0], y, nchw)

    def _unary(self, onnx_op: str, ins, outs) -> None:
        x = self.value(ins[0])
        self.set_out(outs[0], self.g.op(onnx_op, [self.name_in(ins[0], x.nchw)], onnx_op.lower()), x.nchw)

    def _op_relu(self, op, ins, outs) -> None:
        self._unary("Relu", ins, outs)

    def _op_logistic(self, op, ins, outs) -> None:
        self._unary("Sigmoid", ins, outs)

    def _op_neg(self, op, ins, outs) -> None:
        self._unary("Neg", ins, outs)

    def _op_sqrt(self, op, ins, outs) -> None:
        self._unary("Sqrt", ins, outs)

    def _op_rsqrt(self, op, ins, outs) -> None:
        x = self.value(ins[0])
        s = self.g.op("Sqrt", [self.name_in(ins[0], x.nchw)], "sqrt")
        self.set_out(outs[0], self.g.op("Reciprocal", [s], "rsqrt"), x.nchw)

    def _binary(self, onnx_op: str, op, ins, outs, options: type | None) -> str:
        a, b = self.value(ins[0]), self.value(ins[1])
        nchw = a.nchw or b.nchw
        y = self.g.op(onnx_op, [self.broadcast_in(ins[0], nchw), self.broadcast_in(ins[1], nchw)], onnx_op.lower())
        if options is not None:
            y = self.activation(y, _options(op, options).FusedActivationFunction())
        self.set_out(outs[0], y, nchw)
        return y

    def _op_add(self, op, ins, outs) -> None:
        self._binary("Add", op, ins, outs, tflite.AddOptions)

    def _op_sub(self, op, ins, outs) -> None:
        self._binary("Sub", op, ins, outs, tflite.SubOptions)

    def _op_mul(self, op, ins, outs) -> None:
        self._binary("Mul", op, ins, outs, tflite.MulOptions)

    def _op_div(self, op, ins, outs) -> None:
        self._binary("Div", op, ins, outs, tflite.DivOptions)

    def _op_squared_difference(self, op, ins, outs) -> None:
        d = self._binary("Sub", op, ins, outs, None)
        v = self.values[outs[0]]
        self.set_out(outs[0], self.g.op("Mul", [d, d], "sqdiff"), v.nchw)

    def _op_concatenation(self, op, ins, outs) -> None:
        opts = _options(op, tflite.ConcatenationOptions)
        shapes = [self.value(i).shape for i in ins]
        rank = len(shapes[0])
        axis = opts.Axis() % rank
        nchw = rank == 4 and all(self.value(i).nchw or self.value(i).const is not None for i in ins)
        if nchw:
            axis = _TO_NCHW.index(axis)
        y = self.g.op("Concat", [self.name_in(i, nchw) for i in ins], "concat", axis=axis)
        self.set_out(outs[0], self.activation(y, opts.FusedActivationFunction()), nchw)

    def _op_reshape(self, op, ins, outs) -> None:
        shape = np.array(self._tensor_shape(outs[0]), np.int64)
        y = self.g.op("Reshape", [self.name_in(ins[0], False), self.g.const("shape", shape)], "reshape")
        self.set_out(outs[0], y, False)

    def _op_transpose(self, op, ins, outs) -> None:
        perm = [int(v) for v in self.const(ins[1])]
        self.set_out(outs[0], self.g.op("Transpose", [self.name_in(ins[0], False)], "transpose", perm=perm), False)

    def _reduce(self, onnx_op: str, op, ins, outs) -> None:
        opts = _options(op, tflite.ReducerOptions)
        x = self.value(ins[0])
        axes = sorted({int(a) % len(x.shape) for a in np.atleast_1d(self.const(ins[1]))})
        keep = int(bool(opts.KeepDims()))
        nchw = x.nchw and keep == 1
        if nchw:
            axes = sorted(_TO_NCHW.index(a) for a in axes)
        src = self.name_in(ins[0], nchw)
        if onnx_op == "ReduceMean":  # opset 17: axes is an attribute
            y = self.g.op("ReduceMean", [src], "mean", axes=axes, keepdims=keep)
        else:
            y = self.g.op(onnx_op, [src, self.g.const("axes", np.array(axes, np.int64))], "sum", keepdims=keep)
        self.set_out(outs[0], y, nchw)

    def _op_mean(self, op, ins, outs) -> None:
        self._reduce("ReduceMean", op, ins, outs)

    def _op_sum(self, op, ins, outs) -> None:
        self._reduce("ReduceSum", op, ins, outs)

    def _op_strided_slice(self, op, ins, outs) -> None:
        opts = _options(op, tflite.StridedSliceOptions)
        if opts.EllipsisMask() or opts.NewAxisMask():
            raise ConversionError("STRIDED_SLICE with ellipsis or new-axis masks is not supported")
        shape = self.value(ins[0]).shape
        begin, end, strides = (self.const(i).astype(np.int64) for i in ins[1:4])
        starts, ends = [], []
        for axis, size in enumerate(shape):
            b = 0 if opts.BeginMask() >> axis & 1 else int(begin[axis])
            e = size if opts.EndMask() >> axis & 1 else int(end[axis])
            if opts.ShrinkAxisMask() >> axis & 1:
                b = b % size
                e = b + 1
            starts.append(b)
            ends.append(e)
        if np.any(strides < 0):
            raise ConversionError("STRIDED_SLICE with negative strides is not supported")
        y = self.g.op("Slice", [self.name_in(ins[0], False), self.g.const("starts", np.array(starts, np.int64)),
                                self.g.const("ends", np.array(ends, np.int64)),
                                self.g.const("axes", np.arange(len(shape), dtype=np.int64)),
                                self.g.const("steps", strides)], "slice")  # fmt: skip
        shrink = [a for a in range(len(shape)) if opts.ShrinkAxisMask() >> a & 1]
        if shrink:
            y = self.g.op("Squeeze", [y, self.g.const("axes", np.array(shrink, np.int64))], "squeeze")
        self.set_out(outs[0], y, False)

    def _op_resize_bilinear(self, op, ins, outs) -> None:
        opts = _options(op, tflite.ResizeBilinearOptions)
        n, h, w, c = self._tensor_shape(outs[0])
        mode = "half_pixel" if opts.HalfPixelCenters() else "align_corners" if opts.AlignCorners() else "asymmetric"
        sizes = self.g.const("sizes", np.array([n, c, h, w], np.int64))
        y = self.g.op("Resize", [self.name_in(ins[0], True), "", "", sizes], "resize", mode="linear",
                      coordinate_transformation_mode=mode)  # fmt: skip
        self.set_out(outs[0], y, True)


def convert_tflite(data: bytes) -> onnx.ModelProto:
    """The ONNX model equivalent to the TFLite flatbuffer ``data``."""
    return _Converter(data).convert()


def export_tflite(data: bytes, out: Path) -> dict:
    """Convert ``data`` and write it to ``out``; returns the manifest's shape metadata."""
    model = convert_tflite(data)
    out.write_bytes(model.SerializeToString())
    g = model.graph

    def dims(v: onnx.ValueInfoProto) -> list[int]:
        return [d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: dims(v) for v in g.input},
        "outputs": {v.name: dims(v) for v in g.output},
        "nodes": len(g.node),
        "opset": OPSET,
    }
