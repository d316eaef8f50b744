"""Cut a placed graph into subgraphs: maximal runs of consecutive nodes on one device."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.backends.base import Subgraph
from kcompiler.irutil import node_inputs
from kcompiler.passes.manager import CompileContext, PassOutcome, register
from kcompiler.passes.placement import device_of


def partition(model: ir.Model) -> list[Subgraph]:
    """Group nodes (in the graph's topological order) by the device placement chose."""
    groups: list[tuple[str, list[ir.Node]]] = []
    for node in model.graph:
        dev = device_of(node)
        if groups and groups[-1][0] == dev:
            groups[-1][1].append(node)
        else:
            groups.append((dev, [node]))
    graph_outputs = {id(v) for v in model.graph.outputs}
    where: dict[int, int] = {}  # id(node) -> group index
    for i, (_, nodes) in enumerate(groups):
        for n in nodes:
            where[id(n)] = i
    subs = []
    for i, (dev, nodes) in enumerate(groups):
        inputs, seen = [], set()
        for n in nodes:
            for v in node_inputs(n):
                if id(v) in seen:
                    continue
                prod = v.producer()
                inside = prod is not None and where.get(id(prod)) == i
                if inside or (v.is_initializer() and v.const_value is not None):
                    continue
                seen.add(id(v))
                inputs.append(v)
        outputs = []
        for n in nodes:
            for v in n.outputs:
                used_outside = any(where.get(id(u.node), -1) != i for u in v.uses())
                if id(v) in graph_outputs or used_outside:
                    outputs.append(v)
        # keep graph outputs in the graph's own order for the whole-model fast path
        order = {id(v): k for k, v in enumerate(model.graph.outputs)}
        outputs.sort(key=lambda v: order.get(id(v), len(order)))
        subs.append(Subgraph(device=dev, nodes=nodes, inputs=inputs, outputs=outputs, model=model))
    return subs


def partitions_text(parts: list[Subgraph]) -> str:
    """What `--print-after partition` prints: one line per subgraph."""
    return "\n".join(f"{i:>3} {sub.device:<10} {len(sub.nodes):>5} nodes  {sub.nodes[0].name} .. {sub.nodes[-1].name}"
                     f"  in: {len(sub.inputs)}  out: {len(sub.outputs)}" for i, sub in enumerate(parts))


@register("partition", show=lambda model, ctx: partitions_text(ctx.parts), required=True)
def partition_pass(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Cut the placed graph into subgraphs, one per run of consecutive nodes on one device."""
    ctx.parts = partition(model)
    return PassOutcome(changed=False)
