"""Placement: choose a device for every node.

Each node goes to the device that minimises its own cost plus the cost of bringing its
inputs from where they were produced (a greedy pass in topological order over backend
``estimate``s). Constant-producing nodes follow their first consumer. The decision and
its reason are stored on the node (metadata ``kcompiler.device`` / ``kcompiler.reason``)
so `kc inspect` can show them.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Backend
from kcompiler.errors import UnsupportedOpError
from kcompiler.passes.manager import PassContext, PassOutcome, register
from kcompiler.runtime.partition import DEVICE_KEY, REASON_KEY


def _is_const_producer(node: ir.Node) -> bool:
    return node.op_type in ("Constant", "ConstantOfShape") and all(
        opinfo.const_value(v) is not None for v in node.outputs)


def place_nodes(model: ir.Model, backends: dict[str, Backend]) -> dict[str, int]:
    host = next(name for name, b in backends.items() if b.kind == "host")
    where: dict[int, str] = {}  # id(value) -> device
    counts: dict[str, int] = {}
    deferred: list[ir.Node] = []
    for node in model.graph:
        if _is_const_producer(node):
            deferred.append(node)
            continue
        best, best_t, reasons = None, float("inf"), []
        for name, backend in backends.items():
            ok = backend.supports(node)
            if not ok:
                reasons.append(f"{name}: {ok.reason}")
                continue
            t = backend.estimate(node).seconds
            for v in node.inputs:
                # initializers first: asking for their numpy value would open external weight files
                if v is None or v.const_value is not None or opinfo.const_value(v) is not None:
                    continue
                src = where.get(id(v), host)
                if src != name:
                    t += backend.system.link(src, name).transfer_s(opinfo.nbytes(v))
            if t < best_t:
                best, best_t = name, t
        if best is None:
            raise UnsupportedOpError(f"node '{node.name}' ({node.op_type}) runs on no device",
                                     hint="; ".join(reasons))
        node.metadata_props[DEVICE_KEY] = best
        why = f"cheapest: {best_t * 1e6:.2f} us incl. input transfers"
        if reasons:
            why += "; " + "; ".join(reasons)
        node.metadata_props[REASON_KEY] = why
        counts[best] = counts.get(best, 0) + 1
        for v in node.outputs:
            where[id(v)] = best
    for node in deferred:
        users = [u.node for v in node.outputs for u in v.uses()]
        dev = users[0].metadata_props.get(DEVICE_KEY, host) if users else host
        node.metadata_props[DEVICE_KEY] = dev
        node.metadata_props[REASON_KEY] = "constant: placed with its consumer"
        counts[dev] = counts.get(dev, 0) + 1
    _keep_constants_next_to_consumers(model)
    return counts


def _keep_constants_next_to_consumers(model: ir.Model) -> None:
    """Move constant producers just before their first consumer so they join its partition."""
    nodes = list(model.graph)
    consts = [n for n in nodes if n.metadata_props.get(REASON_KEY, "").startswith("constant")]
    for c in consts:
        users = [u.node for v in c.outputs for u in v.uses() if u.node.graph is model.graph]
        if not users:
            continue
        order = {id(n): i for i, n in enumerate(model.graph)}
        first = min(users, key=lambda n: order.get(id(n), 1 << 30))
        model.graph.remove(c)
        model.graph.insert_before(first, c)


@register("placement")
def placement_pass(model: ir.Model, ctx: PassContext) -> PassOutcome:
    """Assign each node to a device of the target system."""
    counts = place_nodes(model, ctx.options["backends"])
    ctx.options["placement"] = counts
    return PassOutcome(changed=True)
