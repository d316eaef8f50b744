"""What a fleet simulation reports: latency percentiles, throughput, goodput, utilisation,
memory and energy (a dict for --json, a rich table, a Chrome trace and plots)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from kcompiler.cluster.fleet import Result
from kcompiler.errors import KCError


def _pcts(x: np.ndarray, prefix: str, out: dict) -> None:
    if len(x):
        p = np.percentile(x, [50, 90, 99])
        out.update({f"{prefix}_mean_s": float(x.mean()), f"{prefix}_p50_s": float(p[0]),
                    f"{prefix}_p90_s": float(p[1]), f"{prefix}_p99_s": float(p[2])})
    else:
        out.update({f"{prefix}_mean_s": None, f"{prefix}_p50_s": None, f"{prefix}_p90_s": None,
                    f"{prefix}_p99_s": None})


def request_figures(res: Result, mask: np.ndarray | None = None) -> dict[str, Any]:
    arr, first, fin, out = res.arrival, res.first, res.finish, res.workload.output
    m = np.ones(len(arr), bool) if mask is None else mask
    done = m & np.isfinite(fin) & (fin >= 0)
    rejected = int((m & (fin < 0)).sum())
    unfinished = int((m & ~np.isfinite(fin)).sum())
    n_done = int(done.sum())
    start = float(arr[m].min()) if m.any() else 0.0
    end = float(fin[done].max()) if n_done else start
    span = max(end - start, 1e-12)
    ttft = first[done] - arr[done]
    e2e = fin[done] - arr[done]
    o = out[done]
    multi = o > 1  # of the completed requests, those with a TPOT (more than one token)
    tpot_all = np.zeros(n_done)  # a one-token answer has no TPOT: it meets any TPOT SLO
    tpot_all[multi] = (fin[done][multi] - first[done][multi]) / (o[multi] - 1)
    tpot = tpot_all[multi]
    r: dict[str, Any] = {"requests": int(m.sum()), "completed": n_done, "rejected": rejected,
                         "unfinished": unfinished, "makespan_s": span,
                         "throughput_rps": n_done / span, "tokens_per_s": float(o.sum()) / span}
    _pcts(ttft, "ttft", r)
    _pcts(tpot, "tpot", r)
    _pcts(e2e, "e2e", r)
    slo = res.deployment.slo
    ok = np.ones(n_done, bool)
    if "ttft" in slo:
        ok &= ttft <= slo["ttft"]
    if "e2e" in slo:
        ok &= e2e <= slo["e2e"]
    if "tpot" in slo:
        ok &= tpot_all <= slo["tpot"]
    r["slo_met"] = int(ok.sum())
    r["goodput_rps"] = int(ok.sum()) / span
    r["preemptions"] = int(res.preempted[m].sum())
    return r


def summary(res: Result) -> dict[str, Any]:
    """The JSON document of `kc cluster --json`."""
    out = request_figures(res)
    span = out["makespan_s"]
    energy = sum(r.energy_j for r in res.replicas)
    done = out["completed"]
    tokens = float(res.workload.output[np.isfinite(res.finish) & (res.finish >= 0)].sum())
    out.update(energy_j=energy, energy_per_request_j=energy / done if done else None,
               energy_per_token_j=energy / tokens if tokens else None)
    devices = {}
    memory = {}
    for r in res.replicas:
        util = r.busy_s / span if span > 0 else 0.0
        devices[r.name] = {"utilisation": util, "busy_s": r.busy_s, "iterations": r.iterations,
                           "energy_j": r.energy_j, "hardware": r.pool.hardware,
                           "chips": r.pool.devices_per_replica}
        if hasattr(r, "blocks_total"):
            memory[r.name] = {"kv_blocks": r.blocks_total, "kv_peak_blocks": r.blocks_peak,
                              "kv_peak_fraction": r.blocks_peak / r.blocks_total if r.blocks_total else 0.0}
    out["utilisation"] = {k: v["utilisation"] for k, v in devices.items()}
    out["devices"] = devices
    out["memory"] = memory
    pools = {}
    for k, p in enumerate(res.pools):
        entry = {"model": p.model, "hardware": p.hardware, "replicas": len(p.replicas),
                 "scheduler": p.spec.scheduler, "role": p.spec.role, "router": p.spec.router,
                 "max_batch": p.max_batch, "kv_blocks_per_replica": p.kv_blocks, "buckets": p.profiles,
                 "rejected": p.rejected}
        entry.update(p.extra)
        if p.spec.role != "decode":
            mask = res.pool_of == p.entry_index
            entry.update({k2: v for k2, v in request_figures(res, mask).items()
                          if k2 in ("requests", "completed", "throughput_rps", "goodput_rps", "ttft_p50_s",
                                    "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s")})
        pools[p.name] = entry
    out["pools"] = pools
    out["chips"] = {c.name: {"sharing": c.sharing, "tenants": [t.name for t in c.tenants],
                             "contended_s": c.contended_s, "switches": c.switches, "switch_s": c.switch_time}
                    for c in res.chips}
    out["slo"] = {k: v for k, v in res.deployment.slo.items()}
    out["workload"] = {"source": res.workload.source, "description": res.workload.description,
                       "requests": len(res.workload), "offered_rps": res.workload.rate}
    out["simulation"] = {"wall_s": res.wall_s, "events": res.events, "buckets_compiled": res.compiled,
                         "buckets_cached": res.cached, "compile_s": res.compile_s,
                         "latency_source": "kcompiler timing mode, one compile per bucket; linear interpolation "
                                           "between buckets (see pools.*.buckets)"}
    return _clean(out)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return x.item()
    return x


def chrome_trace(res: Result) -> dict:
    """Chrome/Perfetto trace: a process per pool, a thread per replica, a span per iteration
    (contended iterations, those run while another tenant of the chip was busy, say so)."""
    events = []
    for p in res.pools:
        events.append({"ph": "M", "pid": p.index, "name": "process_name", "args": {"name": f"{p.name} ({p.hardware})"}})
    for r in res.replicas:
        events.append({"ph": "M", "pid": r.pool.index, "tid": r.index, "name": "thread_name",
                       "args": {"name": r.name + (f" on {r.chip.name}" if r.chip is not None else "")}})
    for rep, name, start, end, args in res.trace:
        r = res.replicas[rep]
        ev = {"ph": "X", "pid": r.pool.index, "tid": rep, "name": name, "ts": start * 1e6,
              "dur": max(end - start, 0.0) * 1e6}
        if args:
            ev["args"] = args
            ev["cname"] = "terrible" if args.get("contended") else "grey"
        events.append(ev)
    meta = {"dropped_spans": res.trace_dropped}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}


def write_trace(res: Result, path) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(res), f)


def plot(res: Result, path) -> None:
    """Latency CDFs (TTFT, TPOT, end-to-end) and utilisation over time, one PNG."""
    try:  # (matplotlib is optional: `pip install -e ".[plot]"`)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KCError("--plot needs matplotlib", hint="pip install -e \".[plot]\" (or pip install matplotlib)") from None
    done = np.isfinite(res.finish) & (res.finish >= 0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    out = res.workload.output
    series = [("TTFT", res.first[done] - res.arrival[done]), ("end-to-end", res.finish[done] - res.arrival[done])]
    multi = done & (out > 1)
    if multi.any():
        series.insert(1, ("TPOT", (res.finish[multi] - res.first[multi]) / (out[multi] - 1)))
    for label, x in series:
        if len(x):
            xs = np.sort(x)
            a.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
    for k, v in res.deployment.slo.items():
        a.axvline(v, ls=":", color="grey")
        a.text(v, 0.02, f" SLO {k}", rotation=90, color="grey", fontsize=8)
    a.set_xscale("log")
    a.set_xlabel("seconds")
    a.set_ylabel("fraction of requests")
    a.set_title("latency CDF")
    a.legend()
    bins, w = res.extra.get("bins"), res.extra.get("bin_s", 1.0)
    if bins:
        nb = max((max(row) + 1 for row in bins if row), default=1)
        t = (np.arange(nb) + 0.5) * w
        by_pool: dict[str, np.ndarray] = {}
        for r, row in zip(res.replicas, bins):
            u = np.zeros(nb)
            for k, v in row.items():
                u[k] = v / w
            by_pool.setdefault(r.pool.name, np.zeros(nb))
            by_pool[r.pool.name] += u / max(sum(1 for x in res.replicas if x.pool is r.pool), 1)
        for name, u in by_pool.items():
            b.plot(t, np.minimum(u, 1.0), label=name)
        b.legend()
    b.set_ylim(0, 1.05)
    b.set_xlabel("simulated time (s)")
    b.set_ylabel("busy fraction (mean over replicas)")
    b.set_title("utilisation over time")
    fig.suptitle(f"{res.deployment.name}: {len(res.arrival):,} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
