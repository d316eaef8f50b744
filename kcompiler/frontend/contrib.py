"""Types and shapes of the com.microsoft ops ONNX's shape inference does not know but quantised models
carry (ONNX Runtime's quantiser writes QGemm): set on their outputs so the ops after them are inferred
too (inference.infer_shapes runs ONNX's inference again when a rule here fired)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def _qgemm(node: ir.Node) -> bool:
    """QGemm: Y[M, N] of y_zero_point's dtype (float32 without y_scale), from A, B and transA/transB."""
    a, b = node.inputs[0], node.inputs[3] if len(node.inputs) > 3 else None
    y = node.outputs[0]
    if a is None or b is None or a.shape is None or b.shape is None or len(a.shape) != 2 or len(b.shape) != 2:
        return False
    ta = node.attributes.get("transA")
    tb = node.attributes.get("transB")
    m = a.shape[1] if ta is not None and ta.value else a.shape[0]
    n = b.shape[0] if tb is not None and tb.value else b.shape[1]
    ys = node.inputs[7] if len(node.inputs) > 7 else None
    yzp = node.inputs[8] if len(node.inputs) > 8 else None
    dtype = (yzp.dtype if yzp is not None and yzp.dtype is not None else ir.DataType.UINT8) if ys is not None \
        else ir.DataType.FLOAT
    return _set(y, [m, n], dtype)


def _set(y: ir.Value, shape, dtype) -> bool:
    if y.shape is not None and y.dtype is not None:
        return False
    y.shape = ir.Shape(list(shape))
    y.dtype = dtype
    return True


def _qlinear_binary(node: ir.Node) -> bool:
    """QLinearAdd / QLinearMul: A (input 0) and B (input 3) broadcast, in A's dtype."""
    a, b = node.inputs[0], node.inputs[3] if len(node.inputs) > 3 else None
    if a is None or b is None or a.shape is None or b.shape is None:
        return False
    try:
        shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    except (ValueError, TypeError):
        return False
    return _set(node.outputs[0], shape, a.dtype)


def _qlinear_unary(node: ir.Node) -> bool:
    """QLinearSigmoid / QLinearLeakyRelu: X's shape and dtype."""
    x = node.inputs[0]
    return False if x is None or x.shape is None else _set(node.outputs[0], x.shape, x.dtype)


def _qlinear_gap(node: ir.Node) -> bool:
    """QLinearGlobalAveragePool: N, C and ones (channels first unless channels_last)."""
    x = node.inputs[0]
    if x is None or x.shape is None or len(x.shape) < 3:
        return False
    last = node.attributes.get("channels_last")
    dims = list(x.shape)
    shape = [dims[0]] + [1] * (len(dims) - 2) + [dims[-1]] if last is not None and last.value else \
        dims[:2] + [1] * (len(dims) - 2)
    return _set(node.outputs[0], shape, x.dtype)


def _qlinear_pool(node: ir.Node) -> bool:
    """QLinearAveragePool (channels first, explicit pads): AveragePool's output extents."""
    x = node.inputs[0]
    if x is None or x.shape is None or len(x.shape) < 3 or not all(isinstance(d, int) for d in x.shape):
        return False
    attr = node.attributes
    if (attr.get("channels_last") is not None and attr["channels_last"].value) or \
            (attr.get("auto_pad") is not None and attr["auto_pad"].value not in ("NOTSET", b"NOTSET")):
        return False
    k = list(attr["kernel_shape"].value) if attr.get("kernel_shape") is not None else None
    if k is None:
        return False
    nd = len(k)
    st = list(attr["strides"].value) if attr.get("strides") is not None else [1] * nd
    pads = list(attr["pads"].value) if attr.get("pads") is not None else [0] * (2 * nd)
    ceil = attr.get("ceil_mode") is not None and attr["ceil_mode"].value
    out = []
    for i in range(nd):
        span = x.shape[2 + i] + pads[i] + pads[nd + i] - k[i]
        out.append((-(-span // st[i]) if ceil else span // st[i]) + 1)
    return _set(node.outputs[0], list(x.shape[:2]) + out, x.dtype)


RULES = {("com.microsoft", "QLinearAveragePool"): _qlinear_pool, ("com.microsoft", "QLinearSoftmax"): _qlinear_unary,
         ("com.microsoft", "QGemm"): _qgemm, ("com.microsoft", "QLinearAdd"): _qlinear_binary,
         ("com.microsoft", "QLinearMul"): _qlinear_binary, ("com.microsoft", "QLinearSigmoid"): _qlinear_unary,
         ("com.microsoft", "QLinearLeakyRelu"): _qlinear_unary,
         ("com.microsoft", "QLinearGlobalAveragePool"): _qlinear_gap}


def infer_contrib(model: ir.Model) -> bool:
    """Apply the rules to every node of the main graph; whether any output got a type."""
    changed = False
    for node in model.graph:
        rule = RULES.get((node.domain, node.op_type))
        if rule is not None and node.outputs and node.outputs[0] is not None and node.inputs:
            try:
                changed |= rule(node)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError):
                pass  # a malformed node stays untyped: the host (ONNX Runtime) judges it
    return changed
