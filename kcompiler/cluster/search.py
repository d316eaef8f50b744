"""The cheapest fleet that meets its SLOs: simulate every combination of pool settings (replicas,
devices, schedulers, batch sizes, targets) on one workload and print the frontier (in the manner
of Vidur-Search: configurations simulated, not deployed).

A fleet meets its SLOs when its p99 TTFT, p99 TPOT and p99 end-to-end latency are within the
deployment's [slo] and it refuses no request; its cost is the number of packages it uses (a
replica over N devices uses N; chips shared by pools count once)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from kcompiler.cluster import fleet, metrics
from kcompiler.cluster.deployment import SCHEDULERS, Deployment
from kcompiler.errors import KCError

VARY_KEYS = {"replicas": int, "devices": int, "max_batch": int, "chunk": int, "scheduler": str, "target": str,
             "router": str, "parallel": str, "role": str}


def parse_vary(items: list[str]) -> dict[tuple[str | None, str], list]:
    """`--vary replicas=1,2,4` (every pool) or `--vary chat.replicas=2,4` (pool `chat`)."""
    out: dict[tuple[str | None, str], list] = {}
    for item in items:
        if "=" not in item:
            raise KCError(f"--vary '{item}' is not KEY=V1,V2,...", hint="e.g. --vary replicas=1,2,4,8")
        key, _, vals = item.partition("=")
        pool, _, field = key.rpartition(".")
        if field not in VARY_KEYS:
            raise KCError(f"--vary '{key}': {field} cannot be varied", hint=f"one of {', '.join(VARY_KEYS)}")
        try:
            values = [VARY_KEYS[field](v.strip()) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise KCError(f"--vary '{item}': {field} takes {VARY_KEYS[field].__name__} values") from None
        if not values:
            raise KCError(f"--vary '{item}' lists no values")
        if field == "scheduler" and any(v not in SCHEDULERS for v in values):
            raise KCError(f"--vary '{item}': schedulers are {', '.join(SCHEDULERS)}")
        if field == "role" and any(v not in ("both", "package") for v in values):
            raise KCError(f"--vary '{item}': role varies between both and package (disaggregation inside "
                          f"each NPU+PIM package)", hint="prefill/decode pools are separate [[pool]] tables")
        if any(isinstance(v, int) and v < 1 for v in values):
            raise KCError(f"--vary '{item}': values must be positive")
        out[(pool or None, field)] = values
    return out


def variants(dep: Deployment, vary: dict) -> list[tuple[dict, Deployment]]:
    names = {p.name for p in dep.pools}
    for pool, field in vary:
        if pool is not None and pool not in names:
            raise KCError(f"--vary names pool '{pool}', which the deployment does not have",
                          hint=f"pools: {', '.join(sorted(names))}")
    keys = list(vary)
    out = []
    for combo in itertools.product(*(vary[k] for k in keys)):
        d = copy.deepcopy(dep)
        setting = {}
        for (pool, field), value in zip(keys, combo):
            setting[f"{pool + '.' if pool else ''}{field}"] = value
            for p in d.pools:
                if pool is None or p.name == pool:
                    setattr(p, field, value)
                    if field == "scheduler" and value == "chunked" and not p.chunk:
                        p.chunk = 512
                    if field == "scheduler" and value == "dynamic" and p.llm:
                        raise KCError(f"--vary scheduler=dynamic: pool '{p.name}' serves an LLM")
                    if field == "devices" and value > 1 and p.parallel == "none":
                        p.parallel = "tensor"
        out.append((setting, d))
    return out


def cost(dep: Deployment) -> int:
    used = 0
    for p in dep.pools:
        if p.chips is None:
            used += p.replicas * (p.devices or 1)
    used += sum(g.count for g in dep.chips.values())
    return used


@dataclass
class Row:
    setting: dict
    packages: int
    summary: dict
    meets: bool
    error: str | None = None


def meets_slo(s: dict, slo: dict) -> bool:
    if s["rejected"] or s["unfinished"] or not s["completed"]:
        return False
    for k in ("ttft", "tpot", "e2e"):
        if k in slo and (s.get(f"{k}_p99_s") is None or s[f"{k}_p99_s"] > slo[k]):
            return False
    return True


def search(dep: Deployment, wl, vary: dict, profiler, log: Callable[[str], None] | None = None) -> list[Row]:
    log = log or (lambda m: None)
    rows = []
    for setting, d in variants(dep, vary):
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        try:
            res = fleet.simulate(d, wl, profiler)
        except KCError as exc:
            rows.append(Row(setting, cost(d), {}, False, str(exc).splitlines()[0]))
            log(f"{label}: {str(exc).splitlines()[0]}")
            continue
        s = metrics.summary(res)
        ok = meets_slo(s, d.slo)
        rows.append(Row(setting, cost(d), s, ok))
        log(f"{label}: {cost(d)} packages, p99 TTFT {s['ttft_p99_s']:.3f} s, goodput {s['goodput_rps']:.2f} "
            f"req/s{' (meets the SLOs)' if ok else ''}")
    return rows


def frontier(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both packages (fewer) and goodput (more)."""
    ok = [r for r in rows if r.summary]
    front = []
    for r in ok:
        if not any((o.packages <= r.packages and o.summary["goodput_rps"] >= r.summary["goodput_rps"]) and
                   (o.packages < r.packages or o.summary["goodput_rps"] > r.summary["goodput_rps"]) for o in ok):
            front.append(r)
    return sorted(front, key=lambda r: (r.packages, -r.summary["goodput_rps"]))


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    keys = ("throughput_rps", "goodput_rps", "ttft_p99_s", "tpot_p99_s", "e2e_p99_s", "energy_per_request_j")
    return [{"setting": r.setting, "packages": r.packages, "meets_slo": r.meets, "error": r.error,
             **{k: r.summary.get(k) for k in keys}} for r in rows]
