"""Everything the edge needs around dlib's MMOD network besides its weights, as plain JSON data.

The ONNX graph (:func:`models.onnx_export.export_mmod`) only holds the convolutions. To turn its
score map into boxes the edge also needs the input pyramid settings (mean colour, paddings), the
loss options (detector window size, NMS thresholds) and the receptive-field geometry that maps a
score-map cell back to a point of the network's input tensor. :func:`mmod_params_from_network`
collects those into a dict that the converter writes beside the ONNX file; :mod:`edge.faces.mmod` reads it.
"""

from __future__ import annotations

from models.dlib_dnn import Layer, Network, Wrapper

#: dlib's face detector is declared with ``input_rgb_image_pyramid<pyramid_down<6>>``; the
#: template argument is not written to the file, so it is stated here.
PYRAMID_DOWN = 6

#: Layers that change the spatial grid; everything else is element-wise.
_SPATIAL = ("con", "max_pool", "avg_pool")


def feature_geometry(layers: list[Layer | Wrapper]) -> tuple[list[int], list[int]]:
    """Stride and offset ``([sy, sx], [oy, ox])`` with ``input = stride * output + offset``.

    Each convolution or pooling layer maps an output cell ``p`` to the input point
    ``p * stride - padding + kernel // 2`` (dlib's ``map_output_to_input``); composing them
    from the last layer back to the first gives one affine map per axis.
    """
    stride, offset = [1, 1], [0, 0]
    for layer in reversed(layers):
        if isinstance(layer, Wrapper):
            raise ValueError("networks with tag/skip layers have no single receptive-field map")
        if layer.kind not in _SPATIAL:
            continue
        kernel, step, pad = layer.params["kernel"], layer.params["stride"], layer.params["padding"]
        for axis in range(2):
            # input = (outer map applied first) ... : p_in = (s*p + o) * step - pad + k // 2
            offset[axis] = offset[axis] * step[axis] - pad[axis] + kernel[axis] // 2
            stride[axis] = stride[axis] * step[axis]
    return stride, offset


def min_input_size(layers: list[Layer | Wrapper]) -> list[int]:
    """Smallest input ``[rows, cols]`` for which every layer still has at least one output cell."""
    need = [1, 1]
    for layer in reversed(layers):
        if isinstance(layer, Layer) and layer.kind in _SPATIAL:
            kernel, step, pad = layer.params["kernel"], layer.params["stride"], layer.params["padding"]
            need = [max(1, (need[a] - 1) * step[a] + kernel[a] - 2 * pad[a]) for a in range(2)]
    return need


def mmod_params_from_network(net: Network) -> dict:
    """JSON-ready parameters of an MMOD detector network for :class:`edge.faces.mmod.MmodDetector`."""
    if net.loss.kind != "loss_mmod":
        raise ValueError(f"not an MMOD network (loss {net.loss.kind})")
    if net.input.kind != "input_rgb_image_pyramid":
        raise ValueError(f"MMOD input {net.input.kind} is not supported, only input_rgb_image_pyramid")
    loss = net.loss.params
    if loss.get("use_bounding_box_regression"):
        raise ValueError("MMOD bounding-box regression is not supported")
    stride, offset = feature_geometry(net.layers)
    iou_thresh, covered_thresh = loss["overlaps_nms"]
    return {
        "mean_rgb": [float(v) for v in net.input.params["mean_rgb"]],
        "pyramid_down": PYRAMID_DOWN,
        "pyramid_padding": int(net.input.params["pyramid_padding"]),
        "pyramid_outer_padding": int(net.input.params["pyramid_outer_padding"]),
        "detector_windows": [
            {"width": int(w["width"]), "height": int(w["height"]), "label": str(w["label"])}
            for w in loss["detector_windows"]
        ],
        "overlaps_nms": [float(iou_thresh), float(covered_thresh)],
        "feature_stride": stride,
        "feature_offset": offset,
        "min_input_size": min_input_size(net.layers),
    }
