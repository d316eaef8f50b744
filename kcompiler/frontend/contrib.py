"""Types and shapes of the com.microsoft ops ONNX's shape inference does not know but quantised models
carry (ONNX Runtime's quantiser writes QGemm): set on their outputs so the ops after them are inferred
too (inference.infer_shapes runs ONNX's inference again when a rule here fired)."""

from __future__ import annotations

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
    changed = y.shape is None or y.dtype is None
    if changed:
        y.shape = ir.Shape([m, n])
        y.dtype = dtype
    return changed


RULES = {("com.microsoft", "QGemm"): _qgemm}


def infer_contrib(model: ir.Model) -> bool:
    """Apply the rules to every node of the main graph; whether any output got a type."""
    changed = False
    for node in model.graph:
        rule = RULES.get((node.domain, node.op_type))
        if rule is not None and node.outputs and node.outputs[0] is not None:
            changed |= rule(node)
    return changed
