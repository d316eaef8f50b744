"""Automatic parallelisation of one model over several identical chips.

A plan is (intra, t, k): ``k`` pipeline stages, each run by a group of ``t`` chips that
split its work ``intra`` ("none", "data" or "tensor"). The fixed strategies are
``data`` = (data, N, 1), ``tensor`` = (tensor, N, 1), ``pipeline`` = (none, 1, N); ``auto``
(search.py) weighs every factorisation, including tensor within a group and pipeline across
groups (Alpa's intra-/inter-operator split), and keeps the best for the objective.

Flow (compiler.compile): placement decides host vs accelerator on a one-chip view of the
system; ``apply`` then rewrites the graph (spmd.py) with per-rank copies of the nodes, each
tagged with its chip, and communication nodes (collectives.py) that the runtime executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import KCError

STRATEGIES = ("none", "data", "tensor", "pipeline", "auto")
OBJECTIVES = ("latency", "throughput")
#: micro-batches assumed when a report states the time for a stream of inputs
MICRO_BATCHES = 8


@dataclass(frozen=True)
class Plan:
    intra: str = "none"  # how a stage's group splits its work: none | data | tensor
    t: int = 1  # chips per stage
    k: int = 1  # pipeline stages

    @property
    def devices(self) -> int:
        return self.t * self.k

    @property
    def label(self) -> str:
        parts = []
        if self.t > 1 or (self.intra != "none" and self.k == 1):
            parts.append(f"{self.intra}x{self.t}")
        if self.k > 1:
            parts.append(f"pipeline x{self.k}")
        return " + ".join(parts) or "none (1 chip)"

    @classmethod
    def fixed(cls, strategy: str, n: int) -> "Plan":
        if strategy == "none":
            return cls("none", 1, 1)
        if strategy in ("data", "tensor"):
            return cls(strategy, n, 1)
        if strategy == "pipeline":
            return cls("none", 1, n)
        raise KCError(f"unknown parallel strategy '{strategy}'", hint=f"choose one of {list(STRATEGIES)}")


@dataclass
class ParallelInfo:
    """What the strategy did (kept on the CompiledModel as ``.parallel``; summarised in reports)."""

    plan: Plan
    objective: str = "latency"
    devices: list[str] = field(default_factory=list)
    stages: list[list[str]] = field(default_factory=list)  # device group of every stage
    stage_estimates_s: list[float] = field(default_factory=list)
    comm: dict[str, int] = field(default_factory=dict)  # communication op -> count
    split_matmuls: int = 0
    candidates: list[dict[str, Any]] = field(default_factory=list)  # filled by auto
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.plan.label, "intra": self.plan.intra, "tensor_or_data_degree": self.plan.t,
                "pipeline_stages": self.plan.k, "objective": self.objective, "devices": self.devices,
                "stages": self.stages, "comm_ops": self.comm, "split_matmuls": self.split_matmuls,
                "candidates": self.candidates, "notes": self.notes}

    def annotate(self, report, system) -> None:
        """Steady-state time between inputs: the busiest device or link (inputs stream through
        the stages / ranks; transfers overlap compute on the chips' DMA engines)."""
        busy = {f"device {d}": info["busy_s"] for d, info in report.devices.items()}
        links: dict[tuple[str, str], float] = {}
        for tr in report.transfers:
            for key in system.route(tr.src, tr.dst):
                links[key] = links.get(key, 0.0) + (tr.end_s - tr.start_s)
        busy.update({f"link {a}->{b}": s for (a, b), s in links.items()})
        bottleneck = max(busy, key=busy.get) if busy else ""
        interval = min(busy.get(bottleneck, report.latency_s), report.latency_s) or report.latency_s
        if hasattr(report, "interval_s"):
            report.interval_s = interval
        info = self.summary()
        info.update(interval_s=interval, bottleneck=bottleneck, micro_batches=MICRO_BATCHES,
                    makespan_s=report.latency_s + (MICRO_BATCHES - 1) * interval,
                    interconnect=system.interconnect.describe() if system.interconnect is not None else "")
        if hasattr(report, "parallel"):
            report.parallel = info
        note = (f"parallel: {self.plan.label} on {len(self.devices)} chip(s); one input {report.latency_s * 1e3:.4f} ms, "
                f"then one every {interval * 1e3:.4f} ms in steady state (bottleneck: {bottleneck})")
        if note not in report.notes:
            report.notes.append(note)


def accelerators(system) -> list:
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
    from kcompiler.passes.placement import device_of

    out = {}
    for n in model.graph:
        b = backends.get(device_of(n))
        try:
            out[id(n)] = float(b.estimate(n).seconds) if b is not None else 0.0
        except Exception:
            out[id(n)] = 0.0
    return out


def tensor_seeds(model: ir.Model, host: str) -> set[int]:
    """MatMul / Gemm nodes on an accelerator with a constant 2-D weight: candidates for a column split."""
    from kcompiler.parallel.spmd import is_const
    from kcompiler.passes.placement import device_of

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
    from kcompiler.parallel.spmd import Rewriter

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


def estimate(model: ir.Model, system, backends: dict, plan: Plan, cost: dict[int, float] | None = None):
    """Latency and steady-state interval of a plan from the backends' estimates, without rewriting:
    (latency_s, interval_s, analysis details). The model must already be placed (one-chip view)."""
    from kcompiler.parallel import pipeline as pp
    from kcompiler.parallel.spmd import Rewriter, is_const, is_const_producer

    accs = accelerators(system)
    host = system.host.name
    cost = cost if cost is not None else node_costs(model, backends)
    group = [d.name for d in accs[:plan.t]]
    seeds = set()
    an = None
    if plan.intra == "tensor" and plan.t > 1:
        seeds, an = select_tensor_regions(model, system, group, tensor_seeds(model, host), cost)
    elif plan.intra == "data" and plan.t > 1:
        an = Rewriter(model, system, [tuple(group)], intra="data", emit=False).run()
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

    cuts = pp.cut_bytes(nodes, is_const, bytes_of)
    link = system.link(a, b)
    sp = pp.partition_stages(nodes, per, cuts, plan.k, link.transfer_s)
    return sp.latency_s, sp.interval_s, {"seeds": seeds, "analysis": an, "stages": sp}


def apply(model: ir.Model, system, backends: dict, plan: Plan, objective: str = "latency") -> ParallelInfo:
    """Place (one-chip view), choose the stages, and rewrite the graph for the plan."""
    from kcompiler.parallel.spmd import Rewriter
    from kcompiler.passes.placement import place_nodes

    accs = accelerators(system)
    host = system.host.name
    if plan.devices > len(accs):
        raise KCError(f"plan {plan.label} needs {plan.devices} chips; system '{system.name}' has {len(accs)}",
                      hint="raise --devices")
    if plan.intra not in ("none", "data", "tensor"):
        raise KCError(f"unknown intra-stage split '{plan.intra}'")
    # placement on a one-chip view: which nodes the accelerator runs and which fall back to the host
    place_nodes(model, {host: backends[host], accs[0].name: backends[accs[0].name]})
    cost = node_costs(model, backends)
    groups = [tuple(d.name for d in accs[s * plan.t:(s + 1) * plan.t]) for s in range(plan.k)]
    info = ParallelInfo(plan=plan, objective=objective, devices=[d for g in groups for d in g])
    seeds: set[int] = set()
    if plan.intra == "data" and plan.t > 1:
        shardable = [v.name for v in model.graph.inputs if v.shape is not None and len(v.shape) > 0
                     and isinstance(v.shape[0], int) and v.shape[0] % plan.t == 0]
        if not shardable:
            raise KCError(f"data parallelism over {plan.t} chips needs an input whose first (batch) dimension is "
                          f"a multiple of {plan.t}; inputs are "
                          f"{[(v.name, tuple(v.shape) if v.shape is not None else None) for v in model.graph.inputs]}",
                          hint=f"compile with a batch of {plan.t} or a multiple (e.g. --batch {plan.t} or --shape)")
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
    elif plan.intra == "tensor" and plan.t > 1:
        seeds, _ = select_tensor_regions(model, system, list(groups[0]), tensor_seeds(model, host), cost)
    rw = Rewriter(model, system, groups, stage_of=stage_of, intra=plan.intra, seeds=seeds, emit=True,
                  label=plan.label)
    rw.run()
    info.stages = [list(g) for g in groups]
    info.split_matmuls = len(seeds)
    from kcompiler.backends.comm.collectives import is_comm

    for n in model.graph:
        if is_comm(n):
            info.comm[n.op_type] = info.comm.get(n.op_type, 0) + 1
    return info
