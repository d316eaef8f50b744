"""Automatic parallelisation of one model over several identical chips.

A plan is (intra, t, k): ``k`` pipeline stages, each run by a group of ``t`` chips that
split its work ``intra`` ("none", "data" or "tensor"). The fixed strategies are
``data`` = (data, N, 1), ``tensor`` = (tensor, N, 1), ``pipeline`` = (none, 1, N); ``auto``
(kcompiler/driver/auto.py) weighs every factorisation, including tensor within a group and pipeline across
groups (Alpa's intra-/inter-operator split), and keeps the best for the objective.

Flow (the driver's ``parallelise`` step, step.py): placement decides host vs accelerator on a
one-chip view of the system; ``apply`` then rewrites the graph (spmd/) with per-rank copies of
the nodes, each tagged with its chip, and communication nodes (kcompiler/backends/comm) that the
communication backend lowers and the runtime schedules across the links.

    strategies.py  Plan, and the registry of strategies (none and auto there)
    data.py, tensor.py, pipeline.py   one strategy each
    planner.py     estimate and apply a plan;  info.py  what it did (ParallelInfo)
    step.py        the parallelise step of the compile pipeline;  spmd/  the rule table and rewriter

The strategy modules are imported here, in the order ``strategy_names()`` lists them.
"""

from __future__ import annotations

from kcompiler.parallel.strategies import (OBJECTIVES, Plan, Strategy, candidate_plans, fixed_plans, get_split,
                                           get_strategy, register_strategy, skip_reason, strategy_names)
from kcompiler.parallel import data, tensor, pipeline  # noqa: F401  (registers the strategies, in this order)
from kcompiler.parallel.info import MICRO_BATCHES, ParallelInfo
from kcompiler.parallel.planner import accelerators, apply, estimate, node_costs
from kcompiler.parallel.tensor import select_tensor_regions, tensor_seeds

#: the names --parallel takes
STRATEGIES = tuple(strategy_names())

__all__ = ["MICRO_BATCHES", "OBJECTIVES", "STRATEGIES", "ParallelInfo", "Plan", "Strategy", "accelerators", "apply",
           "candidate_plans", "estimate", "fixed_plans", "get_split", "get_strategy", "node_costs", "register_strategy",
           "select_tensor_regions", "skip_reason", "strategy_names", "tensor_seeds"]
