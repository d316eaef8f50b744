"""The ONNX checker, and old opsets brought up to CANONICAL_OPSET (by renumbering when no op of the
model changed between the two, else by onnx's version converter)."""

from __future__ import annotations

import onnx

from kcompiler.errors import ModelLoadError
from kcompiler.frontend.reading import ModelSource

#: every model is brought to this default-domain opset when it is older
CANONICAL_OPSET = 23


def check_and_convert(proto: onnx.ModelProto, src: ModelSource) -> onnx.ModelProto:
    """Run the ONNX checker and bring old opsets up to CANONICAL_OPSET."""
    try:
        # from its path the checker looks for external data beside the model (it never reads it);
        # from a proto it would look in the current directory
        external = src.path is not None and any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        onnx.checker.check_model(str(src.path) if external else proto)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        text = " ".join(msg[:3])[:600]
        hint = "the model is not valid ONNX; fix the exporter or run onnx.checker on it"
        if "topologically sorted" in text or "cycle" in text.lower():
            hint = "the graph's nodes are out of order or form a cycle; re-export the model"
        raise ModelLoadError(f"{src.name}: the ONNX checker rejected the model: {text}", hint=hint) from None
    default = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    latest = onnx.defs.onnx_opset_version()
    if default and default[0] > latest:
        raise ModelLoadError(f"{src.name}: the model imports opset {default[0]}, newer than the {latest} "
                             "this installation of onnx knows", hint="re-export with an older opset, or upgrade onnx")
    if default and default[0] < CANONICAL_OPSET and _ops_unchanged(proto, default[0], CANONICAL_OPSET):
        # no op of the model changed between the two opsets: only the import's number moves.
        # (onnx's converter is superlinear: 0.08 s for a 10,000-node chain, 1.6 s for 100,000)
        converted = onnx.ModelProto()
        converted.CopyFrom(proto)
        for o in converted.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = CANONICAL_OPSET
        return converted
    if default and default[0] < CANONICAL_OPSET:
        try:
            converted = onnx.version_converter.convert_version(proto, CANONICAL_OPSET)
            onnx.checker.check_model(_external_as_inputs(converted) if external else converted)
            if _signature(converted) != _signature(proto):  # e.g. Scan 8->9 drops the batch axis
                raise ValueError("the conversion changed the types or shapes of the graph's inputs/outputs")
            return converted
        except Exception as exc:  # the converter lacks an adapter for some op
            src.notes.append(f"kept opset {default[0]}: the ONNX version converter failed ({str(exc)[:200]})")
    return proto


def _ops_unchanged(proto: onnx.ModelProto, old: int, new: int) -> bool:
    """Whether every default-domain op of the model (subgraphs included) has the same schema
    at opset `new` as at `old`, so that converting changes nothing but the opset number."""
    if len(proto.functions):
        return False
    seen: set[str] = set()
    stack = [proto.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type not in seen:
                seen.add(node.op_type)
                try:
                    if onnx.defs.get_schema(node.op_type, new, "").since_version > old:
                        return False
                except Exception:  # unknown op: let the converter and checker say so
                    return False
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return True


def _external_as_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for the checker with external initializers turned into graph inputs: in memory,
    the checker would look for their files in the current directory (they were checked
    beside the model already). The copy holds no weight data."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    inits = copy.graph.initializer
    for i in reversed(range(len(inits))):
        t = inits[i]
        if t.data_location == onnx.TensorProto.EXTERNAL:
            copy.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            del inits[i]
    return copy


def _signature(proto: onnx.ModelProto) -> list[tuple[str, bytes]]:
    """Names and types (with shapes) of a graph's inputs and outputs."""
    return [(vi.name, vi.type.SerializeToString(deterministic=True))
            for vi in (*proto.graph.input, *proto.graph.output)]
