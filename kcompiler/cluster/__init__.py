"""K-Cloud: a data-centre serving simulator whose latencies come from compiled programs.

``kc cluster DEPLOYMENT.toml --workload WORKLOAD.toml|TRACE.csv`` (kcompiler/cluster/cli.py) or::

    from kcompiler import cluster
    res = cluster.run("examples/cluster/llama7b-atom.toml", "examples/cluster/poisson.toml")
    print(res.summary["ttft_p99_s"], res.summary["goodput_rps"])

Layers: ``workload`` (arrivals and lengths), ``deployment`` (pools, chips, SLOs), ``latency``
(timing-mode compiles per bucket, cached), ``engine`` (event loop, schedulers, routers),
``fleet`` (build and run), ``metrics`` (summary, trace, plots), ``search`` (cheapest fleet).
See docs/cluster.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kcompiler.cluster import fleet, metrics
from kcompiler.cluster.deployment import Deployment, load as load_deployment
from kcompiler.cluster.latency import Profiler
from kcompiler.cluster.spec import ClusterSpecError
from kcompiler.cluster.workload import Workload, load as load_workload, synthetic


@dataclass
class ClusterRun:
    result: Any  # fleet.Result
    summary: dict


def run(deployment: "str | Path | Deployment", workload: "str | Path | Workload", *, requests: int | None = None,
        rate: float | None = None, trace_limit: int = 0, cache: "str | Path | None" = "default",
        log: Callable[[str], None] | None = None) -> ClusterRun:
    """Simulate `workload` on `deployment`; both may be files or loaded objects."""
    dep = deployment if isinstance(deployment, Deployment) else load_deployment(deployment)
    wl = workload if isinstance(workload, Workload) else load_workload(workload, requests=requests, rate=rate)
    res = fleet.simulate(dep, wl, Profiler(cache, log=log), trace_limit=trace_limit, log=log)
    return ClusterRun(res, metrics.summary(res))


__all__ = ["run", "ClusterRun", "Deployment", "Workload", "load_deployment", "load_workload", "synthetic",
           "ClusterSpecError"]
