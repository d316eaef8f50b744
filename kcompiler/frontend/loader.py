"""Load an ONNX model from untrusted bytes into a validated onnx_ir.Model.

Order matters: cheap structural checks first (size, protobuf parse, external-data
paths, declared tensor sizes), then the ONNX checker, opset conversion, shape
binding and shape inference. Every failure is a KCError naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from kcompiler.errors import ExternalDataError, ModelLoadError, ShapeError

#: every model is brought to this default-domain opset when it is older
CANONICAL_OPSET = 23
#: largest single tensor a model may declare (bigger is a hostile or broken shape)
MAX_TENSOR_BYTES = 1 << 36  # 64 GiB
#: protobuf cannot hold more than 2 GiB; anything larger must use external data
MAX_PROTO_BYTES = (1 << 31) - 1


@dataclass
class ModelSource:
    """Where a model came from, for error messages and external data."""

    name: str
    path: Path | None = None
    base_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: inputs whose shape the model leaves open (a symbolic or -1 dim): the ones --shape may bind
    symbolic: tuple[str, ...] = ()


def read_model_proto(model: str | os.PathLike | bytes | onnx.ModelProto,
                     base_dir: str | os.PathLike | None = None) -> tuple[onnx.ModelProto, ModelSource]:
    """Parse a path, bytes or ModelProto; external data is left on disk."""
    if isinstance(model, onnx.ModelProto):
        src = ModelSource(name=model.graph.name or "<model>",
                          base_dir=Path(base_dir) if base_dir else None)
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        src = ModelSource(name="<bytes>", base_dir=Path(base_dir) if base_dir else None)
        proto = _parse(bytes(model), src.name)
    else:
        path = Path(model)
        src = ModelSource(name=str(path), path=path, base_dir=path.resolve().parent)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file",
                                 hint="check the path, or run `kc zoo` for the names of built-in models")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a regular file", hint="pass the path of an .onnx file")
        size = path.stat().st_size
        if size == 0:
            raise ModelLoadError(f"{path}: the file is empty", hint="re-export the model")
        if size > MAX_PROTO_BYTES:
            raise ModelLoadError(
                f"{path}: {size} bytes is larger than a protobuf can hold (2 GiB)",
                hint="save the weights as ONNX external data (onnx.save(..., save_as_external_data=True))")
        proto = _parse(path.read_bytes(), str(path))
    check_proto_structure(proto, src)
    return proto, src


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ModelLoadError(f"{name}: not an ONNX model (protobuf parse failed: {exc})",
                             hint="the file is truncated or corrupt; re-export or re-download it") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(f"{name}: not an ONNX model (no graph or no IR version)",
                             hint="the file is truncated, corrupt, or not an .onnx file")
    return proto


def _iter_tensors(graph: onnx.GraphProto):
    """Every TensorProto in a graph, its nodes' attributes and nested subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for g in attr.graphs:
                yield from _iter_tensors(g)


def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return flag if flag is not None else fd.label == fd.LABEL_REPEATED


def _check_text(msg, src: ModelSource) -> None:
    """Every string field must be UTF-8: protobuf hands back bytes for a corrupt one, and
    everything downstream (checker, onnx_ir, ONNX Runtime) assumes text."""
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            for item in (value if _repeated(fd) else (value,)):
                _check_text(item, src)
        elif fd.type == fd.TYPE_STRING:
            for item in (value if _repeated(fd) else (value,)):
                if isinstance(item, bytes):
                    raise ModelLoadError(f"{src.name}: field {fd.full_name} holds {item[:40]!r}, which is not "
                                         "UTF-8 text", hint="the model is corrupt; re-export it")


def check_proto_structure(proto: onnx.ModelProto, src: ModelSource) -> None:
    """Reject impossible tensors and external data that escapes the model's folder."""
    _check_text(proto, src)
    tensors = list(_iter_tensors(proto.graph))
    for fn in proto.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
    for t in tensors:
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{src.name}: tensor '{t.name}' has a negative dimension {list(t.dims)}",
                                 hint="the model is corrupt; re-export it")
        n = math.prod(t.dims) if t.dims else 1
        itemsize = _itemsize(t.data_type)  # None for STRING and unknown types
        nbytes = math.ceil(n * itemsize) if itemsize else n  # 2-, 4- and 6-bit types are packed
        if nbytes > MAX_TENSOR_BYTES:
            raise ShapeError(f"{src.name}: tensor '{t.name}' declares shape {list(t.dims)} "
                             f"({nbytes / 2**30:.0f} GiB), more than kcompiler accepts",
                             hint="check the exporter's shapes")
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(t, src, nbytes)
        elif t.HasField("raw_data") and itemsize and len(t.raw_data) != nbytes:
            raise ModelLoadError(
                f"{src.name}: tensor '{t.name}' of shape {list(t.dims)} should hold {nbytes} bytes "
                f"but holds {len(t.raw_data)}", hint="the model is truncated or corrupt; re-export it")


def _itemsize(data_type: int) -> float | None:
    """Bytes per element (fractional for packed 2/4/6-bit types); None if not fixed or unknown."""
    try:
        return ir.DataType(data_type).itemsize
    except (ValueError, TypeError):
        return None


def _check_external(t: onnx.TensorProto, src: ModelSource, expected: int) -> None:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location")
    if not location:
        raise ExternalDataError(f"{src.name}: tensor '{t.name}' is stored externally but names no file")
    if src.base_dir is None:
        raise ExternalDataError(
            f"{src.name}: tensor '{t.name}' is stored in external file '{location}', but the model was "
            "given in memory", hint="load the model from its path so the external file can be found")
    base = src.base_dir.resolve()
    target = (base / location).resolve()
    if os.path.isabs(location) or (target != base and base not in target.parents):
        raise ExternalDataError(
            f"{src.name}: tensor '{t.name}' points to external data '{location}', outside the model's "
            f"folder {base}", hint="kcompiler only reads external data beside the model; move the file there")
    if not target.is_file():
        raise ExternalDataError(f"{src.name}: external data file '{location}' of tensor '{t.name}' "
                                f"does not exist in {base}", hint="copy the weights file next to the model")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else expected
    except ValueError:
        raise ExternalDataError(f"{src.name}: tensor '{t.name}' has a non-numeric external offset/length") from None
    if offset < 0 or length < 0 or offset + length > target.stat().st_size:
        raise ExternalDataError(
            f"{src.name}: tensor '{t.name}' reads bytes {offset}..{offset + length} of '{location}', "
            f"which has only {target.stat().st_size}", hint="the weights file is truncated; re-export it")
    if length != expected:
        raise ExternalDataError(f"{src.name}: tensor '{t.name}' needs {expected} bytes but its external "
                                f"record gives {length}", hint="the model and its weights file do not match")


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


def to_ir(proto: onnx.ModelProto, src: ModelSource) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"{src.name}: cannot read the model into the IR: {exc}") from None
    if src.base_dir is not None:
        ir.external_data.set_base_dir(model.graph, src.base_dir)
    ir_passes.RemoveInitializersFromInputsPass()(model)
    # IR < 4 requires every initializer to be a graph input; now that they are not, say IR 8
    # (the first IR version of opset 18; opset 23 models need IR 11, which ORT takes as 10)
    model.ir_version = max(model.ir_version, 8)
    return model


def parse_shape_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` from the command line."""
    if "=" not in spec:
        raise ShapeError(f"--shape '{spec}': expected NAME=DIMS, e.g. input=1x3x224x224")
    name, _, dims = spec.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d != "")
    except ValueError:
        raise ShapeError(f"--shape '{spec}': dims must be integers separated by 'x', e.g. 1x3x224x224") from None
    return name, shape


def _open_negative_dims(model: ir.Model) -> None:
    """Paddle2ONNX and other exporters write -1 for a dynamic dim (ONNX Runtime accepts it): make
    every -1 dim of the graph's inputs, outputs and annotated values open, like a symbolic one, so
    --shape binds it and shape inference fills it. (0 stays: a zero-size dim is valid ONNX; other
    negative dims stay, for the checks that refuse them.)"""
    g = model.graph
    values = list(g.inputs) + list(g.outputs) + [v for n in g for v in n.outputs]
    for v in values:
        if v is not None and v.shape is not None and any(isinstance(d, int) and d == -1 for d in v.shape):
            v.shape = ir.Shape([None if isinstance(d, int) and d == -1 else d for d in v.shape])


def bind_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None, src: ModelSource) -> None:
    """Fix every graph input's shape; refuse symbolic dims left unbound."""
    shapes = dict(shapes or {})
    inputs = {v.name: v for v in model.graph.inputs}
    _open_negative_dims(model)
    src.symbolic = tuple(v.name for v in model.graph.inputs
                         if v.shape is None or any(not isinstance(d, int) for d in v.shape))
    unknown = [n for n in shapes if n not in inputs]
    if unknown:
        raise ShapeError(f"{src.name}: --shape names {unknown}, which are not inputs of the model",
                         hint=f"the inputs are {sorted(inputs)}")
    for name, dims in shapes.items():
        value = inputs[name]
        dims = _as_dims(name, dims, src)
        if any(d <= 0 for d in dims):
            raise ShapeError(f"{src.name}: input '{name}' bound to {dims}: every dim must be positive")
        if value.shape is not None and len(value.shape) != len(dims):
            raise ShapeError(f"{src.name}: input '{name}' has rank {len(value.shape)} ({_fmt(value.shape)}) "
                             f"but --shape gives {len(dims)} dims", hint=f"give {len(value.shape)} dims")
        if value.shape is not None:
            for i, (have, want) in enumerate(zip(value.shape, dims)):
                if isinstance(have, int) and have != want:
                    raise ShapeError(f"{src.name}: input '{name}' dim {i} is fixed at {have} in the model "
                                     f"but --shape asks for {want}",
                                     hint=f"the model's own shape of '{name}' is {_fmt(value.shape)}: bind only its "
                                          "open dims, or export the model with this dim dynamic")
        value.shape = ir.Shape(dims)
    missing, example = [], None
    for value in model.graph.inputs:
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            continue  # sequences/optionals: their elements' shapes vary per run, nothing to bind
        if value.shape is None or any(not isinstance(d, int) for d in value.shape):
            missing.append(f"{value.name} {_fmt(value.shape)}")
            if example is None and value.shape is not None:  # its own rank, open dims as 1
                dims = "x".join(str(d) if isinstance(d, int) else "1" for d in value.shape)
                example = f"--shape {value.name}={dims}"
    if missing:
        raise ShapeError(f"{src.name}: the shapes of these inputs are not known: {', '.join(missing)}",
                         hint=f"bind each with --shape NAME=DIMS (e.g. {example or '--shape x=1x3x224x224'}) "
                              "or shapes={...} in Python")
    for value in model.graph.inputs:
        _check_size(value, src)


def _as_dims(name: str, dims, src: ModelSource) -> tuple[int, ...]:
    """Dims given for one input: a sequence of ints, or text such as "1x3x224x224"."""
    if isinstance(dims, str):
        return parse_shape_spec(f"{name}={dims}")[1]
    try:
        return tuple(operator.index(d) for d in dims)
    except TypeError:
        raise ShapeError(f"{src.name}: the shape given for input '{name}' must be a sequence of integers, "
                         f"got {dims!r}", hint="e.g. shapes={'x': (1, 3, 224, 224)}") from None


def _fmt(shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape) + "]"


def _check_size(value: ir.Value, src: ModelSource) -> None:
    if value.shape is None:
        return
    dims = [d for d in value.shape if isinstance(d, int)]
    if any(d < 0 for d in dims):
        raise ShapeError(f"{src.name}: '{value.name}' has a negative dim {_fmt(value.shape)}")
    try:
        size = value.dtype.itemsize if value.dtype is not None and value.dtype.itemsize else 4
    except TypeError:  # STRING has no fixed width (onnx_ir raises); count 4 bytes per element
        size = 4
    if math.prod(dims) * size > MAX_TENSOR_BYTES:
        raise ShapeError(f"{src.name}: '{value.name}' has shape {_fmt(value.shape)} "
                         f"({math.prod(dims) * size / 2**30:.0f} GiB), more than kcompiler accepts",
                         hint="check --shape and the model's declared dims")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured_log(name: str):
    """Collect a library logger's records instead of printing them (no stray tracebacks)."""
    logger = logging.getLogger(name)
    handler, propagate = _Records(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_SHAPE_LOG = logging.getLogger("onnx_ir.passes.common.shape_inference")


def _merge_inferred(model: ir.Model, inferred_proto: onnx.ModelProto) -> bool:
    """Copy inferred types and shapes onto the model's values, graph by graph (subgraphs too).

    onnx_ir 1.1's own merge copies only dtype and shape, and assigning a dtype to an untyped
    value makes it a tensor: a sequence inside a Loop or If body then became a tensor, and ONNX
    Runtime refused the model (8 ONNX conformance cases). Non-tensor types are copied whole."""
    inferred_model = ir.serde.deserialize_model(inferred_proto)
    modified = False
    for graph, inferred_graph in zip(model.graphs(), inferred_model.graphs()):
        inferred = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            got = inferred.get(name)
            if got is None or got.type is None:
                continue
            if not isinstance(got.type, ir.TensorType):
                if value.type != got.type:
                    value.type = got.type
                    modified = True
                continue
            if got.shape is not None and value.shape != got.shape:
                value.shape = got.shape
                modified = True
            if got.dtype is not None and value.dtype != got.dtype:
                value.dtype = got.dtype
                modified = True
    return modified


class ShapeInferencePass(ir_passes.ShapeInferencePass):
    """onnx_ir's ShapeInferencePass (ONNX shape inference on the serialised model, large
    initializers left out), merging types with `_merge_inferred`. Like the original, it does
    not raise: a failure is logged on onnx_ir's logger and the model is left unchanged."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            from onnx_ir.passes.common import _c_api_utils
        except ImportError:  # another onnx_ir layout: its own pass, with its own merge
            return super().call(model)

        def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
            return onnx.shape_inference.infer_shapes(proto, check_type=self.check_type,
                                                     strict_mode=self.strict_mode, data_prop=self.data_prop)

        try:
            inferred = _c_api_utils.call_onnx_api(infer, model)
        except Exception as exc:  # noqa: BLE001 - reported through the log, as onnx_ir does
            _SHAPE_LOG.warning("Shape inference failed: %s. Model is left unchanged", exc, exc_info=exc)
            return ir.passes.PassResult(model, False)
        return ir.passes.PassResult(model, _merge_inferred(model, inferred))


def _function_body_limit(text: str) -> bool:
    """Whether a strict-inference error is ONNX's own limit inside a standard op's function body
    rather than a fault of the model: onnx 1.23 cannot resolve a Constant whose value is an
    attribute reference in the body (MeanVarianceNormalization's axes), and says the Constant
    has no value. A top-level Constant like that fails the checker before inference runs."""
    m = re.match(r"\[ShapeInferenceError\] Inference error\(s\): \(op_type:(\w+)\): \[ShapeInferenceError\] "
                 r"Inference error\(s\): \(op_type:Constant\): .*One and only one of the attributes", text)
    return m is not None and m.group(1) != "Constant"


def infer_shapes(model: ir.Model, src: ModelSource) -> None:
    """Give every value a shape and dtype where ONNX shape inference can."""
    # onnx_ir's pass does not raise: it logs the failure (with a traceback) and leaves the
    # model unchanged, so capture its log record to see whether strict inference failed.
    # First without data propagation, and check sizes: propagation materialises the values of
    # constant-derived tensors, so a 200-byte model (Add of a Range of 10^12 elements) would
    # exhaust memory inside ONNX before any size check
    with _captured_log("onnx_ir.passes.common.shape_inference") as records:
        ShapeInferencePass(strict_mode=True, data_prop=False)(model)
        if not records:
            for node in model.graph:
                for value in node.outputs:
                    _check_size(value, src)
            ShapeInferencePass(strict_mode=True, data_prop=True)(model)
    failure = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None), None)
    if failure is not None:
        text = " ".join(str(failure).split())[:600]
        if isinstance(failure, onnx.shape_inference.InferenceError) and not _function_body_limit(text):
            raise ShapeError(f"{src.name}: shape inference failed: {text}",
                             hint="the shapes in the model are inconsistent; check --shape and the exporter")
        # anything else (an op ONNX cannot infer): keep what non-strict inference finds
        with _captured_log("onnx_ir.passes.common.shape_inference"):
            ShapeInferencePass(strict_mode=False, data_prop=True)(model)
        src.notes.append(f"shape inference reported: {text}")
    for node in model.graph:
        for value in node.outputs:
            _check_size(value, src)


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto | ir.Model,
               shapes: Mapping[str, Sequence[int]] | None = None,
               base_dir: str | os.PathLike | None = None) -> tuple[ir.Model, ModelSource]:
    """The whole frontend: parse, validate, convert, bind and infer."""
    if isinstance(model, ir.Model):
        proto = ir.serde.serialize_model(model)
        model = proto
    proto, src = read_model_proto(model, base_dir)
    proto = check_and_convert(proto, src)
    irm = to_ir(proto, src)
    bind_shapes(irm, shapes, src)
    infer_shapes(irm, src)
    return irm, src
