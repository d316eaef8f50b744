"""Types and shapes of the values after ONNX Runtime's contrib ops (domain ``com.microsoft``), which ONNX's
shape inference does not know: without them every value after one stays untyped, and neither the NPU
(static shapes) nor the host (ONNX Runtime refuses an untyped subgraph input) could take them.

Two ways, cheapest first: rules for the ops quantised models carry (QGemm and the QLinear* ops ONNX
Runtime's quantiser writes, MatMulNBits from its 4-bit quantiser, Olive or optimum), applied in the
inference loop (inference.infer_shapes runs ONNX's inference again when a rule fired); then, for any
value still untyped, ONNX Runtime's own symbolic shape inference (contrib_ort.py)."""

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
    """Type `y` as `shape`/`dtype` if it has no type yet, or only a symbolic shape (a declared graph output
    ["b", "s", "n"]) where the rule found a static one; whether anything changed."""
    static = all(isinstance(d, int) for d in shape)
    if y.shape is not None and y.dtype is not None and (
            not static or all(isinstance(d, int) for d in y.shape) or len(y.shape) != len(shape)):
        return False
    y.shape = ir.Shape(list(shape))
    y.dtype = dtype if y.dtype is None else y.dtype
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


def _matmul_nbits(node: ir.Node) -> bool:
    """MatMulNBits: Y = A[..., K] @ B(K x N): A's leading dims and N (attribute), A's dtype."""
    a = node.inputs[0]
    n = node.attributes.get("N")
    if a is None or a.shape is None or n is None or len(a.shape) < 1:
        return False
    return _set(node.outputs[0], list(a.shape[:-1]) + [int(n.value)], a.dtype)


RULES = {("com.microsoft", "MatMulNBits"): _matmul_nbits,("com.microsoft", "QLinearAveragePool"): _qlinear_pool, ("com.microsoft", "QLinearSoftmax"): _qlinear_unary,
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
