"""model_dtype(): the dtype a model computes at, read from its ops and weights (for the report, the bench
JSON's top-level "dtype" and `kc inspect`), whether kcompiler quantised it or the user brought it so."""

from __future__ import annotations

from typing import Any

from onnx import ModelProto, TensorProto

#: op types that compute on int8/uint8 operands (QDQ models have DequantizeLinear of int8 weights instead)
INT8_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
                      "DynamicQuantizeLinear"})
_FP8 = frozenset({TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                  TensorProto.FLOAT8E5M2FNUZ})
_INT8 = frozenset({TensorProto.INT8, TensorProto.UINT8})
_FLOATS = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16", TensorProto.FLOAT: "fp32"}


def _contents(model: Any) -> tuple[set[str], list[int]]:
    """(op types, initializer element types) of an onnx.ModelProto or an onnx_ir.Model."""
    graph = model.graph
    if isinstance(model, ModelProto):
        return {n.op_type for n in graph.node}, [t.data_type for t in graph.initializer]
    ops = {n.op_type for n in graph}
    types = [int(v.dtype) for v in graph.initializers.values() if v.dtype is not None]
    return ops, types


def model_dtype(model: Any) -> str:
    """int4 (MatMulNBits), fp8 (float 8 weights or Q/DQ), int8 (QLinear/integer ops, or DequantizeLinear of
    8-bit integers), else the float type most of the weights have: fp32, fp16 or bf16."""
    ops, types = _contents(model)
    kinds = set(types)
    if "MatMulNBits" in ops:
        return "int4"
    if kinds & _FP8:
        return "fp8"
    if ops & INT8_OPS or ("DequantizeLinear" in ops and kinds & _INT8):
        return "int8"
    floats = [_FLOATS[t] for t in types if t in _FLOATS]
    return max(set(floats), key=floats.count) if floats else "fp32"
