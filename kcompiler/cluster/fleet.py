"""Build a fleet from a deployment, run a workload through it, and collect what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kcompiler import targets
from kcompiler.cluster import engine
from kcompiler.cluster.deployment import Deployment, PoolSpec
from kcompiler.cluster.latency import (Hardware, Profiler, batch_profile, llm_profile, llm_sizes, memory_bytes,
                                       system_for, weight_bytes)
from kcompiler.cluster.workload import Workload
from kcompiler.errors import KCError
from kcompiler.targets import interconnect


class Pool:
    def __init__(self, spec: PoolSpec, index: int):
        self.spec = spec
        self.index = index
        self.name = spec.name
        self.model = spec.model
        self.max_batch = spec.max_batch
        self.max_delay = spec.max_delay
        self.max_tokens = spec.max_tokens
        self.chunk = spec.chunk
        self.replicas: list[engine.Replica] = []
        self.router: engine.Router | None = None
        self.completed = 0
        self.rejected = 0
        self.profiles: list[dict] = []
        self.hardware: str = ""
        self.kv_blocks = 0
        self.devices_per_replica = 1
        self.entry_index = -1  # which of the pools that receive requests (pool_of), -1: a decode pool
        self.extra: dict[str, Any] = {}  # kind-specific figures for the summary


@dataclass
class Result:
    deployment: Deployment
    workload: Workload
    arrival: np.ndarray
    first: np.ndarray
    finish: np.ndarray
    placed: np.ndarray
    preempted: np.ndarray
    pool_of: np.ndarray
    pools: list[Pool]
    replicas: list[engine.Replica]
    chips: list[engine.Chip]
    trace: list[tuple]
    trace_dropped: int
    wall_s: float
    events: int
    compiled: int
    cached: int
    compile_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def simulate(dep: Deployment, wl: Workload, profiler: Profiler | None = None, trace_limit: int = 0,
             log: Callable[[str], None] | None = None) -> Result:
    """Run `wl` through `dep`: compile (or find cached) every latency bucket the fleet needs, then
    simulate every request. Raises KCError for a fleet that cannot serve the workload at all (a
    model that does not fit its hardware)."""
    log = log or (lambda m: None)
    prof = profiler or Profiler(log=log)
    n = len(wl)
    sim = engine.Sim(n, wl.arrival.tolist(), wl.prompt.tolist(), wl.output.tolist(), trace_limit)
    pools = [Pool(p, i) for i, p in enumerate(dep.pools)]
    by_name = {p.name: p for p in pools}
    entries = [p for p in pools if p.spec.role != "decode"]
    if len(entries) > 1:
        w = np.array([p.spec.share for p in entries], float)
        pool_of = np.random.default_rng(dep.seed).choice(len(entries), n, p=w / w.sum())
    else:
        pool_of = np.zeros(n, np.int64)
    sim.model_of = pool_of.tolist()
    # the longest prompt and context each pool can meet decide its buckets
    need: dict[str, tuple[int, int]] = {}
    for k, p in enumerate(entries):
        sel = pool_of == k
        mp = int(wl.prompt[sel].max()) if sel.any() else 1
        mc = int((wl.prompt[sel] + wl.output[sel]).max()) if sel.any() else 1
        need[p.name] = (max(mp, 1), max(mc, 2))
        if p.spec.decode_pool:
            a, b = need.get(p.spec.decode_pool, (1, 2))
            need[p.spec.decode_pool] = (max(a, mp), max(b, mc))
    chips: dict[str, list[engine.Chip]] = {}
    for gname, g in dep.chips.items():
        users = [p for p in dep.pools if p.chips == gname]
        sharing = "partition" if any(p.partition for p in users) else "temporal"
        if sharing == "partition" and not all(p.partition for p in users):
            raise KCError(f"{dep.source}: chips.{gname} is shared by partitions, but pool(s) "
                          f"{[p.name for p in users if not p.partition]} name no partition",
                          hint='give every pool on a partitioned chip partition = "i/n"')
        switch = {}
        if sharing == "temporal" and len(users) > 1:
            switch = _switch_costs(users, g.target, prof, need)
        chips[gname] = [engine.Chip(f"{gname}/{i}", sharing, switch) for i in range(g.count)]
    replicas: list[engine.Replica] = []
    for pool in pools:
        _build_pool(sim, pool, prof, need.get(pool.name, (1, 2)), chips, replicas, by_name, log)
    for pool in pools:
        pool.router = engine.Router(pool.spec.router, pool.replicas)
    # disaggregation: hand-offs carry the KV over a link
    for pool in pools:
        if pool.spec.role == "prefill":
            _wire_handoff(sim, pool, by_name[pool.spec.decode_pool])
    entry_pools = [p for p in pools if p.spec.role != "decode"]
    for k, p in enumerate(entry_pools):
        p.entry_index = k
    log(f"simulating {n:,} requests on {len(replicas)} replica(s)")
    sim.track_busy(len(replicas), float(wl.arrival[-1]) * 1.2 + 1e-3 if n else 1.0)
    t0 = time.perf_counter()
    engine.route_all(sim, entry_pools, n)
    sim.run()
    wall = time.perf_counter() - t0
    all_chips = [c for cs in chips.values() for c in cs]
    return Result(dep, wl, wl.arrival, np.asarray(sim.first), np.asarray(sim.finish), np.asarray(sim.placed),
                  np.asarray(sim.preempted), pool_of, pools, replicas, all_chips, sim.trace, sim.trace_dropped, wall,
                  sim.events, prof.compiled, prof.cached, prof.compile_s,
                  {"bins": sim.bins, "bin_s": sim.bin_s})


def _switch_costs(users: list[PoolSpec], target: str, prof: Profiler, need) -> dict[str, float]:
    """Temporal sharing: a switch to a model reloads its weights over the host link when the
    tenants' weights do not all stay in the chip's DRAM (else nothing is reloaded)."""
    system = targets.resolve(target)
    cap = memory_bytes(system.accelerators)
    wb = {p.model: weight_bytes(p.model, p.options) for p in users}
    if sum(wb.values()) <= cap:
        return {m: 0.0 for m in wb}
    link = system.host.chip.spec.pcie_link()
    return {m: b / link.bandwidth + link.latency for m, b in wb.items()}


def _hw(spec: PoolSpec, bandwidth: float | None = None) -> Hardware:
    """The hardware a pool's replica runs on."""
    return Hardware(spec.target, spec.devices, spec.parallel, spec.partition, bandwidth)


def _build_pool(sim, pool: Pool, prof: Profiler, need, chips, replicas, by_name, log) -> None:
    spec = pool.spec
    max_prompt, max_ctx = need
    group = chips.get(spec.chips) if spec.chips else None
    partitioned = spec.partition is not None
    hw = _hw(spec, bandwidth=1.0 if partitioned else None)
    hw_c = _hw(spec) if partitioned else None
    pool.hardware = hw_c.label() if hw_c else hw.label()
    pool.devices_per_replica = spec.devices or 1

    def chip_for(i):
        return group[i] if group else None

    def add(rep):
        replicas.append(rep)
        pool.replicas.append(rep)
        if rep.chip is not None:
            rep.chip.tenants.append(rep)

    if spec.scheduler == "dynamic":
        bp = batch_profile(prof, spec.model, hw, spec.max_batch, spec.options)
        pool.profiles.append(bp.describe())
        table = bp.table()
        ctable = None
        if hw_c:
            bpc = batch_profile(prof, spec.model, hw_c, spec.max_batch, spec.options)
            pool.profiles.append({**bpc.describe(), "use": "while another tenant of the chip is busy"})
            ctable = bpc.table()
        if bp.max_batch < spec.max_batch:
            pool.max_batch = bp.max_batch
        for i in range(spec.replicas):
            add(engine.DynamicBatcher(sim, pool, len(replicas), i, chip_for(i), table, ctable))
        return
    mb = spec.max_batch
    if spec.role == "package":
        _build_package(sim, pool, prof, need, replicas, log)
        return
    # memory first: a model that leaves no room for a KV cache is refused before anything compiles
    blocks = kv_blocks(spec, system_for(hw_c or hw), llm_sizes(spec.model, spec.options))
    lp = llm_profile(prof, spec.model, hw, mb, max_ctx, max_prompt, spec.chunk, spec.options,
                     decode=spec.role != "prefill", prefill=spec.role != "decode")
    pool.profiles.append(lp.describe())
    table = engine.KVTable(lp, mb, max_ctx)
    ctab = None
    if hw_c:
        lpc = llm_profile(prof, spec.model, hw_c, mb, max_ctx, max_prompt, spec.chunk, spec.options,
                          decode=spec.role != "prefill", prefill=spec.role != "decode")
        pool.profiles.append({**lpc.describe(), "use": "while another tenant of the chip is busy"})
        ctab = engine.KVTable(lpc, mb, max_ctx)
    pool.kv_blocks = blocks
    for i in range(spec.replicas):
        if spec.scheduler == "static":
            add(engine.StaticReplica(sim, pool, len(replicas), i, chip_for(i), table, blocks))
        else:
            add(engine.LLMReplica(sim, pool, len(replicas), i, chip_for(i), table, blocks, ctab))


def kv_blocks(spec: PoolSpec, system, sizes: tuple[int, int], devices=None) -> int:
    """KV blocks a replica holds: its DRAM (the chips it spans, at the pool's memory utilisation)
    less its weights (one copy on each kind of device that runs the model's GEMMs: NPU and PIM
    both hold them in an NPU+PIM system; tensor parallelism splits one copy)."""
    kv_per_token, weight_bytes = sizes
    devs = devices if devices is not None else system.accelerators
    cap = memory_bytes(devs) * spec.memory_utilization
    kinds = {d.chip.kind for d in devs}
    copies = len(kinds & {"npu", "pim"}) or 1
    free = cap - copies * weight_bytes
    blocks = int(free // (kv_per_token * engine.BLOCK))
    if blocks < 1:
        names = "+".join(d.chip.name for d in devs)
        raise KCError(f"pool '{spec.name}': {spec.model} ({weight_bytes / 1e9:.1f} GB of weights x {copies}) "
                      f"leaves no room for a KV cache in {names}'s {cap / 2**30:.1f} GiB "
                      f"(at memory_utilization {spec.memory_utilization})",
                      hint="use more devices (devices = N, tensor parallel), a smaller dtype, or a larger chip")
    return blocks


def _build_package(sim, pool: Pool, prof: Profiler, need, replicas, log) -> None:
    """NeuPIMs-style: in each NPU+PIM package, prefill on the NPU and decode on the package
    (placement puts decode's GEMVs on PIM) run at the same time; the KV goes over the package's
    NPU-PIM link. The two share the NPU: a decode step keeps it busy for its NPU fraction f
    (measured from the compiled decode program), so while both run each is charged 1 + f."""
    spec = pool.spec
    max_prompt, max_ctx = need
    system = targets.resolve(spec.target)
    npus = [d for d in system.accelerators if d.chip.kind == "npu"]
    pims = [d for d in system.accelerators if d.chip.kind == "pim"]
    if not npus or not pims or spec.scheduler != "continuous":
        raise KCError(f"pool '{spec.name}': role \"package\" runs prefill on the NPU and decode on PIM of one "
                      f"package with continuous batching; '{spec.target}' with scheduler '{spec.scheduler}' cannot",
                      hint="use an NPU+PIM system such as atom+aim and scheduler = \"continuous\"")
    npu_target = spec.prefill_target or npus[0].chip.name
    hw_pre = Hardware(npu_target)
    hw_dec = Hardware(spec.target)
    sizes = llm_sizes(spec.model, spec.options)
    pre_blocks = kv_blocks(spec, system, sizes, devices=npus)
    dec_blocks = kv_blocks(spec, system, sizes, devices=pims)
    lp_pre = llm_profile(prof, spec.model, hw_pre, spec.max_batch, max_ctx, max_prompt, 0, spec.options, decode=False)
    lp_dec = llm_profile(prof, spec.model, hw_dec, spec.max_batch, max_ctx, max_prompt, 0, spec.options, prefill=False)
    pool.profiles += [{**lp_pre.describe(), "use": "prefill"}, {**lp_dec.describe(), "use": "decode"}]
    f = lp_dec.busy_fraction.get(npus[0].name, 0.0)
    pool.kv_blocks = dec_blocks
    link = system.link(npus[0].name, pims[0].name)
    t_pre, t_dec = engine.KVTable(lp_pre, spec.max_batch, max_ctx), engine.KVTable(lp_dec, spec.max_batch, max_ctx)
    pool.hardware = f"{spec.target} (prefill on {npu_target}, decode on {spec.target})"
    pool.extra = {"npu_fraction_of_decode": f, "link_GBps": link.bandwidth / 1e9}
    for i in range(spec.replicas):
        chip = engine.Chip(f"{pool.name}/{i}", "package")
        pre = engine.LLMReplica(sim, pool, len(replicas), i, chip, t_pre, pre_blocks)
        pre.name = f"{pool.name}/{i}.prefill"
        replicas.append(pre)
        dec = engine.LLMReplica(sim, pool, len(replicas), i, chip, t_dec, dec_blocks)
        dec.name = f"{pool.name}/{i}.decode"
        replicas.append(dec)
        chip.tenants += [pre, dec]
        pre.share_factor = dec.share_factor = f
        pool.replicas.append(pre)
        pre.sibling = dec
        kvb = lp_pre.kv_bytes_per_token

        def handoff(rid, dec=dec, kvb=kvb):
            dt = sim.prompt[rid] * kvb / link.bandwidth + link.latency
            sim.at(sim.now + dt, dec.receive, rid)
        pre.handoff = handoff


def _wire_handoff(sim, pool: Pool, dpool: Pool) -> None:
    """Prefill pool -> decode pool across servers: the KV goes over the pool's interconnect."""
    link = interconnect.presets().get(pool.spec.interconnect)
    if link is None:
        raise KCError(f"pool '{pool.name}': interconnect '{pool.spec.interconnect}' is unknown",
                      hint=f"one of {', '.join(interconnect.presets())}")
    bw, lat = link.bandwidth, link.latency
    lp_desc = pool.profiles[0]
    kvb = lp_desc["kv_bytes_per_token"]
    router = dpool.router

    def handoff(rid):
        dt = sim.prompt[rid] * kvb / bw + lat
        sim.at(sim.now + dt, lambda r: router.pick().receive(r), rid)
    for r in pool.replicas:
        r.handoff = handoff
