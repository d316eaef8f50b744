"""Fold constant Mul/Add (and Div/Sub) chains into the weights and bias of the Conv, Gemm or
MatMul before them.

``(W x + b) * s = (s W) x + s b`` and ``(W x + b) + c = W x + (b + c)`` when ``s`` and ``c``
are constants broadcast along the output channels only (per channel or scalar). A ``/ d``
is a ``* (1/d)`` and a ``- c`` an ``+ (-c)``. Like the BatchNorm folding, the folded weights
are lazy initializers computed on first read, so timing-mode compiles read no weights.

Rules, each absorbing one consumer (so chains fold over several rounds):
- ``affine-mul``: Conv/Gemm/MatMul -> Mul|Div by a per-output-channel constant.
- ``affine-add``: Conv/Gemm -> Add|Sub of a per-output-channel constant (into the bias).
  MatMul has no bias input; its constant Add is the ``epilogue-bias`` rule's.

The folds are exact and cheaper on every device (one op fewer, one tensor round trip to
DRAM fewer), so the check reads no hardware figures: only dtypes, shapes and constness.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, const_thunk, lazy, other_input,
                                           rule_name, sole_user)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

AFFINE_MUL = rule_name("affine-mul", "Conv/Gemm/MatMul -> Mul|Div by a per-channel constant  =>  scaled weights")
AFFINE_ADD = rule_name("affine-add", "Conv/Gemm -> Add|Sub of a per-channel constant  =>  folded bias")


def _channel_vector(c: ir.Value, out_shape: tuple[int, ...], channel_axis: int) -> str | None:
    """None if constant c broadcasts over the output along the channel axis only (and does not
    change the output's shape), else why not."""
    cs = opinfo.shape_of(c)
    if cs is None:
        return "the constant has no static shape"
    if len(cs) > len(out_shape):
        return "the constant has a higher rank than the output"
    ax = channel_axis % len(out_shape)
    padded = (1,) * (len(out_shape) - len(cs)) + tuple(cs)
    for i, d in enumerate(padded):
        if d != 1 and (i != ax or d != out_shape[ax]):
            return f"the constant {tuple(cs)} varies along an axis other than the output channels"
    return None


def _as_channels(fn, n_out: int):
    """A thunk of the constant as a float64 vector of the n_out channels."""
    def channels():
        v = np.asarray(fn(), np.float64).reshape(-1)
        return np.broadcast_to(v, (n_out,)) if v.size == 1 else v
    return channels


def _anchor(node: ir.Node):
    """(op, output shape, channel axis, number of channels) of a foldable Conv/Gemm/MatMul."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.outputs) != 1:
        return None
    y = node.outputs[0]
    ys, ws = opinfo.shape_of(y), opinfo.shape_of(node.inputs[1])
    if ys is None or ws is None or y.dtype != ir.DataType.FLOAT:
        return None
    if node.op_type == "Conv":
        return "Conv", ys, 1, ws[0]
    if node.op_type == "Gemm":
        return "Gemm", ys, -1, ys[-1]
    if len(ws) != 2:
        return None  # a batched MatMul's weights are not one matrix
    return "MatMul", ys, -1, ws[1]


def _consumer(node: ir.Node, ops: tuple[str, ...]):
    """(consumer, constant operand thunk, constant value) if y's only user is one of ops with a constant
    on the right side (or either side for Mul/Add)."""
    y = node.outputs[0]
    u = sole_user(y)
    if u is None or u.domain not in ("", "ai.onnx") or u.op_type not in ops or len(u.inputs) != 2:
        return None
    c = other_input(u, y)
    if c is None or (u.op_type in ("Div", "Sub") and u.inputs[0] is not y):
        return None
    fn = const_thunk(c)
    if fn is None:
        return None
    return u, fn, c


def _rebuilt(node: ir.Node, inputs: list[ir.Value | None], result: ir.Value, drop=()) -> ir.Node:
    attrs = [a for n, a in node.attributes.items() if n not in drop]
    new = ir.Node("", node.op_type, inputs, attributes=attrs, num_outputs=1, name=node.name)
    new.outputs[0].shape, new.outputs[0].type = result.shape, result.type
    return new


def _per_channel_consumer(node: ir.Node, ops: tuple[str, str], what: str, matmul: bool):
    """((op, ys, axis, n_out), (u, c_fn)) for the anchor `node` and its sole consumer `u`, one of
    `ops` by a float32 per-channel constant; None if the pattern is absent, or why it cannot fold."""
    got = _anchor(node)
    if got is None or (not matmul and got[0] == "MatMul"):
        return None
    op, ys, axis, n_out = got
    m = _consumer(node, ops)
    if m is None:
        return None
    u, c_fn, c = m
    if c.dtype != ir.DataType.FLOAT or opinfo.shape_of(u.outputs[0]) != ys:
        return f"the {what} is not float32 or changes the output's shape"
    return _channel_vector(c, ys, axis) or (got, (u, c_fn))


def mul_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    found = _per_channel_consumer(node, ("Mul", "Div"), "scale", matmul=True)
    if not isinstance(found, tuple):
        return found
    (op, ys, axis, n_out), (u, c_fn) = found
    w, b = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    w_fn = const_thunk(w)
    b_fn = const_thunk(b) if b is not None else None
    if w_fn is None or (b is not None and b_fn is None):
        return f"the {op}'s weights are not constant"
    if w.dtype != ir.DataType.FLOAT:
        return "only float32 weights are folded"
    div = u.op_type == "Div"
    raw = _as_channels(c_fn, n_out)
    scale = (lambda: 1.0 / raw()) if div else raw
    trans_b = node.attributes.get_int("transB", 0) if op == "Gemm" else 0

    def new_w():
        wv, s = np.asarray(w_fn(), np.float64), scale()
        if op == "Conv":
            return wv * s.reshape((-1,) + (1,) * (wv.ndim - 1))
        return wv * (s[:, None] if trans_b else s[None, :])

    wv = lazy(new_w, w, f"{w.name}_scaled")
    inputs = [node.inputs[0], wv]
    inits = [wv]
    drop = ()
    if b is not None:
        bs = opinfo.shape_of(b)
        beta = node.attributes.get_float("beta", 1.0) if op == "Gemm" else 1.0

        if op == "Conv":
            out_b = (n_out,)
        else:
            out_b = np.broadcast_shapes(tuple(bs), (n_out,))
            if np.broadcast_shapes(out_b, ys) != tuple(ys):
                return "the Gemm's C does not broadcast to the output after scaling"

        def new_b():
            bv, s = beta * np.asarray(b_fn(), np.float64), scale()
            if op == "Conv":
                bv = np.broadcast_to(bv.reshape(-1), (n_out,))
            return bv * s

        bv = lazy(new_b, b, f"{b.name}_scaled", shape=out_b)
        inputs.append(bv)
        inits.append(bv)
        drop = ("beta",)
    new = _rebuilt(node, inputs, u.outputs[0], drop)
    return Rewrite(u, [node, u], [new], [u.outputs[0]], [new.outputs[0]], initializers=inits)


def add_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    found = _per_channel_consumer(node, ("Add", "Sub"), "shift", matmul=False)
    if not isinstance(found, tuple):
        return found
    (op, ys, axis, n_out), (u, c_fn) = found
    b = node.inputs[2] if len(node.inputs) > 2 else None
    b_fn = const_thunk(b) if b is not None else None
    if b is not None and b_fn is None:
        return f"the {op}'s bias is not constant"
    if op == "Gemm" and b is not None and opinfo.shape_of(b) is None:
        return "the Gemm's C has no static shape"
    sign = -1.0 if u.op_type == "Sub" else 1.0
    shift = _as_channels(c_fn, n_out)
    beta = node.attributes.get_float("beta", 1.0) if op == "Gemm" else 1.0
    if op == "Conv" or b is None:
        out_b = (n_out,)
    else:
        out_b = np.broadcast_shapes(tuple(opinfo.shape_of(b)), (n_out,))

    def new_b():
        bv = np.zeros(n_out) if b is None else beta * np.asarray(b_fn(), np.float64)
        if op == "Conv":
            bv = np.broadcast_to(bv.reshape(-1), (n_out,))
        return bv + sign * shift()

    bv = lazy(new_b, node.outputs[0], f"{node.name or 'affine'}_bias_folded", shape=out_b)
    inputs = list(node.inputs[:2]) + [bv]
    new = _rebuilt(node, inputs, u.outputs[0], ("beta",))
    return Rewrite(u, [node, u], [new], [u.outputs[0]], [new.outputs[0]], initializers=[bv])


RULES = [NodeRule(AFFINE_MUL, mul_rule), NodeRule(AFFINE_ADD, add_rule)]


@register("fold-affine")
def fold_affine(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fold constant Mul/Add chains into the preceding Conv/Gemm/MatMul weights and bias."""
    return run_rules(model, ctx, RULES)
