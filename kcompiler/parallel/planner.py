"""Estimate a plan from the backends' costs, and apply it: place on a one-chip view, choose the
pipeline stages and the splits (the plan's strategies, strategies.py), and rewrite the graph
(spmd/) with per-rank copies of the nodes and the communication between them.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import KCError
from kcompiler.parallel import pipeline as stages
from kcompiler.backends.comm.collectives import is_comm
from kcompiler.parallel.info import ParallelInfo
from kcompiler.parallel.spmd.layout import is_const, is_const_producer
from kcompiler.parallel.spmd.rewriter import Rewriter
from kcompiler.parallel.strategies import Plan, get_split
from kcompiler.passes.placement import place_nodes
from kcompiler.passes.placement import device_of


def accelerators(system) -> list:
    """The system's accelerators, which a plan spreads over: at least one, all the same chip."""
    accs = list(system.accelerators)
    if not accs:
        raise KCError(f"system '{system.name}' has no accelerator to parallelise over",
                      hint="give a chip, e.g. --target atom --devices 4")
    chips = {d.chip.name for d in accs}
    if len(chips) > 1:
        raise KCError(f"parallel strategies need identical chips; system '{system.name}' has {sorted(chips)}",
                      hint="use NxCHIP (e.g. 4xatom) or --devices N")
    return accs


def node_costs(model: ir.Model, backends: dict) -> dict[int, float]:
    """Estimated seconds of every node on the device placement chose (the backends' `estimate`)."""
    out = {}
    for n in model.graph:
        b = backends.get(device_of(n))
        try:
            out[id(n)] = float(b.estimate(n).seconds) if b is not None else 0.0
        except Exception:
            out[id(n)] = 0.0
    return out

def estimate(model: ir.Model, system, backends: dict, plan: Plan, cost: dict[int, float] | None = None):
    """Latency and steady-state interval of a plan from the backends' estimates, without rewriting:
    (latency_s, interval_s, analysis details). The model must already be placed (one-chip view)."""
    accs = accelerators(system)
    cost = cost if cost is not None else node_costs(model, backends)
    group = [d.name for d in accs[:plan.t]]
    split = get_split(plan.intra)
    seeds, an = split.analyse(model, system, group, cost) if plan.t > 1 else (set(), None)
    sharded = an.sharded_nodes if an is not None else set()
    nodes = [n for n in model.graph if not is_const_producer(n)]
    per = [cost.get(id(n), 0.0) / (plan.t if id(n) in sharded else 1) for n in nodes]
    comm = sum(e.seconds for e in an.events) if an is not None else 0.0
    if plan.k <= 1:
        lat = sum(per) + comm
        return lat, lat, {"seeds": seeds, "analysis": an}
    # spread the communication over the nodes so that stages carry their share
    total = sum(per) or 1.0
    per = [c * (1 + comm / total) for c in per]
    a, b = accs[0].name, accs[plan.t % len(accs)].name

    def bytes_of(v):
        lay = an.layouts.get(id(v)) if an is not None else None
        return opinfo.nbytes(v) // (plan.t if lay is not None and lay.sharded else 1)

    cuts = stages.cut_bytes(nodes, is_const, bytes_of)
    link = system.link(a, b)
    sp = stages.partition_stages(nodes, per, cuts, plan.k, link.transfer_s)
    return sp.latency_s, sp.interval_s, {"seeds": seeds, "analysis": an, "stages": sp}


def apply(model: ir.Model, system, backends: dict, plan: Plan, objective: str = "latency") -> ParallelInfo:
    """Place (one-chip view), choose the stages, and rewrite the graph for the plan."""
    accs = accelerators(system)
    host = system.host.name
    if plan.devices > len(accs):
        raise KCError(f"plan {plan.label} needs {plan.devices} chips; system '{system.name}' has {len(accs)}",
                      hint="raise --devices")
    split = get_split(plan.intra)
    # placement on a one-chip view: which nodes the accelerator runs and which fall back to the host
    place_nodes(model, {host: backends[host], accs[0].name: backends[accs[0].name]})
    cost = node_costs(model, backends)
    groups = [tuple(d.name for d in accs[s * plan.t:(s + 1) * plan.t]) for s in range(plan.k)]
    info = ParallelInfo(plan=plan, objective=objective, devices=[d for g in groups for d in g])
    seeds: set[int] = set()
    if plan.t > 1:
        split.check(model, plan)
    stage_of = None
    if plan.k > 1:
        _, _, det = estimate(model, system, backends, plan, cost)
        sp = det["stages"]
        seeds = det["seeds"]
        stage_of = sp.stage_of
        groups = groups[:len(sp.stage_s)]
        info.stage_estimates_s = sp.stage_s
        info.devices = [d for g in groups for d in g]
        # constant producers follow the stage of their first consumer
    elif plan.t > 1 and split.seeded:
        seeds, _ = split.analyse(model, system, list(groups[0]), cost)
    rw = Rewriter(model, system, groups, stage_of=stage_of, intra=plan.intra, seeds=seeds, emit=True,
                  label=plan.label)
    rw.run()
    info.stages = [list(g) for g in groups]
    info.split_matmuls = len(seeds)
    for n in model.graph:
        if is_comm(n):
            info.comm[n.op_type] = info.comm.get(n.op_type, 0) + 1
    return info
