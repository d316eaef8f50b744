"""Attention fusion: ``MatMul(Q, Kᵀ) [/ c | * c] [+ mask] -> Softmax -> MatMul(·, V)`` becomes
one standard ``Attention`` (opset 23), which the NPU lowers flash-attention style: the
score matrix stays in SRAM tile by tile and never reaches DRAM.

Rules:
- ``attention``: the core pattern on 4-D [B, H, S, hd] operands. K reaches the first MatMul
  through ``Transpose(perm=[0,1,3,2])``; a grouped-query ``repeat_kv`` chain
  (Unsqueeze/Expand/Reshape) in front of K and V is absorbed, since Attention broadcasts
  kv heads itself.
- ``attention-heads``: the head split ``Transpose(Reshape(x, [B,S,H,hd]), [0,2,1,3])`` of Q,
  K and V and the merge ``Reshape(Transpose(o, [0,2,1,3]), [B,S,H*hd])`` after it are
  absorbed into Attention's 3-D form (``q_num_heads``/``kv_num_heads``): four transposes
  fewer per layer, the NPU reads heads with strided DMA.

Both are hardware-specific: they fire only when the target has an NPU and a tiling of the
fused op fits its scratchpad (``tiler.tile_attention``), and no other device runs the products
faster.
- ``gqa-grouped`` (any target): the repeat_kv copies of a grouped-query pattern go; each kv
  head's query heads become rows of one product with that head's K and V (Q [B,H,S,d] ->
  [B,Hkv,g*S,d]). Unmasked patterns (decode) are grouped before ``attention`` weighs them, which
  then fuses the grouped form where the NPU wins; masked ones (prefill) only where ``attention``
  declines. Decode on a PIM system then reads the KV cache where it lies, once per kv head,
  rather than an expanded copy made on the NPU each step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, claim_check, const, faster_elsewhere,
                                           rule_name, scalar, sole_user)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

ATTENTION = rule_name("attention", "MatMul(Q,Kᵀ)[/c][+mask]->Softmax->MatMul(·,V) -> Attention")
ATTENTION_HEADS = rule_name("attention-heads", "head split/merge Reshape+Transpose around Attention -> 3-D Attention")
GQA_GROUP = rule_name("gqa-grouped", "repeat_kv(K, V) around unfused attention -> products grouped by kv head")


def _producer(v: ir.Value | None, op_type: str) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == op_type and p.domain in ("", "ai.onnx") else None


def _perm(node: ir.Node) -> list[int] | None:
    a = node.attributes.get("perm")
    return None if a is None else [int(x) for x in a.value]


def fits(ctx: CompileContext, node: ir.Node, bh: int, s: int, t: int, hd: int, hdv: int, mask: bool) -> str | None:
    """None if every device claiming fused attention can run it at these dimensions (the NPU: a
    flash-attention tiling fits one core's scratchpad), else why not."""
    return claim_check(ctx, "attention", node, "Attention", bh=bh, s=s, t=t, hd=hd, hdv=hdv, mask=mask)


def _unrepeat(v: ir.Value) -> tuple[ir.Value, list[ir.Node]]:
    """k for HF's repeat_kv chain Reshape(Expand(Unsqueeze(k, [2]), [b,h,r,t,d]), [b,h*r,t,d])."""
    rs = _producer(v, "Reshape")
    ex = _producer(rs.inputs[0], "Expand") if rs else None
    un = _producer(ex.inputs[0], "Unsqueeze") if ex else None
    if un is None or sole_user(rs.inputs[0]) is not rs or sole_user(ex.inputs[0]) is not ex:
        return v, []
    k = un.inputs[0]
    ks, vs = opinfo.shape_of(k), opinfo.shape_of(v)
    axes = const(un.inputs[1]) if len(un.inputs) > 1 else None
    if ks is None or vs is None or len(ks) != 4 or axes is None or [int(a) for a in axes.reshape(-1)] != [2]:
        return v, []
    if ks[0] != vs[0] or ks[2:] != vs[2:] or vs[1] % ks[1]:
        return v, []
    return k, [un, ex, rs]


@dataclasses.dataclass
class _Sdpa:
    """A matched MatMul(Q, Kᵀ) [·c] [+mask] -> Softmax -> MatMul(·, V)."""

    sm: ir.Node
    pv: ir.Node
    chain: list[ir.Node]  # the pattern's nodes (Softmax, PV, [Add], [Div/Mul], QK, Transpose)
    q: ir.Value
    k: ir.Value  # before any repeat_kv chain
    v: ir.Value
    k_rep: list[ir.Node]
    v_rep: list[ir.Node]
    mask: ir.Value | None
    scale: float | None  # the score's constant factor, None if the scores are not scaled
    shapes: tuple  # (B, H, S, hd), K's shape, V's shape


def _match(sm: ir.Node) -> "_Sdpa | str | None":
    if sm.op_type != "Softmax" or sm.domain not in ("", "ai.onnx"):
        return None
    x = sm.inputs[0]
    rank = len(x.shape) if x.shape is not None else 0
    if rank != 4 or sm.attributes.get_int("axis", -1) % 4 != 3:
        return "Softmax is not over the last axis of a 4-D score tensor"
    pv = sole_user(sm.outputs[0])
    if pv is None or pv.op_type != "MatMul" or pv.inputs[0] is not sm.outputs[0]:
        return "Softmax output does not feed MatMul(·, V) alone"
    chain = [sm, pv]
    consumer = sm  # the node reading x, walking back from Softmax
    mask, scale = None, None
    add = _producer(x, "Add")
    if add is not None and sole_user(x) is sm:
        a, b = add.inputs
        if _producer(a, "Div") or _producer(a, "Mul") or _producer(a, "MatMul"):
            mask, x = b, a
        elif _producer(b, "Div") or _producer(b, "Mul") or _producer(b, "MatMul"):
            mask, x = a, b
        else:
            return "no MatMul behind the masked scores"
        chain.append(add)
        consumer = add
    for op in ("Div", "Mul"):
        sc = _producer(x, op)
        if sc is not None and sole_user(x) is consumer:
            c = scalar(sc.inputs[1])
            if c is None or c == 0:
                return f"the score {op} is not by a constant scalar"
            scale = 1.0 / c if op == "Div" else c
            chain.append(sc)
            consumer = sc
            x = sc.inputs[0]
            break
    qk = _producer(x, "MatMul")
    if qk is None or sole_user(x) is not consumer:
        return "the scores are not MatMul(Q, Kᵀ) used once"
    chain.append(qk)
    q, kt = qk.inputs
    tr = _producer(kt, "Transpose")
    if tr is None or _perm(tr) != [0, 1, 3, 2] or sole_user(kt) is not qk:
        return "K does not reach Q·Kᵀ through Transpose(perm=[0,1,3,2])"
    chain.append(tr)
    k, v = tr.inputs[0], pv.inputs[1]
    k, k_rep = _unrepeat(k)
    v, v_rep = _unrepeat(v)
    if bool(k_rep) != bool(v_rep):
        k, v, k_rep, v_rep = tr.inputs[0], pv.inputs[1], [], []
    qs, ks, vs = opinfo.shape_of(q), opinfo.shape_of(k), opinfo.shape_of(v)
    if qs is None or ks is None or vs is None or len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        return "Q, K and V need static 4-D shapes"
    b, h, s, hd = qs
    if ks[0] != b or ks[3] != hd or vs[0] != b or vs[1] != ks[1] or vs[2] != ks[2] or h % ks[1]:
        return f"Q {qs}, K {ks}, V {vs} are not attention operands"
    if mask is not None:
        ms = opinfo.shape_of(mask)
        if ms is None or mask.dtype not in (ir.DataType.FLOAT, ir.DataType.BOOL) or len(ms) > 4:
            return "the mask needs a static float or bool shape"
        try:
            if np.broadcast_shapes(ms, (b, h, s, ks[2])) != (b, h, s, ks[2]):
                return "the mask does not broadcast to the scores"
        except ValueError:
            return "the mask does not broadcast to the scores"
    return _Sdpa(sm, pv, chain, q, k, v, k_rep, v_rep, mask, scale, (qs, ks, vs))


def attention_rule(sm: ir.Node, ctx: CompileContext, model: ir.Model):
    m = _match(sm)
    if not isinstance(m, _Sdpa):
        return m
    (b, h, s, hd), ks, vs = m.shapes
    if any(t.dtype != ir.DataType.FLOAT for t in (m.q, m.k, m.v)):
        return "only float32 attention"
    qk = next(n for n in m.chain if n.op_type == "MatMul" and n is not m.pv)
    why = fits(ctx, sm, b * h, s, ks[2], hd, vs[3], m.mask is not None) or faster_elsewhere(ctx, "attention", qk) or \
        faster_elsewhere(ctx, "attention", m.pv)
    if why:
        return why
    scale_mul = 1.0 if m.scale is None else m.scale
    attrs = {}
    if not math.isclose(scale_mul, 1.0 / math.sqrt(hd), rel_tol=1e-6):
        attrs["scale"] = ir.AttrFloat32("scale", float(scale_mul))
    inputs = [m.q, m.k, m.v] + ([m.mask] if m.mask is not None else [])
    node = ir.Node("", "Attention", inputs, attributes=list(attrs.values()), num_outputs=1,
                   name=f"{m.pv.name}/Attention")
    out = node.outputs[0]
    out.shape, out.type = m.pv.outputs[0].shape, m.pv.outputs[0].type
    old = m.chain + m.k_rep + m.v_rep
    return Rewrite(m.pv, [n for n in model.graph if any(n is o for o in old)], [node], [m.pv.outputs[0]], [out])


def gqa_group_rule(sm: ir.Node, ctx: CompileContext, model: ir.Model):
    """Where attention is not fused (the target's NPU cannot tile it, or its products run
    faster on another device such as PIM), drop the repeat_kv copies of K and V: fold each
    kv head's query heads into the rows of one product instead,
    Q [B,H,S,d] -> [B,Hkv,g*S,d];  MatMul(·, Kᵀ [B,Hkv,d,T]) -> Softmax -> MatMul(·, V) -> [B,H,S,dv].
    Every device then reads the KV cache once per kv head, and nothing expands it."""
    m = _match(sm)
    return _group(m, model) if isinstance(m, _Sdpa) else m


def _group(m: _Sdpa, model: ir.Model):
    if not m.k_rep:
        return "K and V reach the products without a repeat_kv chain"
    (b, h, s, hd), ks, vs = m.shapes
    hkv, t, dv = ks[1], ks[2], vs[3]
    g = h // hkv
    if m.mask is not None:
        ms = opinfo.shape_of(m.mask)
        if (len(ms) == 4 and ms[1] != 1) or (len(ms) == 3 and ms[0] != 1):
            return "a per-head mask cannot be shared across a kv head's query heads"
        if m.mask.dtype == ir.DataType.BOOL:
            return "a boolean mask is not grouped"
    name = m.pv.name
    inits: list[ir.Value] = []

    def shape_const(tag, dims):
        v = ir.Value(name=f"{name}/gqa_{tag}", const_value=ir.tensor(np.array(dims, np.int64), name=f"{name}/gqa_{tag}"))
        v.shape, v.dtype = ir.Shape([len(dims)]), ir.DataType.INT64
        inits.append(v)
        return v

    def typed(node, dims, dtype):
        node.outputs[0].shape, node.outputs[0].dtype = ir.Shape(list(dims)), dtype
        return node

    f32 = m.q.dtype
    nodes = []
    qg = typed(ir.Node("", "Reshape", [m.q, shape_const("q", [b, hkv, g * s, hd])], name=f"{name}/gqa_q"),
               (b, hkv, g * s, hd), f32)
    kt = typed(ir.Node("", "Transpose", [m.k], attributes=[ir.AttrInt64s("perm", [0, 1, 3, 2])],
                       name=f"{name}/gqa_kt"), (b, hkv, hd, t), m.k.dtype)
    sc = typed(ir.Node("", "MatMul", [qg.outputs[0], kt.outputs[0]], name=f"{name}/gqa_qk"), (b, hkv, g * s, t), f32)
    nodes += [qg, kt, sc]
    x = sc.outputs[0]
    if m.scale is not None:
        c = ir.Value(name=f"{name}/gqa_scale", const_value=ir.tensor(np.array(m.scale, f32.numpy()),
                                                                      name=f"{name}/gqa_scale"))
        c.shape, c.dtype = ir.Shape([]), f32
        inits.append(c)
        mul = typed(ir.Node("", "Mul", [x, c], name=f"{name}/gqa_scale_mul"), (b, hkv, g * s, t), f32)
        nodes.append(mul)
        x = mul.outputs[0]
    if m.mask is not None:  # the mask broadcasts over [B, Hkv, g, S, T]; so do the scores there
        ms = opinfo.shape_of(m.mask)
        x5 = typed(ir.Node("", "Reshape", [x, shape_const("s5", [b, hkv, g, s, t])], name=f"{name}/gqa_s5"),
                   (b, hkv, g, s, t), f32)
        mask = m.mask
        nodes.append(x5)
        if len(ms) == 4:
            m5 = typed(ir.Node("", "Reshape", [mask, shape_const("m5", [ms[0], 1, 1, ms[2], ms[3]])],
                               name=f"{name}/gqa_m5"), (ms[0], 1, 1, ms[2], ms[3]), mask.dtype)
            nodes.append(m5)
            mask = m5.outputs[0]
        add = typed(ir.Node("", "Add", [x5.outputs[0], mask], name=f"{name}/gqa_mask"), (b, hkv, g, s, t), f32)
        back = typed(ir.Node("", "Reshape", [add.outputs[0], shape_const("s4", [b, hkv, g * s, t])],
                             name=f"{name}/gqa_s4"), (b, hkv, g * s, t), f32)
        nodes += [add, back]
        x = back.outputs[0]
    sm2 = typed(ir.Node("", "Softmax", [x], attributes=[ir.AttrInt64("axis", -1)], name=f"{name}/gqa_softmax"),
                (b, hkv, g * s, t), f32)
    pv = typed(ir.Node("", "MatMul", [sm2.outputs[0], m.v], name=f"{name}/gqa_pv"), (b, hkv, g * s, dv), f32)
    out = ir.Node("", "Reshape", [pv.outputs[0], shape_const("o", [b, h, s, dv])], name=f"{name}/gqa_o")
    out.outputs[0].shape, out.outputs[0].type = m.pv.outputs[0].shape, m.pv.outputs[0].type
    nodes += [sm2, pv, out]
    old = m.chain + m.k_rep + m.v_rep
    return Rewrite(m.pv, [n for n in model.graph if any(n is o for o in old)], nodes, [m.pv.outputs[0]],
                   [out.outputs[0]], initializers=inits)


def _split_heads(v: ir.Value) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """x [B,S,H*hd] for v = Transpose(Reshape(x, [B,S,H,hd]), [0,2,1,3]) used only here."""
    tr = _producer(v, "Transpose")
    rs = _producer(tr.inputs[0], "Reshape") if tr else None
    if rs is None or _perm(tr) != [0, 2, 1, 3] or sole_user(v) is None or sole_user(tr.inputs[0]) is not tr:
        return None
    x = rs.inputs[0]
    xs, hs = opinfo.shape_of(x), opinfo.shape_of(rs.outputs[0])
    if xs is None or hs is None or len(xs) != 3 or len(hs) != 4 or xs[:2] != hs[:2] or xs[2] != hs[2] * hs[3]:
        return None
    return x, hs[2], [rs, tr]


def attention_heads_rule(att: ir.Node, ctx: CompileContext, model: ir.Model):
    if att.op_type != "Attention" or att.domain not in ("", "ai.onnx") or len(att.outputs) != 1:
        return None
    qs = opinfo.shape_of(att.inputs[0])
    if qs is None or len(qs) != 4:
        return None  # already 3-D
    parts = [_split_heads(v) for v in att.inputs[:3]]
    if any(p is None for p in parts):
        return "Q, K or V is not a head split of a 3-D tensor used only here"
    out = att.outputs[0]
    tr = sole_user(out)
    if tr is None or tr.op_type != "Transpose" or _perm(tr) != [0, 2, 1, 3]:
        return "the output is not merged by Transpose(perm=[0,2,1,3])"
    rs = sole_user(tr.outputs[0])
    if rs is None or rs.op_type != "Reshape":
        return "the output is not merged by Reshape"
    b, h, s, hd = qs
    if opinfo.shape_of(rs.outputs[0]) != (b, s, h * hd):
        return "the merged output is not [B, S, H*hd]"
    (q3, hq, nq), (k3, hk, nk), (v3, hv, nv) = parts
    if hk != hv:
        return "K and V head counts differ"
    attrs = [ir.AttrInt64("q_num_heads", hq), ir.AttrInt64("kv_num_heads", hk)]
    attrs += [a for name, a in att.attributes.items() if name == "scale"]
    node = ir.Node("", "Attention", [q3, k3, v3, *att.inputs[3:]], attributes=attrs, num_outputs=1,
                   name=att.name)
    node.outputs[0].shape, node.outputs[0].type = rs.outputs[0].shape, rs.outputs[0].type
    old_ids = {id(n) for n in [att, tr, rs, *nq, *nk, *nv]}
    old = [n for n in model.graph if id(n) in old_ids]
    return Rewrite(rs, old, [node], [rs.outputs[0]], [node.outputs[0]])


def gqa_group_first_rule(sm: ir.Node, ctx: CompileContext, model: ir.Model):
    """Unmasked grouped-query attention (decode) is grouped before `attention` looks at it, so
    fusion weighs the products the devices would run (K read once per kv head, not an expanded
    copy); `attention` then fuses the grouped form (Hkv heads of g*S rows) where the NPU wins."""
    m = _match(sm)
    if not isinstance(m, _Sdpa):
        return m
    if m.mask is not None:
        return "masked scores are grouped only where attention does not fuse them"
    return _group(m, model)


RULES = [NodeRule(GQA_GROUP, gqa_group_first_rule), NodeRule(ATTENTION, attention_rule),
         NodeRule(GQA_GROUP, gqa_group_rule), NodeRule(ATTENTION_HEADS, attention_heads_rule)]


@register("fuse-attention")
def fuse_attention(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fuse scaled dot-product attention into Attention (flash-style on the NPU); group GQA by kv head."""
    return run_rules(model, ctx, RULES)
