"""Shape inference: ONNX's, through onnx_ir's pass with a merge that keeps non-tensor types, strict
first and without data propagation (which could materialise huge constants) until sizes are checked."""

from __future__ import annotations

import contextlib
import logging
import re

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from kcompiler.errors import ShapeError
from kcompiler.frontend.contrib import infer_contrib
from kcompiler.frontend.reading import ModelSource
from kcompiler.frontend.shapes import check_size

try:
    from onnx_ir.passes.common import _c_api_utils
except ImportError:  # another onnx_ir layout: ShapeInferencePass falls back on onnx_ir's own
    _c_api_utils = None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured_log(name: str):
    """Collect a library logger's records instead of printing them (no stray tracebacks).

    The logger's own level is set for the duration: with none, it would inherit the root
    logger's, and an application (or ORT's quantiser, which sets the root logger's level) that
    silences warnings would hide the failure record infer_shapes looks for."""
    logger = logging.getLogger(name)
    handler, propagate, level = _Records(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


_SHAPE_LOG = logging.getLogger("onnx_ir.passes.common.shape_inference")
_LOG = logging.getLogger("kcompiler.frontend")


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
        if _c_api_utils is None:  # another onnx_ir layout: its own pass, with its own merge
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


def _stale_declared(records: list[logging.LogRecord]) -> bool:
    """Whether strict inference failed on an inferred shape that contradicts a declared one."""
    failure = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None), None)
    return failure is not None and "Inferred shape and existing shape differ" in str(failure)


def _conflicts(declared: ir.Shape, inferred: ir.Shape) -> bool:
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(declared, inferred))


def _drop_stale_shapes(model: ir.Model, src: ModelSource) -> list[str]:
    """Replace declared shapes of the main graph's computed values (outputs, annotated values) that
    contradict what ONNX infers from the inputs; the names of those replaced.

    An exporter or a later edit can leave a declared shape stale (ddddocr's common.onnx declares its
    output [1, seqlen] where the graph computes a rank-3 tensor); ONNX Runtime only warns, and the
    computed shape is the one that runs. Each replaced shape is a warning and a note naming the value.
    Inputs and initializers keep theirs: those are what the shapes are inferred from."""
    declared = {v: v.shape for node in model.graph for v in node.outputs if v is not None and v.shape is not None}
    for value in declared:
        value.shape = None
    with _captured_log("onnx_ir.passes.common.shape_inference"):
        ShapeInferencePass(strict_mode=False, data_prop=False)(model)
    stale = []
    for value, old in declared.items():
        if value.shape is not None and _conflicts(old, value.shape):
            stale.append(value.name)
            got = f"rank {len(value.shape)}" if len(value.shape) != len(old) else _dims(value.shape)
            text = (f"the declared shape of '{value.name}' {_dims(old)} contradicts what the graph computes ({got}): "
                    "the declared shape is dropped (ONNX Runtime, too, runs what the graph computes)")
            _LOG.warning("%s: %s", src.name, text)
            src.notes.append(text)
        else:
            value.shape = old
    return stale


def _dims(shape: ir.Shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape) + "]"


def infer_shapes(model: ir.Model, src: ModelSource) -> None:
    """Give every value a shape and dtype where ONNX shape inference can."""
    # onnx_ir's pass does not raise: it logs the failure (with a traceback) and leaves the
    # model unchanged, so capture its log record to see whether strict inference failed.
    # First without data propagation, and check sizes: propagation materialises the values of
    # constant-derived tensors, so a 200-byte model (Add of a Range of 10^12 elements) would
    # exhaust memory inside ONNX before any size check
    with _captured_log("onnx_ir.passes.common.shape_inference") as records:
        ShapeInferencePass(strict_mode=True, data_prop=False)(model)
        if records and _stale_declared(records) and _drop_stale_shapes(model, src):
            records.clear()  # the declared shapes were the conflict: strictly again without them
            ShapeInferencePass(strict_mode=True, data_prop=False)(model)
        if not records:
            for node in model.graph:
                for value in node.outputs:
                    check_size(value, src)
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
    for _ in range(len(model.graph)):  # ORT contrib ops (QGemm, QLinearAdd) typed: infer what follows them
        if not infer_contrib(model):
            break
        with _captured_log("onnx_ir.passes.common.shape_inference"):
            ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    for node in model.graph:
        for value in node.outputs:
            check_size(value, src)


def _is_open(value: ir.Value) -> bool:
    return value.shape is None or any(not isinstance(d, int) for d in value.shape)


def open_values(graph: ir.Graph) -> list[ir.Value]:
    """The node outputs (and graph outputs) of `graph` whose shape is unknown or has a symbolic dim."""
    return [v for node in graph for v in node.outputs if v is not None and _is_open(v)]


def sync_initializer_shapes(graph: ir.Graph) -> int:
    """Give each initializer the shape of its tensor; how many changed. onnxscript's folder turns a
    node's output into an initializer and the value keeps the shape inference gave the output
    (symbolic dims after a Slice with computed bounds), which placement then reads as not static."""
    changed = 0
    for value in graph.initializers.values():
        if value.const_value is not None and value.shape != value.const_value.shape:
            value.shape = ir.Shape(value.const_value.shape)
            changed += 1
    return changed


def reinfer_open_shapes(model: ir.Model, src: ModelSource) -> int:
    """Infer again the shapes of the main graph's values that are not static; how many became static.

    ONNX inference merges what it infers into a value's existing shape and keeps an existing
    symbolic dim where it now infers a number, so once folding has made a Slice's bounds or a
    Reshape's shape constant, the values after it keep the `unk__N` dims the first inference gave
    them. Their shapes are cleared and inferred afresh; a value inference still leaves unknown
    gets its old shape back. The new static shapes pass the same size check as at load time."""
    sync_initializer_shapes(model.graph)
    opened = {v: v.shape for v in open_values(model.graph)}
    if not opened:
        return 0
    for value in opened:
        value.shape = None
    with _captured_log("onnx_ir.passes.common.shape_inference"):
        ShapeInferencePass(strict_mode=False, data_prop=False)(model)
        for value in opened:
            if value.shape is not None:
                check_size(value, src)
        ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    for value, old in opened.items():
        if value.shape is None:
            value.shape = old
    for value in opened:
        check_size(value, src)
    return sum(1 for v in opened if not _is_open(v))
