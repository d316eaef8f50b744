"""Checks of If/Loop/Scan nodes on the parsed model, before the ONNX checker, shape inference or ONNX
Runtime see them: their messages for a malformed control-flow node name a branch value or crash in
ORT's session, not the node. Each failure here is a ModelLoadError naming the node and what is wrong."""

from __future__ import annotations

from typing import Iterator, NoReturn

import onnx

from kcompiler.errors import ModelLoadError
from kcompiler.frontend.reading import ModelSource


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every graph nested in it (If branches, Loop and Scan bodies, at any depth)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _type_text(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return onnx.TensorProto.DataType.Name(t.tensor_type.elem_type) if t.tensor_type.elem_type else "tensor"
    return kind or "?"


def _attr_graph(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name and a.HasField("g")), None)


def _fail(src: ModelSource, node: onnx.NodeProto, what: str, hint: str) -> NoReturn:
    raise ModelLoadError(f"{src.name}: node '{node.name or '(unnamed)'}' ({node.op_type}): {what}", hint=hint)


def _check_if(node: onnx.NodeProto, src: ModelSource) -> None:
    then_g, else_g = _attr_graph(node, "then_branch"), _attr_graph(node, "else_branch")
    if then_g is None or else_g is None:
        _fail(src, node, "it lacks its then_branch or else_branch graph", "re-export the model")
    if len(then_g.output) != len(else_g.output):
        _fail(src, node, f"its then_branch returns {len(then_g.output)} value(s) but its else_branch "
                         f"{len(else_g.output)}", "both branches of an If must return the same number of values")
    if len(node.output) != len(then_g.output):
        _fail(src, node, f"it has {len(node.output)} output(s) but its branches return {len(then_g.output)}",
              "an If has one output per value its branches return")
    for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
        ta, tb = _type_text(a.type), _type_text(b.type)
        if a.type.WhichOneof("value") and b.type.WhichOneof("value") and ta != tb and "tensor" not in (ta, tb):
            _fail(src, node, f"output {i} is {ta} in its then_branch ('{a.name}') but {tb} in its else_branch "
                             f"('{b.name}')", "both branches of an If must return values of the same type")


def _scalar_like(dims: list[int]) -> bool:
    """A scalar, or a one-element tensor (ONNX Runtime reads either as a Loop's M or cond)."""
    count = 1
    for d in dims:
        count *= d
    return count == 1


def _known_dims(graph: onnx.GraphProto, name: str) -> list[int] | None:
    """The dims of value `name` when the graph states them: an initializer, a Constant's tensor, or a
    declared (input or value_info) shape whose dims are all fixed."""
    for t in graph.initializer:
        if t.name == name:
            return list(t.dims)
    for n in graph.node:
        if n.op_type == "Constant" and name in n.output:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    return list(a.t.dims)
                if a.name in ("value_ints", "value_floats", "value_strings"):
                    return [len(a.ints) or len(a.floats) or len(a.strings)]
    for vi in list(graph.input) + list(graph.value_info):
        if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                return [d.dim_value for d in dims]
    return None


def _check_loop(node: onnx.NodeProto, graph: onnx.GraphProto, src: ModelSource) -> None:
    body = _attr_graph(node, "body")
    if body is None:
        _fail(src, node, "it lacks its body graph", "re-export the model")
    for k, what in ((0, "trip count M"), (1, "condition")):
        name = node.input[k] if len(node.input) > k else ""
        dims = _known_dims(graph, name) if name else None
        if dims is not None and not _scalar_like(dims):
            _fail(src, node, f"its {what} '{name}' has shape {dims}; it must be a scalar",
                  "a Loop's M and cond are scalars (an int64 and a bool)")
    carried = max(len(node.input) - 2, 0)
    if len(body.input) != 2 + carried:
        _fail(src, node, f"its body takes {len(body.input)} input(s) but the Loop gives it {2 + carried} "
                         f"(iteration number, condition and {carried} carried value(s))",
              "a Loop body's inputs are (iteration, cond, the carried values)")
    if len(body.output) != 1 + len(node.output):
        _fail(src, node, f"its body returns {len(body.output)} value(s) but the Loop has {len(node.output)} "
                         f"output(s) (the body returns its condition first, then one value per output)",
              "a Loop body returns (cond, the carried values, the scan outputs)")
    if len(node.output) < carried:
        _fail(src, node, f"it carries {carried} value(s) but has only {len(node.output)} output(s)",
              "a Loop has one output per carried value, then its scan outputs")


def _check_scan(node: onnx.NodeProto, src: ModelSource, opset: int) -> None:
    body = _attr_graph(node, "body")
    # Scan-8 takes an optional sequence_lens first, which its body does not see
    inputs = list(node.input[1:] if opset < 9 else node.input)
    if body is None:
        _fail(src, node, "it lacks its body graph", "re-export the model")
    n_scan = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), None)
    if n_scan is None or n_scan < 1 or n_scan > len(inputs):
        _fail(src, node, f"num_scan_inputs is {n_scan}, but the node has {len(inputs)} input(s)",
              "num_scan_inputs counts the scanned inputs, the last ones (1 to the number of inputs)")
    for name in ("scan_input_axes", "scan_input_directions"):
        values = next((list(a.ints) for a in node.attribute if a.name == name), None)
        if values is not None and len(values) != n_scan:
            _fail(src, node, f"{name} has {len(values)} entries but num_scan_inputs is {n_scan}",
                  f"give one {name} entry per scanned input")
    if len(body.input) != len(inputs):
        _fail(src, node, f"its body takes {len(body.input)} input(s) but the Scan has {len(inputs)} "
                         f"({len(inputs) - n_scan} state and {n_scan} scanned)",
              "a Scan body takes one value per input of the node")
    if len(body.output) != len(node.output):
        _fail(src, node, f"its body returns {len(body.output)} value(s) but the Scan has {len(node.output)} "
                         "output(s)", "a Scan body returns the new states, then one value per scan output")
    n_state = len(inputs) - n_scan
    if len(node.output) < n_state:
        _fail(src, node, f"it has {n_state} state input(s) but only {len(node.output)} output(s)",
              "a Scan has one output per state, then its scan outputs")


def check_control_flow(proto: onnx.ModelProto, src: ModelSource) -> None:
    """Refuse an If whose branches disagree (in count or type), a Loop whose M or cond is not a scalar or
    whose body does not match it, a Scan whose num_scan_inputs or body does not match it; in every graph."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "If":
                _check_if(node, src)
            elif node.op_type == "Loop":
                _check_loop(node, graph, src)
            elif node.op_type == "Scan":
                _check_scan(node, src, opset)
