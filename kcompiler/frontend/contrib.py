"""Types after ONNX Runtime's contrib ops (domain ``com.microsoft``: MatMulNBits from its 4-bit
quantiser, Olive or optimum). ONNX's shape inference knows no contrib op, so every value after one
would stay untyped, and neither the NPU (static shapes) nor the host (ONNX Runtime refuses an untyped
subgraph input) could take them. ONNX Runtime's own symbolic shape inference knows them: it runs on
the model's structure (large initializers passed as typed inputs, as for ONNX's inference, so no
weight is read) and its types fill the values ONNX left untyped."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from kcompiler.frontend.inference import _c_api_utils, _merge_inferred
from kcompiler.frontend.reading import ModelSource


def _untyped(model: ir.Model) -> bool:
    return any(v.dtype is None or v.shape is None for n in model.graph for v in n.outputs if v.name)


def infer_contrib(model: ir.Model, src: ModelSource) -> None:
    """Fill in the types of values after com.microsoft ops with ONNX Runtime's symbolic inference."""
    if _c_api_utils is None or not any(n.domain == "com.microsoft" for n in model.graph) or not _untyped(model):
        return
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # (only for such models)

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto | None:
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)

    try:
        inferred = _c_api_utils.call_onnx_api(infer, model)
    except Exception as exc:  # noqa: BLE001 - an op it cannot infer: keep ONNX's types, and say so
        src.notes.append(f"contrib-op shape inference failed: {type(exc).__name__}: {exc}")
        return
    if inferred is not None:
        _merge_inferred(model, inferred)
