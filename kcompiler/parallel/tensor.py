"""Tensor parallelism in the manner of Megatron-LM: a group's chips each hold a slice of the
weights of chosen MatMuls (split by columns, then by rows where the slices meet a reduction)
and all-reduce the partial sums.

Which MatMuls to split is chosen here (``select_tensor_regions``), by weighing the time a split
saves (the backends' estimates) against the communication it costs; the rewriter
(spmd/rewriter.py) then carries the splits through the graph.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from kcompiler.parallel.spmd.layout import is_const
from kcompiler.parallel.spmd.rewriter import Rewriter
from kcompiler.parallel.strategies import Plan, Strategy, register_strategy
from kcompiler.passes.placement import device_of


def tensor_seeds(model: ir.Model, host: str) -> set[int]:
    """MatMul / Gemm nodes on an accelerator with a constant 2-D weight: candidates for a column split."""
    seeds = set()
    for n in model.graph:
        if device_of(n) == host or not ((n.domain in ("", "ai.onnx") and n.op_type in ("MatMul", "Gemm")) or (
                n.domain == "kcompiler" and n.op_type in ("FusedMatMul", "FusedGemm"))):
            continue
        if len(n.inputs) > 1 and n.inputs[1] is not None and is_const(n.inputs[1]) and n.inputs[1].shape is not None \
                and len(n.inputs[1].shape) == 2:
            seeds.add(id(n))
    return seeds


def select_tensor_regions(model, system, group, seeds: set[int], cost: dict[int, float]):
    """Choose which column splits to make, greedily in topological order.

    Seeds reading the same activation (Q/K/V, gate/up) are tried together. A Megatron block
    (a region entered by column-split MatMuls and left only through row-split MatMuls'
    all-reduces) is kept wherever it matches; a region that must be all-gathered to leave
    is kept only when the time it saves (the backends' estimates) exceeds its communication.

    One walk over the graph (``base``) carries the seeds accepted so far. A try forks it just
    before the try's first seed (the walk so far is the same with or without them) and goes on
    only until nothing later reads a value of the tried seeds' regions: from there no node can
    join those regions nor add to their communication, so the check reads what a whole walk
    with the tried seeds would have given. Accepting a try only adds its seeds to ``base``,
    which has not reached them yet; ``base``, walked to the end, is the analysis of the seeds
    finally accepted."""
    t = len(group)
    base = Rewriter(model, system, [tuple(group)], intra="tensor", seeds=set(), emit=False)
    order = {id(n): i for i, n in enumerate(base.nodes)}
    by_input: dict[int, list[int]] = {}
    nodes = {id(n): n for n in base.nodes}
    for sid in sorted(seeds, key=lambda x: order[x]):
        by_input.setdefault(id(nodes[sid].inputs[0]), []).append(sid)
    for members in sorted(by_input.values(), key=lambda g: order[g[0]]):
        base.advance(order[members[0]])
        trial = base.fork(base.seeds | set(members))
        if _worth_splitting(trial, members, order[members[-1]], t, cost, order):
            base.seeds = trial.seeds
    base.advance(len(base.nodes))
    return base.seeds, base.finish()


def _worth_splitting(trial, members: list[int], last: int, t: int, cost: dict[int, float],
                     order: dict[int, int]) -> bool:
    """Whether the regions of `members` (seeds of `trial`, an analysis that has not passed the
    first of them) pay for the communication of leaving them: walk on until the regions close."""
    trial.advance(last + 1)
    sharded = trial.analysis.sharded_nodes
    while trial.pos < len(trial.nodes):
        reach = max((trial.reach(s) for s in members if s in sharded), default=-1)
        if reach < trial.pos:
            break
        trial.advance(reach + 1)
    # (no region at all, e.g. heads that do not divide among the chips, leaves nothing to weigh)
    regions = {r: set(trial.region_of(r)) for r in {trial.root(s) for s in members if s in sharded}}
    joined = set().union(*regions.values())
    # the graph outputs these regions produce: all-reducing partial sums is part of their cost
    for v in trial.model.graph.outputs:
        per = trial.info.get(id(v))
        if per is not None and next(iter(per.values())).producer in joined:
            trial.finish_output(v)
    for region in regions.values():
        events = [e for e in trial.analysis.events if e.region in region and not e.graph_output]
        if any(e.op == "AllGather" for e in events):
            # summed in graph order (a set's order would depend on the nodes' addresses)
            gain = (1 - 1 / t) * sum(cost.get(n, 0.0) for n in sorted(region & sharded, key=order.__getitem__))
            if gain <= sum(e.seconds for e in events):
                return False
    return True


@register_strategy
class TensorParallel(Strategy):
    """Every chip holds a slice of the large MatMuls' weights; partial sums are all-reduced."""

    name = "tensor"
    intra = True
    seeded = True
    auto_rank = 0

    def plan(self, n: int) -> Plan:
        return Plan("tensor", n, 1)

    def analyse(self, model: ir.Model, system, group: list[str], cost: dict[int, float]) -> tuple[set[int], Any]:
        return select_tensor_regions(model, system, group, tensor_seeds(model, system.host.name), cost)
