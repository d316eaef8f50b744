"""Pipeline stages: cut the topologically ordered graph into K contiguous stages.

As in PipeDream's partitioner (Narayanan et al., SOSP 2019), a dynamic programme over the
node sequence minimises the slowest stage, where a stage costs the sum of its nodes'
estimated times and a cut costs the transfer of every value live across it:

    best[k][j] = min over i < j of max(best[k-1][i], cost(i..j), transfer(cut after i))

The steady-state time between micro-batches is that minimum; the latency of one input is
the sum of the stages plus the transfers. As a strategy (``pipeline``): one stage per chip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.parallel.strategies import Plan, Strategy, register_strategy


@dataclass
class StagePlan:
    stage_of: dict[int, int]  # id(node) -> stage
    stage_s: list[float]  # estimated compute per stage
    cut_s: list[float]  # estimated transfer after each stage but the last
    bounds: list[int]  # index of each stage's first node

    @property
    def interval_s(self) -> float:
        return max(self.stage_s + self.cut_s) if self.stage_s else 0.0

    @property
    def latency_s(self) -> float:
        return sum(self.stage_s) + sum(self.cut_s)


def cut_bytes(nodes: list[ir.Node], is_const, bytes_of=opinfo.nbytes) -> np.ndarray:
    """bytes[i]: bytes of the values produced at or before node i and read after it."""
    index = {id(n): i for i, n in enumerate(nodes)}
    diff = np.zeros(len(nodes) + 1)
    for i, n in enumerate(nodes):
        for v in n.outputs:
            if v is None or is_const(v):
                continue
            last = max((index.get(id(u.node), -1) for u in v.uses()), default=-1)
            if last > i:
                b = bytes_of(v)
                diff[i] += b
                diff[last] -= b
    return np.cumsum(diff)[:-1]


def partition_stages(nodes: list[ir.Node], cost: list[float], cut_bytes_: np.ndarray, stages: int,
                     transfer_s) -> StagePlan:
    """The min-max contiguous partition of `nodes` into at most `stages` parts."""
    n = len(nodes)
    k_max = max(1, min(stages, n))
    prefix = np.concatenate([[0.0], np.cumsum(cost)])
    # comm[i]: time to send what is live after node i-1 (a cut before node i), i in 1..n-1
    comm = np.array([0.0] + [transfer_s(b) if b > 0 else 0.0 for b in cut_bytes_[:-1]] + [0.0]) if n else np.zeros(1)
    inf = float("inf")
    best = np.full((k_max + 1, n + 1), inf)
    arg = np.zeros((k_max + 1, n + 1), dtype=np.int64)
    best[1, 1:] = prefix[1:]
    for k in range(2, k_max + 1):
        for j in range(k, n + 1):
            i = np.arange(k - 1, j)
            vals = np.maximum(np.maximum(best[k - 1, i], prefix[j] - prefix[i]), comm[i])
            m = int(np.argmin(vals))
            best[k, j] = vals[m]
            arg[k, j] = i[m]
    # the fewest stages reaching the optimum (an extra stage that gains nothing only adds latency)
    k_best = min(range(1, k_max + 1), key=lambda k: (round(best[k, n], 15), k)) if n else 1
    bounds, j = [], n
    for k in range(k_best, 1, -1):
        i = int(arg[k, j])
        bounds.append(i)
        j = i
    bounds = [0] + bounds[::-1]
    stage_of, stage_s, cut_s = {}, [], []
    for s, start in enumerate(bounds):
        end = bounds[s + 1] if s + 1 < len(bounds) else n
        for node in nodes[start:end]:
            stage_of[id(node)] = s
        stage_s.append(float(prefix[end] - prefix[start]))
        if s + 1 < len(bounds):
            cut_s.append(float(comm[end]))
    return StagePlan(stage_of, stage_s, cut_s, bounds)


@register_strategy
class PipelineParallel(Strategy):
    """The model cut into one stage per chip; inputs stream through the stages."""

    name = "pipeline"

    def plan(self, n: int) -> Plan:
        return Plan("none", 1, n)
