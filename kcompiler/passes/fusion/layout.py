"""Transpose/Reshape cancellation and propagation.

On the NPU a Transpose is a DRAM-to-DRAM copy (CopyKernel) and a Reshape a free view, so
every Transpose removed saves a full read and write of its tensor.

Rules:
- ``transpose-transpose``: ``Transpose(Transpose(x, p), q)`` -> one Transpose with the
  composed permutation, or nothing when it is the identity.
- ``transpose-identity``: a Transpose whose permutation is the identity -> nothing.
- ``reshape-reshape``: ``Reshape(Reshape(x, s1), s2)`` -> ``Reshape(x, s2)``
  (also through Flatten/Squeeze/Unsqueeze, all views of the same bytes).
- ``reshape-identity``: a Reshape (or Flatten/Squeeze/Unsqueeze) of a value to its own
  shape -> nothing.
- ``transpose-elementwise``: push a Transpose below the unary elementwise op it feeds
  (``Relu(Transpose(x)) -> Transpose(Relu(x))``), and below a binary one whose other operand
  is a Transpose with the same permutation (two Transposes become one) or a scalar
  constant. A lone Transpose moves only when the chain below it reaches another Transpose
  it will cancel with (so the head-split Transposes the attention rules absorb stay put);
  Transposes only move towards the outputs, so the rewriting terminates.

The rewrites are exact and no more costly on any device, so the checks read no hardware
figures.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, const, rule_name,
                                           sole_user)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

TT = rule_name("transpose-transpose", "Transpose(Transpose(x,p),q) -> Transpose(x, p∘q) or x")
T_ID = rule_name("transpose-identity", "Transpose with the identity permutation -> x")
RR = rule_name("reshape-reshape", "Reshape(Reshape(x,s1),s2) -> Reshape(x,s2)")
R_ID = rule_name("reshape-identity", "Reshape of x to x's own shape -> x")
T_EW = rule_name("transpose-elementwise", "Op(Transpose(x)) -> Transpose(Op(x)) for elementwise Op")

VIEWS = opinfo.RESHAPES
UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Erf", "Gelu", "Sqrt", "Neg", "Abs", "Reciprocal",
         "Sign", "Floor", "Ceil", "Softplus", "Elu", "HardSigmoid", "HardSwish", "Identity", "Cast")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")


def _std(node: ir.Node | None, ops) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in ops


def _perm(node: ir.Node) -> list[int] | None:
    a = node.attributes.get("perm")
    if a is not None:
        return [int(x) for x in a.value]
    s = opinfo.shape_of(node.inputs[0])
    return None if s is None else list(range(len(s)))[::-1]


def _bypass(node: ir.Node, x: ir.Value, model: ir.Model) -> Rewrite | str:
    """Remove `node`, its consumers reading x instead of its output."""
    y = node.outputs[0]
    # a graph output keeps its name, so an Identity (a free view on the NPU) stands in
    if y.is_graph_output():
        ident = ir.Node("", "Identity", [x], num_outputs=1, name=node.name)
        ident.outputs[0].shape, ident.outputs[0].type = y.shape, y.type
        return Rewrite(node, [node], [ident], [y], [ident.outputs[0]])
    return Rewrite(node, [node], [], [y], [x], keep_names=True)


def transpose_transpose(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not _std(node, ("Transpose",)):
        return None
    p = node.inputs[0].producer()
    if not _std(p, ("Transpose",)):
        return None
    if sole_user(p.outputs[0]) is not node:
        return "the inner Transpose has other users"
    p1, p2 = _perm(p), _perm(node)
    if p1 is None or p2 is None or len(p1) != len(p2):
        return "no static permutation"
    composed = [p1[i] for i in p2]
    x = p.inputs[0]
    y = node.outputs[0]
    if composed == list(range(len(composed))):
        r = _bypass(node, x, model)
        if isinstance(r, Rewrite):
            r.old = [p, node]
        return r
    new = ir.Node("", "Transpose", [x], attributes=[ir.AttrInt64s("perm", composed)], num_outputs=1, name=node.name)
    new.outputs[0].shape, new.outputs[0].type = y.shape, y.type
    return Rewrite(node, [p, node], [new], [y], [new.outputs[0]])


def transpose_identity(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not _std(node, ("Transpose",)):
        return None
    p = _perm(node)
    if p is None or p != list(range(len(p))):
        return None
    return _bypass(node, node.inputs[0], model)


def reshape_reshape(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not _std(node, VIEWS):
        return None
    p = node.inputs[0].producer()
    if not _std(p, VIEWS) or sole_user(p.outputs[0]) is not node:
        return None
    y = node.outputs[0]
    ys = opinfo.shape_of(y)
    if ys is None or opinfo.shape_of(p.inputs[0]) is None:
        return "no static shapes"
    shp = ir.Value(name=f"{y.name}_shape", const_value=ir.tensor([int(d) for d in ys], dtype=ir.DataType.INT64,
                                                                 name=f"{y.name}_shape"))
    shp.shape, shp.type = ir.Shape([len(ys)]), ir.TensorType(ir.DataType.INT64)
    new = ir.Node("", "Reshape", [p.inputs[0], shp], num_outputs=1, name=node.name)
    new.outputs[0].shape, new.outputs[0].type = y.shape, y.type
    return Rewrite(node, [p, node], [new], [y], [new.outputs[0]], initializers=[shp])


def reshape_identity(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not _std(node, VIEWS):
        return None
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = opinfo.shape_of(x), opinfo.shape_of(y)
    if xs is None or ys is None or tuple(xs) != tuple(ys) or x.dtype != y.dtype:
        return None
    return _bypass(node, x, model)


def _scalar_const(v: ir.Value) -> bool:
    c = const(v)
    return c is not None and c.size == 1 and c.ndim == 0


def _reaches_transpose(y: ir.Value, depth: int = 8) -> bool:
    """Whether y flows, through ops a Transpose can move below, into another Transpose."""
    for _ in range(depth):
        u = sole_user(y)
        if u is None:
            return False
        if _std(u, ("Transpose",)):
            return True
        if not _std(u, UNARY + BINARY) or any(v is not y and v is not None and not _scalar_const(v) for v in u.inputs):
            return False
        y = u.outputs[0]
    return False


def transpose_elementwise(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not _std(node, UNARY + BINARY) or len(node.outputs) != 1:
        return None
    ins = [v for v in node.inputs]
    trs = [v.producer() if v is not None else None for v in ins]
    if not any(_std(t, ("Transpose",)) for t in trs):
        return None
    y = node.outputs[0]
    ys = opinfo.shape_of(y)
    if ys is None:
        return "no static output shape"
    perm = None
    new_ins, absorbed = [], []
    for v, t in zip(ins, trs):
        if _std(t, ("Transpose",)):
            p = _perm(t)
            if p is None or (perm is not None and p != perm) or sole_user(v) is not node:
                return "the Transposes differ or have other users"
            perm = p
            new_ins.append(t.inputs[0])
            absorbed.append(t)
        elif v is not None and _scalar_const(v):
            new_ins.append(v)
        else:
            return "an operand is neither a Transpose with the same permutation nor a scalar constant"
    if len(perm) != len(ys):
        return "the Transpose is broadcast"
    if len(absorbed) < 2 and not _reaches_transpose(y):
        return "moving the Transpose would not meet another Transpose (it would only move)"
    inv = [perm.index(i) for i in range(len(perm))]
    inner_shape = [ys[i] for i in inv]
    op = ir.Node("", node.op_type, new_ins, attributes=list(node.attributes.values()), num_outputs=1,
                 name=node.name)
    op.outputs[0].shape, op.outputs[0].type = ir.Shape(inner_shape), y.type
    tr = ir.Node("", "Transpose", [op.outputs[0]], attributes=[ir.AttrInt64s("perm", perm)], num_outputs=1,
                 name=f"{node.name}/transpose")
    tr.outputs[0].shape, tr.outputs[0].type = y.shape, y.type
    return Rewrite(node, absorbed + [node], [op, tr], [y], [tr.outputs[0]])


RULES = [NodeRule(TT, transpose_transpose), NodeRule(T_ID, transpose_identity), NodeRule(RR, reshape_reshape),
         NodeRule(R_ID, reshape_identity), NodeRule(T_EW, transpose_elementwise)]


@register("cancel-layout")
def cancel_layout(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Cancel and propagate Transpose/Reshape pairs."""
    return run_rules(model, ctx, RULES)
