"""SPMD rewriting: every node runs once per rank of its device group, on a slice of the data.

A value's *layout* across the ranks of its group is one of
  replicated   every rank holds all of it;
  shard(a)     rank i holds the i-th of t equal slices along axis a;
  partial      every rank holds a summand (the output of a row-split MatMul).

Walking the placed graph in topological order, a rule per op (a table, ``RULES``) says, from
the layouts of its inputs, which layouts it wants and what it produces; the rewriter converts
inputs that differ with communication ops (AllReduce: partial -> replicated; AllGather:
shard -> replicated; Scatter from the host / a local Slice / a sliced constant: replicated ->
shard) and emits one copy of the node per rank with rank-local shapes and weights.

The same walk serves data parallelism (graph inputs start sharded along the batch axis),
tensor parallelism in the manner of Megatron-LM (a MatMul whose weight is split by columns
starts a shard of its last axis, which flows through the activation, the heads' Reshape /
Transpose, rotary embedding and attention, until a MatMul consumes it along its reduction
axis: that one is split by rows and its partial sums are all-reduced), and pipelining (each
node belongs to a stage with its own device group; values crossing stages are sent rank to
rank with Send/Recv). With ``emit=False`` it only analyses: layouts, communication and the
regions of sharded nodes, which the cost search (search.py) and the tensor strategy's
region check read. The walk can also be taken in steps (``advance``) and forked with other
seeds (``fork``): the tensor strategy's greedy check re-analyses only from the seeds it tries
until their regions close, not the whole graph once per try.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import KCError
from kcompiler.backends.comm.collectives import COMM_DEVICE, DOMAIN, collective_time
from kcompiler.passes.placement import DEVICE_KEY, REASON_KEY
from kcompiler.frontend.state import SHARD_KEY, STATE_KEY


@dataclass(frozen=True)
class Layout:
    axis: int | None = None
    partial: bool = False

    @property
    def sharded(self) -> bool:
        return self.axis is not None

    def __str__(self) -> str:
        return "partial" if self.partial else ("replicated" if self.axis is None else f"shard({self.axis})")


REPL = Layout()
PARTIAL = Layout(partial=True)


def shard(axis: int) -> Layout:
    return Layout(axis=axis)


def is_const(v: ir.Value | None) -> bool:
    """Known at compile time, judged without reading weight data (it may be external); an
    absent optional input counts as constant."""
    return v is None or opinfo.is_const(v)


def is_const_producer(node: ir.Node) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Constant", "ConstantOfShape"):
        return False
    return node.op_type == "Constant" or all(v is not None and v.const_value is not None for v in node.inputs)


def _ints(v: ir.Value | None) -> list[int] | None:
    """A small int64 constant input (shapes, axes) as a list."""
    if v is None:
        return None
    c = opinfo.const_value(v)
    return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]


# ---- the rules -------------------------------------------------------------------------------------

@dataclass
class In:
    """What a rule sees of one input."""

    layout: Layout
    shape: tuple[int, ...] | None
    const: bool
    value: ir.Value

    @property
    def rank(self) -> int:
        return len(self.shape) if self.shape is not None else -1


@dataclass
class Decision:
    inputs: list[Layout | None]  # the layout each input must have (None: absent input)
    outputs: list[Layout]
    #: input index -> rank -> a replacement constant (e.g. a Reshape's rank-local shape)
    rewrite: dict[int, Callable[[int], ir.Value]] = field(default_factory=dict)
    #: input indices only rank 0 keeps (a bias added after a row split)
    rank0_only: tuple[int, ...] = ()
    #: attributes replaced in every rank's copy (e.g. an Attention's number of heads per rank)
    attrs: dict[str, ir.Attr] = field(default_factory=dict)
    #: ranks other than 0 run the plain base op (a fused GEMM whose epilogue only adds rank 0's terms)
    plain_elsewhere: str = ""


Rule = Callable[[ir.Node, list, int, "Rewriter"], "Decision | None"]


def _out_shape(node: ir.Node, i: int = 0):
    return opinfo.shape_of(node.outputs[i]) if len(node.outputs) > i else None


def _replicate(node: ir.Node, ins: list) -> Decision:
    return Decision([None if x is None else REPL for x in ins], [REPL] * len(node.outputs))


def _sharded_axis(ins: list) -> tuple[int | None, bool]:
    """(the shard axis of the first sharded input, whether any input is partial)"""
    partial = any(x is not None and x.layout.partial for x in ins)
    for x in ins:
        if x is not None and x.layout.sharded:
            return x.layout.axis, partial
    return None, partial


def rule_elementwise(node, ins, t, rw):
    out = _out_shape(node)
    if out is None or any(x is not None and x.shape is None for x in ins):
        return None
    ro = len(out)
    if any(x is not None and x.layout.partial for x in ins):
        return None
    axis = None
    for x in ins:
        if x is not None and x.layout.sharded:
            oa = x.layout.axis + ro - x.rank
            if axis is None:
                axis = oa
            elif axis != oa:
                return None
    if axis is None:
        return _replicate(node, ins)
    wants = []
    for x in ins:
        if x is None:
            wants.append(None)
            continue
        a = axis - (ro - x.rank)
        wants.append(REPL if a < 0 or x.shape[a] == 1 else shard(a))
    return Decision(wants, [shard(axis)] * len(node.outputs))


def _norm_axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _unary_keeping(bad_axes: Callable[[ir.Node, int], set[int]]) -> Rule:
    """Ops that act along some axes of input 0 and keep the others; other inputs replicated."""

    def rule(node, ins, t, rw):
        x = ins[0]
        if x is None or x.layout.partial or x.shape is None:
            return None
        if not x.layout.sharded:
            return _replicate(node, ins) if all(i is None or not i.layout.sharded for i in ins[1:]) else None
        if any(i is not None and (i.layout.sharded or i.layout.partial) for i in ins[1:]):
            return None
        if x.layout.axis in bad_axes(node, x.rank):
            return None
        return Decision([shard(x.layout.axis)] + [None if i is None else REPL for i in ins[1:]],
                        [shard(x.layout.axis)] * len(node.outputs))

    return rule


def _attr(node, name, default):
    a = node.attributes.get(name)
    return a.value if a is not None else default


def _batch_only(node, rank):  # Conv, pooling, BatchNorm: only the batch axis may be split
    return set(range(1, rank))


def _softmax_axes(node, rank):
    return {_norm_axis(int(_attr(node, "axis", -1)), rank)}


def _from_axis(node, rank):  # LayerNormalization: normalises axes [axis, rank)
    return set(range(_norm_axis(int(_attr(node, "axis", -1)), rank), rank))


def rule_reduce(node, ins, t, rw):
    x = ins[0]
    if x is None or x.shape is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    axes = _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None:
        axes = _attr(node, "axes", None)
    if axes is None or len(axes) == 0:
        return None
    axes = {_norm_axis(int(a), x.rank) for a in axes}
    a = x.layout.axis
    if a in axes:
        return None
    out_axis = a if int(_attr(node, "keepdims", 1)) else a - sum(1 for r in axes if r < a)
    return Decision([shard(a)] + [None if i is None else REPL for i in ins[1:]], [shard(out_axis)])


def rule_transpose(node, ins, t, rw):
    x = ins[0]
    if x is None or x.shape is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    perm = list(_attr(node, "perm", list(range(x.rank))[::-1]))
    return Decision([x.layout], [shard(perm.index(x.layout.axis))])


def map_axis_through_reshape(in_shape, out_shape, axis: int, t: int) -> int | None:
    """Where a contiguous t-way split of `axis` lands after a row-major reshape, or None."""
    prefix = math.prod(in_shape[:axis])
    acc = 1
    for b, d in enumerate(out_shape):
        if acc == prefix and d > 1 and d % t == 0 and d * math.prod(out_shape[b + 1:]) == math.prod(in_shape[axis:]):
            return b
        acc *= d
        if acc > prefix:
            return None
    return None


def _local(shape, layout: Layout, t: int) -> tuple[int, ...]:
    s = list(shape)
    if layout.sharded:
        s[layout.axis] //= t
    return tuple(s)


def rule_view(node, ins, t, rw):
    """Reshape / Flatten / Squeeze / Unsqueeze: follow the split through the row-major view."""
    x = ins[0]
    out = _out_shape(node)
    if x is None or x.shape is None or out is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    b = map_axis_through_reshape(x.shape, out, x.layout.axis, t)
    if b is None:
        return None
    d = Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [shard(b)])
    if node.op_type == "Reshape":
        local = _local(out, shard(b), t)
        d.rewrite[1] = lambda r, local=local: rw.int_const(local, "shape")
    return d


def rule_expand(node, ins, t, rw):
    x = ins[0]
    out = _out_shape(node)
    if x is None or x.shape is None or out is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    oa = x.layout.axis + len(out) - x.rank
    d = Decision([x.layout, REPL], [shard(oa)])
    local = _local(out, shard(oa), t)
    d.rewrite[1] = lambda r, local=local: rw.int_const(local, "shape")
    return d


def rule_slice(node, ins, t, rw):
    x = ins[0]
    if x is None or x.shape is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
    if starts is None or ends is None:
        return None
    axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(len(starts)))
    steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(starts)
    if axes is None or steps is None:
        return None
    a = x.layout.axis
    for ax, s, e, st in zip(axes, starts, ends, steps):
        if _norm_axis(ax, x.rank) == a and not (st == 1 and (s == 0 or s <= -x.shape[a]) and e >= x.shape[a]):
            return None
    return Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [x.layout])


def rule_split(node, ins, t, rw):
    x = ins[0]
    if x is None or x.shape is None or x.layout.partial:
        return None
    if not x.layout.sharded:
        return _replicate(node, ins)
    if _norm_axis(int(_attr(node, "axis", 0)), x.rank) == x.layout.axis:
        return None
    return Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [x.layout] * len(node.outputs))


def rule_concat(node, ins, t, rw):
    out = _out_shape(node)
    if out is None or any(x is None or x.shape is None or x.layout.partial for x in ins):
        return None
    a, _ = _sharded_axis(ins)
    if a is None:
        return _replicate(node, ins)
    if any(x.layout.sharded and x.layout.axis != a for x in ins):
        return None
    if _norm_axis(int(_attr(node, "axis", 0)), len(out)) == a:
        return None
    return Decision([shard(a)] * len(ins), [shard(a)])


def rule_gather(node, ins, t, rw):
    data, idx = ins[0], ins[1]
    if data is None or idx is None or data.shape is None or idx.shape is None:
        return None
    if data.layout.partial or idx.layout.partial:
        return None
    axis = _norm_axis(int(_attr(node, "axis", 0)), data.rank)
    if idx.layout.sharded and not data.layout.sharded:
        return Decision([REPL, idx.layout], [shard(axis + idx.layout.axis)])
    if data.layout.sharded and not idx.layout.sharded:
        a = data.layout.axis
        if a == axis:
            return None
        return Decision([data.layout, REPL], [shard(a if a < axis else a + idx.rank - 1)])
    if not data.layout.sharded and not idx.layout.sharded:
        return _replicate(node, ins)
    return None


def rule_matmul(node, ins, t, rw):
    a, b = ins[0], ins[1]
    out = _out_shape(node)
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
        return _replicate(node, ins)
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
    out = _out_shape(node)
    if a is None or b is None or a.shape is None or b.shape is None or out is None:
        return None
    if a.layout.partial or b.layout.partial or (c is not None and (c.layout.sharded or c.layout.partial)):
        return None
    ta, tb = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
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
        return _replicate(node, ins)
    if la.sharded and la.axis == m_axis and not lb.sharded:
        return Decision([la, REPL] + ([bias_for(0)] if c is not None else []), [shard(0)])
    if la.sharded and la.axis == k_axis and (not lb.sharded or lb.axis == bk):
        d = Decision([la, shard(bk)] + ([REPL] if c is not None else []), [PARTIAL])
        if c is not None:
            d.rank0_only = (2,)
        return d
    return None


FUSED_BASE = {"FusedMatMul": ("MatMul", 2, rule_matmul), "FusedGemm": ("Gemm", 3, rule_gemm),
              "FusedConv": ("Conv", 3, None)}


def rule_fused(node, ins, t, rw):
    """A GEMM/Conv with a fused epilogue (passes/fusion/epilogue.py): the base op decides, the
    epilogue operands follow the output like an elementwise op's; partial sums may only pass
    through additions, which then happen on rank 0 alone."""
    base, arity, base_rule = FUSED_BASE[node.op_type]
    steps = [str(x) for x in _attr(node, "epilogue", [])]
    if base_rule is None:  # Conv: only the batch axis
        d = _unary_keeping(_batch_only)(node, ins[:arity], t, rw)
    else:
        d = base_rule(node, ins[:arity], t, rw)
    if d is None:
        return None
    out = _out_shape(node)
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
    a, _ = _sharded_axis(ins)
    if a is None:
        return _replicate(node, ins)
    three_d = q.rank == 3
    lead = next(x for x in ins if x is not None and x.layout.sharded)
    # name the split by the role of the axis in Q's layout
    if lead is q or lead is k or lead is v:
        role = "batch" if lead.layout.axis == 0 else "heads"
    else:
        return None
    if role == "heads":
        hq = int(_attr(node, "q_num_heads", 0)) if three_d else q.shape[1]
        hkv = int(_attr(node, "kv_num_heads", 0)) if three_d else k.shape[1]
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


RULES: dict[str, Rule] = {}
for _op in opinfo.ELEMENTWISE:
    RULES[_op] = rule_elementwise
for _op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LRN",
            "InstanceNormalization"):
    RULES[_op] = _unary_keeping(_batch_only)
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    RULES[_op] = _unary_keeping(_softmax_axes)
for _op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
    RULES[_op] = _unary_keeping(_from_axis)
for _op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
            "ReduceSumSquare", "ReduceLogSumExp"):
    RULES[_op] = rule_reduce
for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    RULES[_op] = rule_view
RULES.update(Transpose=rule_transpose, Expand=rule_expand, Slice=rule_slice, Split=rule_split,
             Concat=rule_concat, Gather=rule_gather, MatMul=rule_matmul, Gemm=rule_gemm, Attention=rule_attention)
#: rules for the fused ops of kcompiler's own domain (passes/fusion). A FusedElementwise chain
#: broadcasts its inputs to its output like any elementwise op (every step is elementwise), so it
#: splits like one; without this rule LLaMA's rotary embedding replicated, gathering Q and K and
#: with them the whole K cache on every chip.
DOMAIN_RULES: dict[str, Rule] = {**{op: rule_fused for op in FUSED_BASE}, "FusedElementwise": rule_elementwise}


# ---- the rewriter --------------------------------------------------------------------------------

@dataclass
class Entry:
    """A value of the original graph as the ranks of one stage hold it."""

    layout: Layout
    copies: list  # per-rank ir.Value (None in analysis mode)
    stage: int  # -1: a graph input or constant, available to every stage
    producer: int = -1  # id of the producing original node (region bookkeeping)


@dataclass
class CommEvent:
    op: str
    nbytes: int  # bytes of the whole tensor
    stage: int
    region: int | None  # id of the region root the converted value belongs to
    seconds: float
    graph_output: bool = False


@dataclass
class Analysis:
    layouts: dict[int, Layout] = field(default_factory=dict)  # id(value) -> layout
    sharded_nodes: set[int] = field(default_factory=set)  # ids of nodes running on 1/t of the data
    events: list[CommEvent] = field(default_factory=list)
    regions: dict[int, set[int]] = field(default_factory=dict)  # root -> node ids
    seeds: dict[int, set[int]] = field(default_factory=dict)  # root -> seed node ids


class Rewriter:
    def __init__(self, model: ir.Model, system, groups: list[tuple[str, ...]], stage_of: dict[int, int] | None = None,
                 intra: str = "none", seeds: set[int] | None = None, emit: bool = True, label: str = ""):
        self.model = model
        self.system = system
        self.host = system.host.name
        self.groups = groups
        self.t = len(groups[0])
        if any(len(g) != self.t for g in groups):
            raise KCError("every pipeline stage needs the same number of devices")
        self.stage_of = stage_of or {}
        self.intra = intra
        self.seeds = seeds if seeds is not None else set()
        self.emit = emit
        self.label = label or intra
        #: id(value) -> stage -> entry; the inner dicts are replaced, never changed (forks share them)
        self.info: dict[int, dict[int, Entry]] = {}
        self.out_nodes: list[ir.Node] = []
        self.pending: list[list[ir.Node]] = [[] for _ in range(self.t)]
        self.new_inits: list[ir.Value] = []
        self.analysis = Analysis()
        self._parent: dict[int, int] = {}
        #: the regions' members as circular lists (node id -> the next in its region; absent: alone)
        self._next: dict[int, int] = {}
        #: region root -> the index of the last node reading a value produced in the region
        self._reach: dict[int, int] = {}
        self._conv: dict[tuple, Entry] = {}  # (id(value), (stage, layout)) -> the converted entry
        self._const_copies: dict[tuple[int, int, int], ir.Value] = {}
        self._names = 0
        from kcompiler.frontend import state as kstate

        self.state_in, self.state_out = kstate.pairs(model)
        self.nodes = list(model.graph)
        self.pos = 0  # the index of the next node to process
        last: dict[int, int] = {}
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                if v is not None:
                    last[id(v)] = i
        #: node id -> the index of the last node that reads one of its outputs (-1: none does)
        self.last_read = {id(n): max((last.get(id(v), -1) for v in n.outputs), default=-1) for n in self.nodes}

    def fork(self, seeds: set[int]) -> "Rewriter":
        """An analysis that goes on from this one's state with other seeds: the same as a whole
        new walk with them, provided no node processed so far is a seed of one and not the other."""
        if self.emit:
            raise KCError("only an analysis (emit=False) can be forked")
        new = copy.copy(self)
        new.seeds = seeds
        new.info = dict(self.info)
        new._parent, new._next, new._reach = dict(self._parent), dict(self._next), dict(self._reach)
        new._conv = dict(self._conv)
        a = self.analysis
        new.analysis = Analysis(dict(a.layouts), set(a.sharded_nodes), list(a.events))
        return new

    # ---- bookkeeping ----------------------------------------------------------------------
    def is_seed(self, node: ir.Node) -> bool:
        return self.intra == "tensor" and id(node) in self.seeds

    def _find(self, x: int) -> int:
        while self._parent.get(x, x) != x:
            x = self._parent[x]
        return x

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            reach = max(self.reach(ra), self.reach(rb))
            self._parent[ra] = rb
            self._reach[rb] = reach
            nxt = self._next  # splice the two circles
            nxt[ra], nxt[rb] = nxt.get(rb, rb), nxt.get(ra, ra)

    def root(self, x: int) -> int:
        """The root naming x's region (x itself while alone)."""
        return self._find(x)

    def region_of(self, x: int) -> list[int]:
        """The node ids joined in x's region so far (x's producers of sliced inputs included)."""
        out, y = [x], self._next.get(x, x)
        while y != x:
            out.append(y)
            y = self._next.get(y, y)
        return out

    def reach(self, x: int) -> int:
        """The index of the last node reading a value of x's region so far: from the next
        node on, a walk that has passed it can add nothing to the region (nor communication)."""
        r = self._find(x)
        return self._reach.get(r, self.last_read.get(r, -1))

    def _fresh(self, base: str) -> str:
        self._names += 1
        return f"{base}__p{self._names}"

    def device_of(self, node: ir.Node, stage: int, rank: int) -> str:
        orig = node.metadata_props.get(DEVICE_KEY, self.host)
        return self.host if orig == self.host else self.groups[stage][rank]

    def int_const(self, values, hint: str) -> ir.Value:
        arr = np.asarray(values, dtype=np.int64)
        v = ir.Value(name=self._fresh(hint), shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(arr))
        self.new_inits.append(v)
        return v

    def _emit_rank(self, rank: int, node: ir.Node) -> None:
        self.pending[rank].append(node)

    def _flush(self) -> None:
        for lst in self.pending:
            self.out_nodes.extend(lst)
            lst.clear()

    def _emit_comm(self, node: ir.Node) -> None:
        self._flush()
        node.metadata_props[DEVICE_KEY] = COMM_DEVICE
        node.metadata_props[REASON_KEY] = f"{self.label}: communication"
        self.out_nodes.append(node)

    def _new_value(self, like: ir.Value, layout: Layout, name: str) -> ir.Value:
        shape = opinfo.shape_of(like)
        if shape is not None and layout.sharded:
            shp = ir.Shape(_local(shape, layout, self.t))
        else:
            shp = like.shape
        return ir.Value(name=name, shape=shp, type=like.type)

    def _comm(self, op: str, inputs: list, n_out: int, attrs: dict, like: ir.Value, out_layout: Layout,
              names: list[str]) -> list:
        attributes = []
        for k, v in attrs.items():
            if isinstance(v, int):
                attributes.append(ir.AttrInt64(k, v))
            elif isinstance(v, str):
                attributes.append(ir.AttrString(k, v))
            else:
                attributes.append(ir.AttrStrings(k, list(v)))
        outs = [self._new_value(like, out_layout, nm) for nm in names]
        node = ir.Node(DOMAIN, op, inputs, attributes, outputs=outs, name=self._fresh(f"{op}/{like.name}"))
        self._emit_comm(node)
        return outs

    def _record(self, op: str, v: ir.Value, stage: int, producer: int, graph_output: bool = False) -> None:
        devs = list(self.groups[max(stage, 0)])
        n = opinfo.nbytes(v)
        secs = collective_time(op, n if op != "Send" else n // self.t, devs, self.system) if op != "Slice" else 0.0
        # the producer's region is resolved once the walk has joined every region (run())
        self.analysis.events.append(CommEvent(op, n, stage, producer if producer >= 0 else None, secs,
                                              graph_output))

    # ---- values ------------------------------------------------------------------------------
    def get(self, v: ir.Value | None, stage: int) -> Entry | None:
        if v is None:
            return None
        per = self.info.get(id(v))
        if per is not None and stage in per:
            return per[stage]
        if per and not is_const(v) and v.producer() is not None:  # produced in another stage
            src_stage, e = next(iter(per.items()))
            return self._send(v, e, src_stage, stage)
        if is_const(v):
            copies = [self._const_copy(v, stage, r) for r in range(self.t)] if self.emit else None
            e = Entry(REPL, copies, -1)
        else:  # a graph input (on the host, or resident state)
            e = Entry(REPL, [v] * self.t if self.emit else None, -1)
            shape = opinfo.shape_of(v)
            if self.intra == "data" and shape and shape[0] % self.t == 0 and self.t > 1:
                e = self._scatter(v, e, 0, stage)
        self.info[id(v)] = {**self.info.get(id(v), {}), stage: e}
        return e

    def _const_copy(self, v: ir.Value, stage: int, rank: int) -> ir.Value:
        """Initializers are shared; a Constant node is repeated on each device that reads it."""
        prod = v.producer()
        if prod is None:
            return v
        key = (id(v), stage, rank)
        if key not in self._const_copies:
            dev = self.groups[stage][rank] if prod.metadata_props.get(DEVICE_KEY, self.host) != self.host else self.host
            outs = [self._new_value(o, REPL, f"{o.name}__s{stage}r{rank}") for o in prod.outputs]
            node = ir.Node(prod.domain, prod.op_type, [self._const_copy(i, stage, rank) if i is not None else None
                                                        for i in prod.inputs],
                           list(prod.attributes.values()), outputs=outs, name=f"{prod.name}__s{stage}r{rank}",
                           version=prod.version)
            node.metadata_props[DEVICE_KEY] = dev
            node.metadata_props[REASON_KEY] = "constant: repeated on every device that reads it"
            self._emit_rank(rank, node)
            for o, n in zip(prod.outputs, outs):
                self._const_copies[(id(o), stage, rank)] = n
        return self._const_copies[key]

    def _scatter(self, v: ir.Value, e: Entry, axis: int, stage: int) -> Entry:
        self._record("Scatter", v, stage, -1)
        copies = None
        if self.emit:
            devs = self.groups[stage]
            copies = self._comm("Scatter", [v], self.t, {"axis": axis, "devices": devs}, v, shard(axis),
                                [self._fresh(f"{v.name}__shard{r}") for r in range(self.t)])
        return Entry(shard(axis), copies, stage)

    def _send(self, v: ir.Value, e: Entry, src: int, dst: int) -> Entry:
        if e.layout.partial:
            e = self.convert(v, e, REPL, src)
        if src < 0:
            return e
        self._record("Send", v, src, e.producer)
        copies = None
        if self.emit:
            copies = []
            for r in range(self.t):
                a, b = self.groups[src][r], self.groups[dst][r]
                x = e.copies[r]
                if a == b or self.host in (a, b):
                    copies.append(x)
                    continue
                (y,) = self._comm("Send", [x], 1, {"src": a, "dst": b}, x, REPL, [self._fresh(f"{v.name}__sent")])
                y.shape = x.shape
                (z,) = self._comm("Recv", [y], 1, {"src": a, "dst": b}, x, REPL, [self._fresh(f"{v.name}__recv")])
                z.shape = x.shape
                copies.append(z)
        out = Entry(e.layout, copies, dst, e.producer)
        self.info[id(v)] = {**self.info[id(v)], dst: out}
        return out

    def convert(self, v: ir.Value, e: Entry, want: Layout, stage: int) -> Entry:
        """The value in layout `want` (cached per stage)."""
        if e.layout == want:
            return e
        key = (stage, want)
        conv = self._conv
        if (id(v), key) in conv:
            return conv[(id(v), key)]
        devs = self.groups[max(stage, 0)]
        if want == REPL:
            if e.layout.partial:
                self._record("AllReduce", v, stage, e.producer)
                copies = self._comm("AllReduce", e.copies, self.t, {"devices": devs}, v, REPL,
                                    [self._fresh(f"{v.name}__sum{r}") for r in range(self.t)]) if self.emit else None
            else:
                self._record("AllGather", v, stage, e.producer)
                copies = self._comm("AllGather", e.copies, self.t, {"devices": devs, "axis": e.layout.axis}, v, REPL,
                                    [self._fresh(f"{v.name}__all{r}") for r in range(self.t)]) if self.emit else None
            out = Entry(REPL, copies, stage, e.producer)
        elif want.sharded:
            if e.layout != REPL:
                e = self.convert(v, e, REPL, stage)
            if is_const(v):
                copies = [self._slice_const(v, want.axis, r, stage) for r in range(self.t)] if self.emit else None
            elif v.is_graph_input() if hasattr(v, "is_graph_input") else False:
                out = self._scatter(v, e, want.axis, stage)
                conv[(id(v), key)] = out
                return out
            else:
                self._record("Slice", v, stage, e.producer)
                copies = [self._slice_local(v, e.copies[r], want.axis, r, stage) for r in range(self.t)] \
                    if self.emit else None
            out = Entry(want, copies, stage, e.producer)
        else:  # pragma: no cover - nothing asks for partial
            raise KCError(f"cannot convert '{v.name}' to {want}")
        conv[(id(v), key)] = out
        return out

    def _slice_const(self, v: ir.Value, axis: int, rank: int, stage: int) -> ir.Value:
        shape = opinfo.shape_of(v)
        local = _local(shape, shard(axis), self.t)
        n = local[axis]
        sl = tuple(slice(rank * n, (rank + 1) * n) if i == axis else slice(None) for i in range(len(shape)))

        def load(v=v, sl=sl):
            return ir.tensor(np.ascontiguousarray(np.asarray(opinfo.const_value(v))[sl]))

        name = self._fresh(f"{v.name}__part{rank}")
        lazy = ir.LazyTensor(load, dtype=v.dtype, shape=ir.Shape(local), name=name)
        nv = ir.Value(name=name, shape=ir.Shape(local), type=v.type, const_value=lazy)
        self.new_inits.append(nv)
        return nv

    def _slice_local(self, v: ir.Value, x: ir.Value, axis: int, rank: int, stage: int) -> ir.Value:
        shape = opinfo.shape_of(v)
        n = shape[axis] // self.t
        out = self._new_value(v, shard(axis), self._fresh(f"{v.name}__slice{rank}"))
        node = ir.Node("", "Slice", [x, self.int_const([rank * n], "start"), self.int_const([(rank + 1) * n], "end"),
                                     self.int_const([axis], "axes")], outputs=[out],
                       name=self._fresh(f"/{self.label}/slice"))
        prod = x.producer()
        dev = prod.metadata_props.get(DEVICE_KEY) if prod is not None else None
        node.metadata_props[DEVICE_KEY] = self.groups[max(stage, 0)][rank] if dev in (None, COMM_DEVICE) else dev
        node.metadata_props[REASON_KEY] = f"{self.label}: this rank's slice"
        self._emit_rank(rank, node)
        return out

    # ---- nodes -------------------------------------------------------------------------------
    def run(self) -> Analysis:
        self.advance(len(self.nodes))
        return self.finish()

    def advance(self, stop: int) -> None:
        """Process the nodes before index `stop` that are not processed yet, in order."""
        nodes = self.nodes
        stop = min(stop, len(nodes))
        while self.pos < stop:
            node = nodes[self.pos]
            self.pos += 1
            if not is_const_producer(node):
                self.process(node)

    def finish(self) -> Analysis:
        """After the last node: the graph outputs, the rewritten graph (emit), the regions."""
        self._finish_outputs()
        if self.emit:
            self._flush()
            self._install()
        for ev in self.analysis.events:
            if ev.region is not None:
                ev.region = self._find(ev.region)
        self.analysis.regions = {}
        for nid in self.analysis.sharded_nodes:
            self.analysis.regions.setdefault(self._find(nid), set()).add(nid)
        for nid in self.seeds:
            if nid in self.analysis.sharded_nodes:
                self.analysis.seeds.setdefault(self._find(nid), set()).add(nid)
        return self.analysis

    def process(self, node: ir.Node) -> None:
        dec = None
        stage = self.stage_of.get(id(node), 0)
        entries = [self.get(v, stage) for v in node.inputs]
        # no op consumes partial sums: all-reduce them first (the end of a Megatron block)
        entries = [self.convert(v, e, REPL, stage) if e is not None and e.layout.partial else e
                   for v, e in zip(node.inputs, entries)]
        ins = [None if e is None else In(e.layout, opinfo.shape_of(v), is_const(v), v)
               for e, v in zip(entries, node.inputs)]
        if self.t > 1 and not any(True for _ in _subgraphs(node)):
            rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else (
                DOMAIN_RULES.get(node.op_type) if node.domain == DOMAIN else None)
            if rule is not None:
                try:
                    dec = rule(node, ins, self.t, self)
                except Exception:  # a rule that cannot read the node: replicate it
                    dec = None
        if dec is None:
            dec = _replicate(node, ins)
        # convert the inputs
        local = []
        for v, e, want in zip(node.inputs, entries, dec.inputs):
            if e is None or want is None:
                local.append(None)
                continue
            local.append(self.convert(v, e, want, stage))
        sharded = any(l.sharded or l.partial for l in dec.outputs) or any(
            w is not None and (w.sharded or w.partial) for w in dec.inputs)
        if sharded:
            self.analysis.sharded_nodes.add(id(node))
            for e in local:
                if e is not None and (e.layout.sharded or e.layout.partial) and e.producer >= 0:
                    self._union(id(node), e.producer)
        for v, lay in zip(node.outputs, dec.outputs):
            self.analysis.layouts[id(v)] = lay
        copies_out = [[None] * self.t for _ in node.outputs]
        if self.emit:
            for r in range(self.t):
                inputs = []
                for i, e in enumerate(local):
                    if e is None:
                        inputs.append(None)
                    elif i in dec.rewrite:
                        inputs.append(dec.rewrite[i](r))
                    elif i in dec.rank0_only and r > 0:
                        inputs.append(None)
                    else:
                        inputs.append(e.copies[r])
                while inputs and inputs[-1] is None:
                    inputs.pop()
                outs = [self._new_value(v, lay, f"{v.name}__s{stage}r{r}") if v.name else ir.Value(name="")
                        for v, lay in zip(node.outputs, dec.outputs)]
                dev = self.device_of(node, stage, r)
                meta = dict(node.metadata_props)
                meta[DEVICE_KEY] = dev
                meta[REASON_KEY] = (f"{self.label}: rank {r} of {self.t} ({', '.join(str(l) for l in dec.outputs)})"
                                    f"; {node.metadata_props.get(REASON_KEY, '')}")
                attrs = {**{k: a for k, a in node.attributes.items()}, **dec.attrs}
                if dec.plain_elsewhere and r > 0:  # the fused epilogue only adds rank 0's terms
                    copy = ir.Node("", dec.plain_elsewhere, inputs, [a for k, a in attrs.items() if k != "epilogue"],
                                   outputs=outs, name=f"{node.name}__s{stage}r{r}", metadata_props=meta)
                else:
                    copy = ir.Node(node.domain, node.op_type, inputs, list(attrs.values()), outputs=outs,
                                   name=f"{node.name}__s{stage}r{r}", version=node.version, metadata_props=meta,
                                   overload=node.overload)
                self._emit_rank(r, copy)
                for k, o in enumerate(outs):
                    copies_out[k][r] = o
        for k, (v, lay) in enumerate(zip(node.outputs, dec.outputs)):
            self.info[id(v)] = {**self.info.get(id(v), {}),
                                stage: Entry(lay, copies_out[k] if self.emit else None, stage, id(node))}

    def _finish_outputs(self) -> None:
        self.final_outputs: list[ir.Value | None] = [self.finish_output(v) for v in self.model.graph.outputs]

    def finish_output(self, v: ir.Value) -> ir.Value | None:
        """A graph output collected from the ranks: partial sums all-reduced, a shard gathered
        to the host (or to resident state). None: a graph input or constant returned as is, or
        an analysis."""
        per = self.info.get(id(v))
        if per is None:  # a graph input or constant returned as is
            return None
        stage, e = next(iter(per.items()))
        stateful = v.name in self.state_out
        if e.layout.partial:
            e = self.convert(v, e, REPL, stage)
        if e.layout.sharded:
            target = _resident() if stateful else self.host
            self._record("AllGather", v, stage, e.producer, graph_output=True)
            if not self.emit:
                return None
            if stateful:
                self._tag_resident_slices(v, e, stage)
            (out,) = self._comm("AllGather", e.copies, 1,
                                {"devices": self.groups[stage], "axis": e.layout.axis, "targets": [target]},
                                v, REPL, [self._fresh(v.name)])
            out.shape = v.shape
            return out
        return e.copies[0] if self.emit else None

    def _tag_resident_slices(self, v: ir.Value, e: Entry, stage: int) -> None:
        """A state output left in slices (`e`) that its paired input was scattered into alike (same
        axis, same chips): chip r's slice of the output is what it reads as its slice of the input
        next step, so both stay on chip r (the Scatter of a resident input and the AllGather to
        resident state are free, collectives.py). Tag each rank's pair as resident state
        (frontend/state.py) so that a Concat from one to the other is an append in place, as on one
        chip, instead of a copy of the rank's whole slice of the cache."""
        past = self.state_out.get(v.name)
        pv = next((x for x in self.model.graph.inputs if x.name == past), None) if past else None
        if pv is None:
            return
        src = self._conv.get((id(pv), (stage, e.layout)))
        if src is None:  # data parallel: scattered along the batch when first read (get)
            src = self.info.get(id(pv), {}).get(stage)
        if src is None or src.layout != e.layout or src.copies is None:
            return
        for a, b in zip(src.copies, e.copies):
            prod = a.producer()
            if prod is None or prod.domain != DOMAIN or prod.op_type != "Scatter":
                return
            a.metadata_props[STATE_KEY], b.metadata_props[STATE_KEY] = b.name, a.name
            a.metadata_props[SHARD_KEY] = b.metadata_props[SHARD_KEY] = "1"

    def _install(self) -> None:
        graph = self.model.graph
        old = list(graph)
        graph.remove(old, safe=False)
        for v in self.new_inits:
            graph.register_initializer(v)
        graph.extend(self.out_nodes)
        for i, (v, new) in enumerate(zip(list(graph.outputs), self.final_outputs)):
            if new is None:
                continue
            name = v.name
            v.name = self._fresh(name)
            new.name = name
            graph.outputs[i] = new
        _remove_dead(graph)
        for name, init in list(graph.initializers.items()):
            if not init.uses() and not init.is_graph_output() and not init.is_graph_input():
                del graph.initializers[name]


def _resident() -> str:
    from kcompiler.frontend.state import RESIDENT

    return RESIDENT


def _subgraphs(node: ir.Node):
    for a in node.attributes.values():
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            yield a


def _remove_dead(graph: ir.Graph) -> None:
    """Drop rank copies nobody reads (e.g. the replicated tail of ranks 1..t-1)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if node.domain == DOMAIN:
                continue
            if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)
                changed = True
