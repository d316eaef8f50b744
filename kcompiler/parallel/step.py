"""The parallelise step: with a parallel plan (--parallel), split the graph over the chips."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.parallel import apply
from kcompiler.passes.manager import CompileContext, PassOutcome, register
from kcompiler.passes.placement import placement_text


@register("parallelise", show=lambda model, ctx: placement_text(model), required=True)
def parallelise_pass(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Split the graph over the system's chips for the parallel plan (--parallel), if any.

    The plan places every node and inserts the collectives; without a plan there is nothing to
    do here and placement places the nodes."""
    if ctx.plan is None:
        return PassOutcome(changed=False)
    ctx.say("place", f"{len(model.graph)} nodes on {', '.join(d.name for d in ctx.system.devices)}")
    ctx.parallel = apply(model, ctx.system, ctx.chips, ctx.plan, ctx.objective)
    return PassOutcome(changed=True)
