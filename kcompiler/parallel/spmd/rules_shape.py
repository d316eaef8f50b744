"""Sharding rules of the ops that keep, move or reduce axes: elementwise ops, normalisations,
reductions and views. A split passes through them along the axis it names, mapped through
transposes and reshapes, unless the op works along that axis (a Softmax over it, a Concat
along it), in which case the rule declines and the input is gathered first.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import onnx_ir as ir

from kcompiler.parallel.spmd.decision import (Decision, Rule, attr, const_ints, norm_axis, out_shape, replicate,
                                              sharded_axis)
from kcompiler.parallel.spmd.layout import REPL, local_shape, shard


def rule_elementwise(node, ins, t, rw):
    out = out_shape(node)
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
        return replicate(node, ins)
    wants = []
    for x in ins:
        if x is None:
            wants.append(None)
            continue
        a = axis - (ro - x.rank)
        wants.append(REPL if a < 0 or x.shape[a] == 1 else shard(a))
    return Decision(wants, [shard(axis)] * len(node.outputs))


def unary_keeping(bad_axes: Callable[[ir.Node, int], set[int]]) -> Rule:
    """Ops that act along some axes of input 0 and keep the others; other inputs replicated."""

    def rule(node, ins, t, rw):
        x = ins[0]
        if x is None or x.layout.partial or x.shape is None:
            return None
        if not x.layout.sharded:
            return replicate(node, ins) if all(i is None or not i.layout.sharded for i in ins[1:]) else None
        if any(i is not None and (i.layout.sharded or i.layout.partial) for i in ins[1:]):
            return None
        if x.layout.axis in bad_axes(node, x.rank):
            return None
        return Decision([shard(x.layout.axis)] + [None if i is None else REPL for i in ins[1:]],
                        [shard(x.layout.axis)] * len(node.outputs))

    return rule


def batch_only(node, rank):
    """Conv, pooling, BatchNorm: only the batch axis may be split."""
    return set(range(1, rank))


def softmax_axes(node, rank):
    """Softmax and kin: not along the axis they normalise."""
    return {norm_axis(int(attr(node, "axis", -1)), rank)}


def from_axis(node, rank):
    """LayerNormalization: normalises axes [axis, rank)."""
    return set(range(norm_axis(int(attr(node, "axis", -1)), rank), rank))


def follows_input(rule=None, *, needs_out: bool = False):
    """A rule that follows the split of its first input: without that input's shape (or the output's,
    with needs_out), or with a partial sum on it, no decision; an unsplit input replicates the op;
    otherwise `rule` decides, given the input as `x`."""
    if rule is None:
        return functools.partial(follows_input, needs_out=needs_out)

    @functools.wraps(rule)
    def wrapped(node, ins, t, rw):
        x = ins[0]
        if x is None or x.shape is None or x.layout.partial or (needs_out and out_shape(node) is None):
            return None
        if not x.layout.sharded:
            return replicate(node, ins)
        return rule(node, ins, t, rw, x)

    return wrapped


@follows_input
def rule_reduce(node, ins, t, rw, x):
    axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None:
        axes = attr(node, "axes", None)
    if axes is None or len(axes) == 0:
        return None
    axes = {norm_axis(int(a), x.rank) for a in axes}
    a = x.layout.axis
    if a in axes:
        return None
    out_axis = a if int(attr(node, "keepdims", 1)) else a - sum(1 for r in axes if r < a)
    return Decision([shard(a)] + [None if i is None else REPL for i in ins[1:]], [shard(out_axis)])


@follows_input
def rule_transpose(node, ins, t, rw, x):
    perm = list(attr(node, "perm", list(range(x.rank))[::-1]))
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


@follows_input(needs_out=True)
def rule_view(node, ins, t, rw, x):
    """Reshape / Flatten / Squeeze / Unsqueeze: follow the split through the row-major view."""
    out = out_shape(node)
    b = map_axis_through_reshape(x.shape, out, x.layout.axis, t)
    if b is None:
        return None
    d = Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [shard(b)])
    if node.op_type == "Reshape":
        local = local_shape(out, shard(b), t)
        d.rewrite[1] = lambda r, local=local: rw.int_const(local, "shape")
    return d


@follows_input(needs_out=True)
def rule_expand(node, ins, t, rw, x):
    out = out_shape(node)
    oa = x.layout.axis + len(out) - x.rank
    d = Decision([x.layout, REPL], [shard(oa)])
    local = local_shape(out, shard(oa), t)
    d.rewrite[1] = lambda r, local=local: rw.int_const(local, "shape")
    return d


@follows_input
def rule_slice(node, ins, t, rw, x):
    starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
    if starts is None or ends is None:
        return None
    axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None \
        else list(range(len(starts)))
    steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(starts)
    if axes is None or steps is None:
        return None
    a = x.layout.axis
    for ax, s, e, st in zip(axes, starts, ends, steps):
        if norm_axis(ax, x.rank) == a and not (st == 1 and (s == 0 or s <= -x.shape[a]) and e >= x.shape[a]):
            return None
    return Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [x.layout])


@follows_input
def rule_split(node, ins, t, rw, x):
    if norm_axis(int(attr(node, "axis", 0)), x.rank) == x.layout.axis:
        return None
    return Decision([x.layout] + [None if i is None else REPL for i in ins[1:]], [x.layout] * len(node.outputs))


def rule_concat(node, ins, t, rw):
    out = out_shape(node)
    if out is None or any(x is None or x.shape is None or x.layout.partial for x in ins):
        return None
    a, _ = sharded_axis(ins)
    if a is None:
        return replicate(node, ins)
    if any(x.layout.sharded and x.layout.axis != a for x in ins):
        return None
    if norm_axis(int(attr(node, "axis", 0)), len(out)) == a:
        return None
    return Decision([shard(a)] * len(ins), [shard(a)])


def rule_gather(node, ins, t, rw):
    data, idx = ins[0], ins[1]
    if data is None or idx is None or data.shape is None or idx.shape is None:
        return None
    if data.layout.partial or idx.layout.partial:
        return None
    axis = norm_axis(int(attr(node, "axis", 0)), data.rank)
    if idx.layout.sharded and not data.layout.sharded:
        return Decision([REPL, idx.layout], [shard(axis + idx.layout.axis)])
    if data.layout.sharded and not idx.layout.sharded:
        a = data.layout.axis
        if a == axis:
            return None
        return Decision([data.layout, REPL], [shard(a if a < axis else a + idx.rank - 1)])
    if not data.layout.sharded and not idx.layout.sharded:
        return replicate(node, ins)
    return None


#: Conv, pooling and BatchNorm: only the batch axis may be split
rule_batch_only = unary_keeping(batch_only)
