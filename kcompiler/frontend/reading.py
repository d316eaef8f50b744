"""Untrusted bytes to an onnx.ModelProto: cheap structural checks before anything else reads it
(size, protobuf parse, UTF-8 text, declared tensor sizes, external data confined to the model's
folder). Every failure is a KCError naming the file."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler.errors import ExternalDataError, ModelLoadError, ShapeError

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


def proto_tensors(proto: onnx.ModelProto):
    """Every TensorProto of a model: initializers (sparse ones' values and indices), tensor
    attributes of nodes, nested subgraphs, and the nodes of its local functions."""
    yield from _graph_tensors(proto.graph)
    for fn in proto.functions:
        yield from _node_tensors(fn.node)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


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
    for t in proto_tensors(proto):
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
        elif t.int32_data and t.data_type in _INT32_FIELD_RANGES:
            _check_int32_field(t, src)
        elif t.HasField("raw_data") and itemsize and len(t.raw_data) != nbytes:
            raise ModelLoadError(
                f"{src.name}: tensor '{t.name}' of shape {list(t.dims)} should hold {nbytes} bytes "
                f"but holds {len(t.raw_data)}", hint="the model is truncated or corrupt; re-export it")


#: integer types ONNX stores one value per int32_data entry: a value outside the type's range is
#: silently wrapped by every reader (a uint8 zero point of 300 becomes 44), so it is refused
_INT32_FIELD_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
                       onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535)}


def _check_int32_field(t: onnx.TensorProto, src: ModelSource) -> None:
    lo, hi = _INT32_FIELD_RANGES[t.data_type]
    values = np.asarray(t.int32_data, dtype=np.int64)
    bad = (values < lo) | (values > hi)
    if bad.any():
        kind = onnx.TensorProto.DataType.Name(t.data_type).lower()
        raise ModelLoadError(f"{src.name}: tensor '{t.name}' ({kind}) holds {int(values[bad][0])}, outside "
                             f"{kind}'s range {lo}..{hi}", hint="the model is corrupt; re-export or re-quantise it")


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
