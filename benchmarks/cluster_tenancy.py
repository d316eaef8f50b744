"""Two models sharing a Warboy (one per PE, virtual NPUs) against each on a Warboy of its own.

    python benchmarks/cluster_tenancy.py

squeezenet and bert-tiny (timing mode, dynamic batching up to 4, 2 ms queue delay), requests
split evenly, Poisson arrivals at several rates (20,000 requests each). On the shared chip a
tenant's batch runs at the full DRAM bandwidth while the other PE is idle and at half of it while
the other is busy (compiled both ways: warboy[i/2@1] and warboy[i/2]); the trace marks those
spans. Prints throughput, p99 end-to-end latency per model and the seconds run contended.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "examples" / "cluster"


def main() -> None:
    from kcompiler import cluster
    from kcompiler.cluster import fleet, metrics
    from kcompiler.cluster.latency import Profiler

    prof = Profiler()
    shared = cluster.load_deployment(ROOT / "tenants-warboy.toml")
    own = cluster.load_deployment(ROOT / "tenants-own.toml")
    print(f"{'rate':>6s} {'fleet':>22s} {'chips':>5s} {'thr req/s':>9s} {'squeezenet p99':>14s} "
          f"{'bert-tiny p99':>13s} {'contended s':>11s} {'contended share':>15s}")
    for rate in (600, 1500, 2500, 3500):
        wl = cluster.synthetic(float(rate), 20_000, seed=0)
        for name, dep in (("shared warboy (PE each)", shared), ("a warboy each", own)):
            res = fleet.simulate(dep, wl, prof)
            s = metrics.summary(res)
            p = list(s["pools"].values())
            cont = sum(c["contended_s"] for c in s["chips"].values())
            busy = sum(r.busy_s for r in res.replicas)
            chips = len(s["chips"]) or len(res.replicas)
            print(f"{rate:6d} {name:>22s} {chips:5d} {s['throughput_rps']:9.1f} {p[0]['e2e_p99_s'] * 1e3:12.2f}ms "
                  f"{p[1]['e2e_p99_s'] * 1e3:11.2f}ms {cont:11.3f} {cont / busy if busy else 0:15.1%}")


if __name__ == "__main__":
    main()
