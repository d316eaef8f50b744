"""ONNX in, validated onnx_ir.Model out."""

from kcompiler.frontend.inference import infer_shapes
from kcompiler.frontend.loader import load_model
from kcompiler.frontend.opset import CANONICAL_OPSET
from kcompiler.frontend.reading import ModelSource, read_model_proto
from kcompiler.frontend.shapes import bind_shapes, parse_shape_spec

__all__ = ["CANONICAL_OPSET", "ModelSource", "bind_shapes", "infer_shapes", "load_model",
           "parse_shape_spec", "read_model_proto"]
