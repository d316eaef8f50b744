"""Sharding rules of the ops that contract: MatMul, Gemm, their fused forms and Attention.

Here tensor parallelism starts and ends, in the manner of Megatron-LM: a seed MatMul whose
weight is split by columns produces a shard of its last axis; a MatMul that consumes a shard
along its reduction axis is split by rows and produces partial sums (all-reduced before any
other op reads them); Attention splits by heads or by batch.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.fused.epilogue import BASE_ARITY, FUSED as FUSED_GEMMS
from kcompiler.parallel.spmd.decision import Decision, attr, out_shape, replicate, sharded_axis
from kcompiler.parallel.spmd.layout import PARTIAL, REPL, shard
from kcompiler.parallel.spmd.rules_shape import rule_batch_only


def rule_matmul(node, ins, t, rw):
    a, b = ins[0], ins[1]
    out = out_shape(node)
    if a is None or b is None or a.shape is None or b.shape is None or out is None or a.rank < 2 or b.rank < 2:
        return None
    if a.layout.partial or b.layout.partial:
        return None
    ra, rb, ro = a.rank, b.rank, len(out)
    la, lb = a.layout, b.layout
    if not la.sharded and not lb.sharded:
        # a Megatron column split: the weight's columns are divided among the ranks
        if b.const and rb == 2 and rw.is_seed(node) and b.shape[1] % t == 0:
            return Decision([REPL, shard(1)], [shard(ro - 1)])
        return replicate(node, ins)
    if la.sharded and la.axis == ra - 1:  # split along the reduction axis: partial sums (row split)
        if lb.sharded and lb.axis != rb - 2:
            return None
        return Decision([la, shard(rb - 2)], [PARTIAL])
    if la.sharded and la.axis == ra - 2:  # rows of A
        if lb.sharded:
            return None
        return Decision([la, REPL], [shard(ro - 2)])
    if la.sharded:  # a batch axis of A
        oa = la.axis + ro - ra
        bb = oa - (ro - rb)
        want_b = REPL if bb < 0 or b.shape[bb] == 1 else shard(bb)
        if lb.sharded and lb != want_b:
            return None
        return Decision([la, want_b], [shard(oa)])
    # A replicated, B sharded
    if lb.axis == rb - 1:
        return Decision([REPL, lb], [shard(ro - 1)])
    if lb.axis == rb - 2:
        return None
    ob = lb.axis + ro - rb
    aa = ob - (ro - ra)
    want_a = REPL if aa < 0 or a.shape[aa] == 1 else shard(aa)
    return Decision([want_a, lb], [shard(ob)])


def rule_gemm(node, ins, t, rw):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    out = out_shape(node)
    if a is None or b is None or a.shape is None or b.shape is None or out is None:
        return None
    if a.layout.partial or b.layout.partial or (c is not None and (c.layout.sharded or c.layout.partial)):
        return None
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    m_axis, k_axis = (1, 0) if ta else (0, 1)
    bk, bn = (1, 0) if tb else (0, 1)
    la, lb = a.layout, b.layout

    def bias_for(axis_out):  # C broadcasts to [M, N]: slice it where it spans the split axis
        if c is None:
            return None
        ca = axis_out - (2 - c.rank)
        return REPL if ca < 0 or c.shape[ca] == 1 else shard(ca)

    if not la.sharded and not lb.sharded:
        if b.const and rw.is_seed(node) and b.shape[bn] % t == 0:
            return Decision([REPL, shard(bn)] + ([bias_for(1)] if c is not None else []), [shard(1)])
        return replicate(node, ins)
    if la.sharded and la.axis == m_axis and not lb.sharded:
        return Decision([la, REPL] + ([bias_for(0)] if c is not None else []), [shard(0)])
    if la.sharded and la.axis == k_axis and (not lb.sharded or lb.axis == bk):
        d = Decision([la, shard(bk)] + ([REPL] if c is not None else []), [PARTIAL])
        if c is not None:
            d.rank0_only = (2,)
        return d
    return None


#: the sharding rule of each fused GEMM-like op's base op (kcompiler.fused.epilogue: the fused op
#: keeps BASE_ARITY[base] base inputs, then its epilogue operands)
_BASE_RULES = {"MatMul": rule_matmul, "Gemm": rule_gemm, "Conv": rule_batch_only}
FUSED_BASE = {fused: (base, BASE_ARITY[base], _BASE_RULES[base]) for fused, base in FUSED_GEMMS.items()}


def rule_fused(node, ins, t, rw):
    """A GEMM/Conv with a fused epilogue (kcompiler/fused/epilogue.py): the base op decides, the
    epilogue operands follow the output like an elementwise op's; partial sums may only pass
    through additions, which then happen on rank 0 alone."""
    base, arity, base_rule = FUSED_BASE[node.op_type]
    steps = [str(x) for x in attr(node, "epilogue", [])]
    d = base_rule(node, ins[:arity], t, rw)  # (Conv: only the batch axis)
    if d is None:
        return None
    out = out_shape(node)
    lay = d.outputs[0]
    extras = ins[arity:]
    if any(x is not None and x.layout.partial for x in extras):
        return None
    if lay.partial:
        if any(st.split(":")[0] != "add" for st in steps) or any(x is not None and x.layout.sharded for x in extras):
            return None
        d.inputs = list(d.inputs) + [None if x is None else REPL for x in extras]
        d.rank0_only = tuple(d.rank0_only) + tuple(range(arity, len(ins)))
        d.plain_elsewhere = base
        d.outputs = [PARTIAL] * len(node.outputs)
        return d
    if not lay.sharded:
        if any(x is not None and x.layout.sharded for x in extras):
            return None
        d.inputs = list(d.inputs) + [None if x is None else REPL for x in extras]
        return d
    wants = []
    for x in extras:
        if x is None or x.shape is None:
            wants.append(None if x is None else REPL)
            continue
        a = lay.axis - (len(out) - x.rank)
        want = REPL if a < 0 or x.shape[a] == 1 else shard(a)
        if x.layout.sharded and x.layout != want:
            return None
        wants.append(want)
    d.inputs = list(d.inputs) + wants
    d.outputs = [lay] * len(node.outputs)
    return d


def rule_attention(node, ins, t, rw):
    """ONNX Attention (opset 23): split by batch, or by heads (query and key/value heads both
    divisible by t; grouped-query heads stay with their queries)."""
    q, k, v = ins[0], ins[1], ins[2]
    if q is None or k is None or v is None or q.shape is None or k.shape is None:
        return None
    if any(x is not None and x.layout.partial for x in ins):
        return None
    a, _ = sharded_axis(ins)
    if a is None:
        return replicate(node, ins)
    three_d = q.rank == 3
    lead = next(x for x in ins if x is not None and x.layout.sharded)
    # name the split by the role of the axis in Q's layout
    if lead is q or lead is k or lead is v:
        role = "batch" if lead.layout.axis == 0 else "heads"
    else:
        return None
    if role == "heads":
        hq = int(attr(node, "q_num_heads", 0)) if three_d else q.shape[1]
        hkv = int(attr(node, "kv_num_heads", 0)) if three_d else k.shape[1]
        if not hq or not hkv or hq % t or hkv % t:
            return None
        qkv_axis = 2 if three_d else 1
        if any(x.layout.sharded and x.layout.axis != qkv_axis for x in (q, k, v)):
            return None
        cache_axis = 1
    else:
        if any(x.layout.sharded and x.layout.axis != 0 for x in (q, k, v)):
            return None
        qkv_axis = cache_axis = 0
    wants = [shard(qkv_axis)] * 3
    mask = ins[3] if len(ins) > 3 else None
    if mask is not None:
        if mask.layout.sharded and not (mask.rank == 4 and mask.layout.axis in (0, 1)):
            return None
        ax = 0 if role == "batch" else 1
        ma = ax - (4 - mask.rank)
        wants.append(REPL if ma < 0 or mask.shape[ma] == 1 else shard(ma))
    for x in ins[4:6]:
        wants.append(None if x is None else shard(cache_axis))
    for x in ins[6:]:
        wants.append(None if x is None else (shard(0) if role == "batch" else REPL))
    outs = [shard(qkv_axis if role == "heads" else 0)]
    outs += [shard(cache_axis)] * 2
    outs += [shard(0 if role == "batch" else 1)]
    d = Decision(wants, outs[:len(node.outputs)])
    if role == "heads" and three_d:
        d.attrs = {"q_num_heads": ir.AttrInt64("q_num_heads", hq // t),
                   "kv_num_heads": ir.AttrInt64("kv_num_heads", hkv // t)}
    return d
