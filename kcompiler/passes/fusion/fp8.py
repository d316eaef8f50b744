"""FP8 GEMM fusion: a QDQ FP8 group DequantizeLinear(x) + DequantizeLinear(const w) -> MatMul | Conv
[-> QuantizeLinear] becomes one ``kcompiler.Fp8MatMul`` or ``Fp8Conv`` (fused/fp8.py; a Conv's float
bias is the fused op's fifth input, zeros when it has none), which a chip whose array
lists an FP8 rate (rngd) runs as MATMULs of FP8 operands (1 byte moved per element) accumulating in
float32, with the scales and the output quantisation in the epilogue.

Rule ``fp8-gemm``; the check reads the target: every NPU claiming the pattern must list fp8 (on other
chips the group stays QDQ: the DequantizeLinear on the vector unit, the MatMul at the chip's float
dtype). A DequantizeLinear another op also reads stays for it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.fused import DOMAIN, ensure_function
from kcompiler.fused.fp8 import CONV_ATTRS, FP8_CONV, FP8_MATMUL, fp8_body, fp8_conv_body
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, claim_check, const,
                                           rule_name, sole_user)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

FP8_GEMM = rule_name("fp8-gemm", "DequantizeLinear(x fp8) + DequantizeLinear(w fp8) -> MatMul | Conv [-> Q fp8] -> "
                                 "Fp8MatMul | Fp8Conv")
FP8 = (ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2)


def _is(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type == op


def _zero_or_absent(node: ir.Node) -> bool:
    """A Q/DQ whose zero point is absent or a constant zero (FP8's always is)."""
    z = node.inputs[2] if len(node.inputs) > 2 else None
    if z is None:
        return True
    c = const(z)
    return c is not None and not np.any(np.asarray(c, np.float32))


def _dq_of(v: ir.Value, want_const: bool, w_axes=(1, -1)) -> ir.Node | None:
    """The FP8 DequantizeLinear producing v (of a constant when `want_const`), per tensor unless it is
    the weights' (then per tensor or along `w_axes`: a MatMul's output columns, a Conv's axis 0)."""
    p = v.producer()
    if not _is(p, "DequantizeLinear") or p.inputs[0] is None or p.inputs[0].dtype not in FP8:
        return None
    if not _zero_or_absent(p) or const(p.inputs[1]) is None or "block_size" in p.attributes:
        return None
    if opinfo.is_const(p.inputs[0]) != want_const:
        return None
    scale = np.asarray(const(p.inputs[1]))
    if scale.size != 1 and not (want_const and scale.ndim == 1 and p.attributes.get_int("axis", 1) in w_axes):
        return None
    return p


def _conv_bias(node: ir.Node, cout: int, inits: list[ir.Value]) -> ir.Value | str:
    """A Conv's float bias (a constant of one value per output channel), or zeros made for a Conv without."""
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None:
        name = f"{node.name or node.outputs[0].name}_zero_bias"
        zeros = np.zeros(cout, np.float32)
        b = ir.Value(name=name, shape=ir.Shape([cout]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(zeros, name=name))
        inits.append(b)
        return b
    if b.dtype != ir.DataType.FLOAT or not opinfo.is_const(b) or opinfo.shape_of(b) != (cout,):
        return "the bias is not a float constant per output channel"
    return b


def fp8_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    conv = _is(node, "Conv")
    if not (_is(node, "MatMul") or conv) or node.outputs[0].dtype != ir.DataType.FLOAT:
        return None
    dx, dw = _dq_of(node.inputs[0], False), _dq_of(node.inputs[1], True, (0,) if conv else (1, -1))
    if dx is None or dw is None:
        return None
    xq, wq = dx.inputs[0], dw.inputs[0]
    if xq.dtype != wq.dtype:
        return "x and w are different FP8 formats"
    ws = opinfo.shape_of(wq)
    if ws is None or len(ws) != (4 if conv else 2) or opinfo.shape_of(node.outputs[0]) is None:
        return f"the weights are not a {4 if conv else 2}-D constant"
    inits: list[ir.Value] = []
    bias = _conv_bias(node, ws[0], inits) if conv else None
    if isinstance(bias, str):
        return bias
    y = node.outputs[0]
    q = sole_user(y)
    if not (_is(q, "QuantizeLinear") and len(q.inputs) > 2 and q.inputs[2] is not None and q.inputs[2].dtype in FP8
            and _zero_or_absent(q) and const(q.inputs[1]) is not None and np.asarray(const(q.inputs[1])).size == 1
            and q.attributes.get_int("saturate", 1) == 1):
        q = None
    inputs = [xq, dx.inputs[1], wq, dw.inputs[1]] + ([bias] if conv else []) + \
        ([q.inputs[1], q.inputs[2]] if q is not None else [])
    result = q.outputs[0] if q is not None else y
    attrs = [ir.AttrInt64("axis", 0 if conv else 1)]
    if conv:
        attrs += [a for k, a in node.attributes.items() if k in CONV_ATTRS]
    fused = ir.Node(DOMAIN, FP8_CONV if conv else FP8_MATMUL, inputs, attributes=attrs,
                    overload="q" if q is not None else "f32", num_outputs=1, name=node.name)
    fused.outputs[0].shape, fused.outputs[0].type = result.shape, result.type
    why = claim_check(ctx, "fp8-gemm", fused, "an FP8 GEMM")
    if why:
        for i in range(len(fused.inputs)):
            fused.replace_input_with(i, None)
        return why
    body = fp8_conv_body if conv else fp8_body
    ensure_function(model, fused.op_type, fused.overload, lambda: body(q is not None))
    old = [node] + ([q] if q is not None else [])
    old += [d for d in (dx, dw) if sole_user(d.outputs[0]) is node]
    ids = {id(n) for n in old}
    old = [n for n in model.graph if id(n) in ids]
    return Rewrite(old[-1], old, [fused], [result], [fused.outputs[0]], initializers=inits)


RULES = [NodeRule(FP8_GEMM, fp8_rule)]


@register("fuse-fp8-gemm")
def fuse_fp8_gemm(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fuse FP8 QDQ MatMul groups into Fp8MatMul (chips whose array lists fp8)."""
    return run_rules(model, ctx, RULES)
