"""ONNX Runtime's symbolic shape inference for the values after com.microsoft ops that the rules of
contrib.py left untyped. It runs on the model's structure (large initializers passed as typed inputs,
as for ONNX's inference, so no weight is read) and its types fill the values ONNX left untyped."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from kcompiler.frontend.inference import _c_api_utils, _merge_inferred
from kcompiler.frontend.reading import ModelSource


def _untyped(model: ir.Model) -> bool:
    return any(v.dtype is None or v.shape is None for n in model.graph for v in n.outputs if v.name)


def infer_contrib_ort(model: ir.Model, src: ModelSource) -> None:
    """Fill in the types of values after com.microsoft ops that the rules left untyped, with ONNX
    Runtime's symbolic inference."""
    if _c_api_utils is None or not any(n.domain == "com.microsoft" for n in model.graph) or not _untyped(model):
        return
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # (only for such models)

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto | None:
        # the steps of SymbolicShapeInference.infer_shapes, which on an incomplete inference saves
        # "sym_shape_infer_temp.onnx" (and its weights) into the working directory before raising: the
        # types it did find are kept instead, and nothing is written
        ssi = SymbolicShapeInference(2**31 - 1, True, False, 0)
        ssi._preprocess(proto)
        while ssi.run_:
            ssi._infer_impl()
        ssi._update_output_from_vi()
        return ssi.out_mp_

    try:
        inferred = _c_api_utils.call_onnx_api(infer, model)
    except Exception as exc:  # noqa: BLE001 - an op it cannot infer: keep ONNX's types, and say so
        src.notes.append(f"contrib-op shape inference failed: {type(exc).__name__}: {exc}")
        return
    if inferred is not None:
        _merge_inferred(model, inferred)
