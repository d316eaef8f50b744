"""Fold inference BatchNormalization into the Conv or Gemm before it.

``BN(W x + b) = (a * W) x + (a * (b - mean) + beta)`` with ``a = gamma / sqrt(var + eps)``
per output channel. onnxscript has this rule (``rules.common._fuse_batchnorm``), but it
needs the weights as initializers and computes them eagerly; the bundled CNNs keep their
weights as ConstantOfShape and timing-mode compiles must not read weights at all, so the
folded weights here are lazy initializers computed on first read.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, const_thunk, lazy,
                                           rule_name, sole_user)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

BN_CONV = rule_name("batchnorm-conv", "Conv -> BatchNormalization  =>  Conv with folded weights and bias")
BN_GEMM = rule_name("batchnorm-gemm", "Gemm -> BatchNormalization  =>  Gemm with folded weights and bias")


def _bn_params(bn: ir.Node):
    """(a, shift) as lazy thunks, or None if the BN is not a constant inference BN."""
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return None
    if bn.attributes.get_int("training_mode", 0) or any(v is not None and v.uses() for v in bn.outputs[1:]):
        return None
    vals = [const_thunk(v) if v is not None else None for v in bn.inputs[1:5]]
    if len(vals) != 4 or any(v is None for v in vals):
        return None
    eps = bn.attributes.get_float("epsilon", 1e-5)

    def params():
        scale, bias, mean, var = (np.asarray(f(), np.float64) for f in vals)
        a = scale / np.sqrt(var + eps)
        return a, bias - mean * a
    return params


def _fold(node: ir.Node, ctx: CompileContext, model: ir.Model, op: str):
    if node.op_type != op or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    bn = sole_user(node.outputs[0])
    if bn is None or bn.inputs[0] is not node.outputs[0]:
        return None
    params = _bn_params(bn)
    if params is None:
        return "the BatchNormalization is not a constant inference BN used once"
    w = node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    w_now = const_thunk(w)
    b_now = const_thunk(b) if b is not None else None
    if w_now is None or (b is not None and b_now is None):
        return f"the {op}'s weights are not constant"
    if w.dtype != ir.DataType.FLOAT or node.outputs[0].dtype != ir.DataType.FLOAT:
        return "only float32 weights are folded"
    ws = opinfo.shape_of(w)
    ys = opinfo.shape_of(node.outputs[0])
    if ws is None or ys is None:
        return "no static shapes"
    attrs = {k: v for k, v in node.attributes.items()}
    if op == "Gemm":
        if node.attributes.get_int("transA", 0) not in (0, 1) or len(ys) != 2:
            return None
        trans_b = node.attributes.get_int("transB", 0)
        n_out = ws[0] if trans_b else ws[1]
        beta = node.attributes.get_float("beta", 1.0)
        attrs.pop("beta", None)
        bias_shape = (n_out,)
    else:
        n_out = ws[0]
        beta = 1.0
        bias_shape = (n_out,)
    if b is not None and opinfo.numel(b) not in (1, n_out):
        return "the bias is not per output channel"

    def new_w():
        a, _ = params()
        wv = np.asarray(w_now(), np.float64)
        if op == "Gemm":
            return wv * (a[:, None] if trans_b else a[None, :])
        return wv * a.reshape((-1,) + (1,) * (wv.ndim - 1))

    def new_b():
        a, shift = params()
        bv = np.zeros(n_out) if b is None else np.broadcast_to(np.asarray(b_now(), np.float64).reshape(-1), (n_out,))
        return (beta * bv) * a + shift

    wv = lazy(new_w, w, f"{w.name}_bnfold")
    bv = lazy(new_b, w, f"{node.name or w.name}_bnfold_bias", shape=bias_shape)
    inputs = [node.inputs[0], wv, bv]
    fused = ir.Node("", op, inputs, attributes=list(attrs.values()), num_outputs=1, name=node.name)
    fused.outputs[0].shape, fused.outputs[0].type = bn.outputs[0].shape, bn.outputs[0].type
    return Rewrite(bn, [node, bn], [fused], [bn.outputs[0]], [fused.outputs[0]], initializers=[wv, bv])


RULES = [NodeRule(BN_CONV, lambda n, c, m: _fold(n, c, m, "Conv")),
         NodeRule(BN_GEMM, lambda n, c, m: _fold(n, c, m, "Gemm"))]


@register("fold-batchnorm")
def fold_batchnorm(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fold inference BatchNormalization into the preceding Conv/Gemm."""
    return run_rules(model, ctx, RULES, max_rounds=1)
