"""LLM serving on ATOM and ATOM+AiM fleets: static vs continuous batching vs chunked prefill vs
NPU-prefill / PIM-decode disaggregation (llama-7b, fp16, timing-mode latencies).

    python benchmarks/cluster_llm.py                  # every fleet (compiles buckets once, cached)
    python benchmarks/cluster_llm.py --only atom      # the NPU-only fleets

Each fleet has 4 packages. Two workloads, Poisson arrivals with chat-like lengths (lognormal
prompts ~256 tokens up to 768, outputs ~64 up to 256):
- "load": 2 requests/s, 400 requests — throughput, goodput under the SLOs (TTFT <= 2 s,
  TPOT <= 200 ms), TTFT and TPOT p50/p99;
- "saturation": 400 requests arriving at 50/s, far above any fleet's capacity — the served
  throughput is the fleet's capacity (tokens/s), the figure NeuPIMs (Heo et al., ASPLOS 2024)
  compares: NeuPIMs reports 2.4x over NPU-only and 1.6x over a naive NPU+PIM design that runs
  the two one after the other. Here "NPU-only" is `atom` with continuous batching, "naive" is
  `atom+aim` with continuous batching (the compiled program puts decode GEMVs on AiM, but
  prefill and decode iterations alternate), "package" runs them at the same time (role =
  "package": prefill on the ATOM, decode on the package, the KV over the package link).

Measured 2026-12-01 (2-core AMD EPYC; buckets compiled once, then cached):

    fleet                  thr (req/s)  goodput  TTFT p99  TPOT p99 capacity tok/s
    atom static                   1.69     0.18   16.898s   374.1ms          135.8
    atom continuous               1.74     1.74    0.442s    86.4ms          333.6
    atom chunked                  1.74     1.74    0.549s    83.7ms          368.4
    atom+aim continuous           1.78     1.78    0.382s     1.9ms          951.3
    atom+aim package              1.78     1.78    0.425s     2.3ms         1301.8
    package vs NPU-only: 3.90x (NeuPIMs: 2.4x); package vs naive NPU+PIM: 1.37x (NeuPIMs: 1.6x)
"""

from __future__ import annotations

import argparse

FLEETS = {
    "atom static": ("atom", 'scheduler = "static"\nmax_batch = 8\nmax_delay = "500 ms"'),
    "atom continuous": ("atom", 'scheduler = "continuous"\nmax_batch = 16'),
    "atom chunked": ("atom", 'scheduler = "chunked"\nmax_batch = 16\nchunk = 512'),
    "atom+aim continuous": ("atom+aim", 'scheduler = "continuous"\nmax_batch = 8'),
    "atom+aim package": ("atom+aim", 'scheduler = "continuous"\nmax_batch = 8\nrole = "package"'),
}

DEP = """
name = "{name}"
[slo]
ttft = "2 s"
tpot = "200 ms"
[[pool]]
model = "llama-7b"
dtype = "fp16"
target = "{target}"
replicas = 4
router = "least-loaded"
{extra}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="run the fleets whose name starts with this")
    args = ap.parse_args()
    from kcompiler import cluster
    from kcompiler.cluster import deployment, fleet, metrics
    from kcompiler.cluster.latency import Profiler

    prof = Profiler(log=print)
    wls = {"load": cluster.synthetic(2.0, 400, seed=0, prompt=("lognormal", 256, 128, 1, 768),
                                     output=("lognormal", 64, 32, 1, 256)),
           "saturation": cluster.synthetic(50.0, 400, seed=0, prompt=("lognormal", 256, 128, 1, 768),
                                           output=("lognormal", 64, 32, 1, 256))}
    rows = {}
    for name, (target, extra) in FLEETS.items():
        if args.only and not name.startswith(args.only):
            continue
        dep = deployment.loads(DEP.format(name=name, target=target, extra=extra), name)
        out = {}
        for wname, wl in wls.items():
            res = fleet.simulate(dep, wl, prof)
            out[wname] = metrics.summary(res)
        rows[name] = out
        s, z = out["load"], out["saturation"]
        print(f"{name:22s} load 2/s: {s['throughput_rps']:.2f} req/s, goodput {s['goodput_rps']:.2f} req/s, "
              f"TTFT p50/p99 {s['ttft_p50_s']:.3f}/{s['ttft_p99_s']:.3f} s, TPOT p50/p99 "
              f"{s['tpot_p50_s'] * 1e3:.1f}/{s['tpot_p99_s'] * 1e3:.1f} ms, {s['energy_per_request_j']:.1f} J/req | "
              f"saturated: {z['tokens_per_s']:.1f} tok/s, {z['throughput_rps']:.2f} req/s", flush=True)
    print()
    print(f"{'fleet':22s} {'thr (req/s)':>11s} {'goodput':>8s} {'TTFT p99':>9s} {'TPOT p99':>9s} {'capacity tok/s':>14s}")
    for name, out in rows.items():
        s, z = out["load"], out["saturation"]
        print(f"{name:22s} {s['throughput_rps']:11.2f} {s['goodput_rps']:8.2f} {s['ttft_p99_s']:8.3f}s "
              f"{s['tpot_p99_s'] * 1e3:7.1f}ms {z['tokens_per_s']:14.1f}")
    if {"atom continuous", "atom+aim continuous", "atom+aim package"} <= set(rows):
        cap = {k: rows[k]["saturation"]["tokens_per_s"] for k in rows}
        print(f"package vs NPU-only: {cap['atom+aim package'] / cap['atom continuous']:.2f}x "
              f"(NeuPIMs: 2.4x); package vs naive NPU+PIM: "
              f"{cap['atom+aim package'] / cap['atom+aim continuous']:.2f}x (NeuPIMs: 1.6x)")
    if {"atom static", "atom continuous"} <= set(rows):
        print(f"continuous vs static goodput: {rows['atom continuous']['load']['goodput_rps']:.2f} vs "
              f"{rows['atom static']['load']['goodput_rps']:.2f} req/s")


if __name__ == "__main__":
    main()
