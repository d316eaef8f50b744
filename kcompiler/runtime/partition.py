"""Cut a placed graph into subgraphs: maximal runs of consecutive nodes on one device."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.backends.base import Subgraph
from kcompiler.irutil import node_inputs

DEVICE_KEY = "kcompiler.device"
REASON_KEY = "kcompiler.reason"


def device_of(node: ir.Node) -> str:
    return node.metadata_props.get(DEVICE_KEY, "host")


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
