"""Data parallelism: every chip of a group runs the whole model on its slice of the batch.

The graph inputs start split along their first axis (the rewriter scatters them from the host),
the split follows the activations through every op that keeps the batch axis, and the outputs
are gathered back.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from kcompiler.errors import KCError
from kcompiler.parallel.spmd.rewriter import Rewriter
from kcompiler.parallel.strategies import Plan, Strategy, register_strategy


def _batch_divisible(model: ir.Model, t: int) -> bool:
    """Whether some graph input has a static first (batch) dimension that `t` divides."""
    return any(v.shape is not None and len(v.shape) > 0 and isinstance(v.shape[0], int) and v.shape[0] % t == 0
               for v in model.graph.inputs)


@register_strategy
class DataParallel(Strategy):
    """Every chip runs the whole model on its slice of the batch."""

    name = "data"
    intra = True
    input_axis = 0
    auto_rank = 1

    def plan(self, n: int) -> Plan:
        return Plan("data", n, 1)

    def analyse(self, model: ir.Model, system, group: list[str], cost: dict[int, float]) -> tuple[set[int], Any]:
        return set(), Rewriter(model, system, [tuple(group)], intra="data", emit=False).run()

    def check(self, model: ir.Model, plan: Plan) -> None:
        if _batch_divisible(model, plan.t):
            return
        shapes = [(v.name, tuple(v.shape) if v.shape is not None else None) for v in model.graph.inputs]
        raise KCError(f"data parallelism over {plan.t} chips needs an input whose first (batch) dimension is "
                      f"a multiple of {plan.t}; inputs are {shapes}",
                      hint=f"compile with a batch of {plan.t} or a multiple (e.g. --batch {plan.t} or --shape)")

    def skip(self, model: ir.Model, plan: Plan) -> str | None:
        return None if _batch_divisible(model, plan.t) else f"no input with a batch divisible by {plan.t}"
