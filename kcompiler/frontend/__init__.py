"""ONNX in, validated onnx_ir.Model out."""

from kcompiler.frontend.loader import (
    CANONICAL_OPSET,
    ModelSource,
    bind_shapes,
    infer_shapes,
    load_model,
    parse_shape_spec,
    read_model_proto,
)

__all__ = ["CANONICAL_OPSET", "ModelSource", "bind_shapes", "infer_shapes", "load_model",
           "parse_shape_spec", "read_model_proto"]
