"""Small helpers over onnx_ir shared by the partitioner and backends."""

from __future__ import annotations

from typing import Iterable, Iterator

import onnx_ir as ir


def nested_graphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def node_inputs(node: ir.Node) -> list[ir.Value]:
    """The node's inputs plus outer-scope values its subgraphs (If/Loop/Scan bodies) capture."""
    values = [v for v in node.inputs if v is not None]
    graphs = list(nested_graphs(node))
    if not graphs:
        return values
    seen = {id(v) for v in values}
    for g in graphs:
        for inner in g.all_nodes() if hasattr(g, "all_nodes") else _walk(g):
            for v in inner.inputs:
                if v is None or id(v) in seen:
                    continue
                if v.graph is not None and v.graph is not g and not _inside(v.graph, g):
                    values.append(v)
                    seen.add(id(v))
    return values


def _walk(g: ir.Graph) -> Iterator[ir.Node]:
    for n in g:
        yield n
        for sub in nested_graphs(n):
            yield from _walk(sub)


def _inside(inner: ir.Graph, outer: ir.Graph) -> bool:
    """Whether graph `inner` is nested (at any depth) in graph `outer`."""
    for n in _walk(outer):
        for sub in nested_graphs(n):
            if sub is inner:
                return True
    return False


def external_weights_dir(values: Iterable[ir.Value]) -> str | None:
    """The folder the first of these values kept in an external weights file reads it from."""
    for v in values:
        t = v.const_value
        if isinstance(t, ir.ExternalTensor) and t.base_dir:
            return str(t.base_dir)
    return None
