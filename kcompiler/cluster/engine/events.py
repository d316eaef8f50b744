"""The fleet's event loop: one heap of timed events, and the per-request record in flat lists
indexed by request id (a million requests cost tens of MB)."""

from __future__ import annotations

import heapq
import math
from typing import Protocol

INF = math.inf


class Traced(Protocol):
    """What a trace span names: a replica (kcompiler.cluster.engine.replica.Replica) by its fleet-wide index."""

    index: int


class Sim:
    """Event loop plus the per-request record."""

    def __init__(self, n: int, arrival, prompt, output, trace_limit: int = 0):
        self.now = 0.0
        self._q: list = []
        self._n = 0
        self.arrival = arrival  # list of floats
        self.prompt = prompt
        self.output = output
        self.first = [INF] * n  # first token (LLM) / result (others) time
        self.finish = [INF] * n
        self.placed = [-1] * n  # replica index that finished it
        self.model_of = [0] * n  # request -> entry pool (set by the fleet from the pools' shares)
        self.preempted = [0] * n
        self.trace: list[tuple] = []  # (replica, name, start, end, args)
        self.trace_limit = trace_limit
        self.trace_dropped = 0
        self.events = 0
        self.bins = None  # utilisation over time: busy seconds per (replica, time bin)
        self.bin_s = 1.0

    def track_busy(self, replicas: int, horizon_s: float, nbins: int = 200) -> None:
        self.bin_s = max(horizon_s, 1e-9) / nbins
        self.bins = [dict() for _ in range(replicas)]

    def add_busy(self, rep: int, start: float, end: float) -> None:
        w = self.bin_s
        b = int(start / w)
        row = self.bins[rep]
        while start < end:
            edge = (b + 1) * w
            seg = min(end, edge) - start
            row[b] = row.get(b, 0.0) + seg
            start = edge
            b += 1

    def at(self, t: float, fn, arg=None) -> None:
        """Schedule fn(arg) at time t (events at one time run in the order scheduled)."""
        self._n += 1
        heapq.heappush(self._q, (t, self._n, fn, arg))

    def run(self) -> None:
        """Run events until none is left."""
        q, pop = self._q, heapq.heappop
        n = 0
        while q:
            t, _, fn, arg = pop(q)
            self.now = t
            fn(arg)
            n += 1
        self.events += n

    def span(self, rep: Traced, name: str, start: float, end: float, args: dict | None = None) -> None:
        if len(self.trace) < self.trace_limit:
            self.trace.append((rep.index, name, start, end, args))
        else:
            self.trace_dropped += 1
