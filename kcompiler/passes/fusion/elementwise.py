"""Elementwise chain fusion on the vector unit.

A tree of unary/binary elementwise ops, each intermediate read by one op only, becomes one
``kcompiler.FusedElementwise``: the NPU streams its inputs through SRAM tile by tile, applies
every step while the tile is resident and writes the result once (one DRAM read per input
and one write, instead of a round trip per op). LLaMA's rotary embedding
``q * cos + rotate_half(q) * sin`` and the leftovers of exporters (scaling, clamping,
``x * sigmoid(x)`` outside a GEMM) are typical chains.

The fused op carries its program as data: ``steps = ["Mul|0,1|", "Add|4,2|", ...]``, one per
op, each ``Op|operands|attributes``; operand ``i`` is input ``i`` for ``i < n_inputs`` and
the result of step ``i - n_inputs`` after that (``-`` marks an omitted optional input). A
model-local ONNX function body (one overload per program) runs it on the host.

Rule ``elementwise-chain``: merge an elementwise producer (plain or already fused) into its
only consumer. A per-tensor DequantizeLinear from int8/uint8 may open a chain and a QuantizeLinear
close it: a QDQ model's residual ``DQ, DQ -> Add -> Relu -> Q`` reads and writes int8 once, where
it crossed DRAM as float32 four times. Check (reads the target): every NPU of the target claims
each op, and a double-buffered tile of one row of every streamed input fits its scratchpad.
"""

from __future__ import annotations


import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.fused import DOMAIN, ensure_function
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, claim_check, group_faster_elsewhere,
                                           rule_name)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

CHAIN = rule_name("elementwise-chain", "a tree of single-use elementwise ops -> one FusedElementwise vector op")



from kcompiler.fused.elementwise import (FUSED, MAX_INPUTS, MAX_STEPS, OPS, is_chain_member, function_body,  # noqa: F401
                                         merge, overload_for, parse_step, program_of)


# ---- the check ------------------------------------------------------------------------------
def fits(ctx: CompileContext, members: list[ir.Node], node: ir.Node) -> str | None:
    """None if every device claiming elementwise chains runs each member and the fused op (the
    NPU: a double-buffered row of every streamed input fits its scratchpad) and no other
    accelerator runs the members faster, else why not."""
    return claim_check(ctx, "elementwise-chain", node, "a fused elementwise op", members=members) or \
        group_faster_elsewhere(ctx, "elementwise-chain", members, node)


def chain_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if not is_chain_member(node):
        return None
    y_out = node.outputs[0]
    closes = program_of(node)[1][-1].startswith("QuantizeLinear|")  # a quantised result (int8/uint8 per tensor)
    if (y_out.dtype != ir.DataType.FLOAT and not closes) or opinfo.shape_of(y_out) is None:
        return None
    for v in node.inputs:
        p = v.producer() if v is not None else None
        if not is_chain_member(p) or v.is_graph_output() or any(u.node is not node for u in v.uses()):
            continue
        if v.dtype != ir.DataType.FLOAT or opinfo.shape_of(v) is None:
            continue
        inputs, steps = merge(p, node)
        if len(inputs) > MAX_INPUTS or len(steps) > MAX_STEPS:
            return f"the fused op would have {len(inputs)} inputs and {len(steps)} steps"
        overload = overload_for(len(inputs), steps)
        fused = ir.Node(DOMAIN, FUSED, inputs, attributes=[ir.AttrStrings("steps", steps)], overload=overload,
                        num_outputs=1, name=node.name)
        fused.outputs[0].shape, fused.outputs[0].type = y_out.shape, y_out.type
        why = fits(ctx, [p, node], fused)
        if why:
            for i in range(len(fused.inputs)):  # detach the probe from its inputs' use lists
                fused.replace_input_with(i, None)
            return why
        ensure_function(model, FUSED, overload, lambda: function_body(len(inputs), steps))
        return Rewrite(node, [p, node], [fused], [y_out], [fused.outputs[0]])
    return None


RULES = [NodeRule(CHAIN, chain_rule)]


@register("fuse-elementwise")
def fuse_elementwise(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fuse single-use elementwise chains into one vector op (NPU targets)."""
    return run_rules(model, ctx, RULES, max_rounds=MAX_STEPS)
