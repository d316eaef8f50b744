"""Routers: which replica of a pool serves a request, and the arrivals that feed them."""

from __future__ import annotations

from kcompiler.cluster.engine.events import INF, Sim
from kcompiler.cluster.engine.replica import Replica


class Router:
    """Spreads a pool's requests over its replicas: round-robin, least-loaded (fewest outstanding
    requests), or kv-aware (most free KV blocks after what is already queued)."""

    def __init__(self, policy: str, replicas: list[Replica]):
        self.policy = policy
        self.replicas = replicas
        self.i = 0

    def pick(self) -> Replica:
        reps = self.replicas
        if self.policy == "round-robin" or len(reps) == 1:
            r = reps[self.i % len(reps)]
            self.i += 1
            return r
        if self.policy == "least-loaded":
            best, bl = reps[0], reps[0].outstanding
            for r in reps:
                if r.outstanding < bl:
                    best, bl = r, r.outstanding
            return best
        best, bv = reps[0], -INF
        for r in reps:
            v = r.free_kv() - r.outstanding * 0.001
            if v > bv:
                best, bv = r, v
        return best


def route_all(sim: Sim, pools: list, n: int) -> None:
    """Arrivals: one event at a time (the heap holds one pending arrival, not a million); request
    i goes to the router of pool ``sim.model_of[i]``."""
    arrival = sim.arrival
    routers = [p.router for p in pools]
    assign = sim.model_of

    def arrive(i):
        routers[assign[i]].pick().arrive(i)
        if i + 1 < n:
            sim.at(arrival[i + 1], arrive, i + 1)

    if n:
        sim.at(arrival[0], arrive, 0)
