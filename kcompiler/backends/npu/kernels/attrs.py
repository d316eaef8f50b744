"""Reading an ONNX node for lowering: the float types the NPU claims, instruction dtypes of
values, attributes with their defaults, and small constant inputs (axes, pads, clip bounds)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo

#: the float types the NPU claims: float32, and float16 / bfloat16, which it moves at their own
#: size and computes in float32 (accumulating in float32), rounding each op's output to them
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_CHIP_DTYPE = {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}
#: ONNX dtype -> instruction dtype of the values a program moves
IR_DTYPE = {ir.DataType.FLOAT: "f32", ir.DataType.FLOAT16: "f16", ir.DataType.BFLOAT16: "bf16",
            ir.DataType.INT64: "i64", ir.DataType.INT32: "i32", ir.DataType.INT8: "i8", ir.DataType.BOOL: "u8",
            ir.DataType.UINT8: "u8", ir.DataType.FLOAT8E4M3FN: "f8e4m3", ir.DataType.FLOAT8E5M2: "f8e5m2",
            ir.DataType.FLOAT8E4M3FNUZ: "f8e4m3fnuz", ir.DataType.FLOAT8E5M2FNUZ: "f8e5m2fnuz",
            ir.DataType.UINT16: "u16", ir.DataType.UINT32: "u32", ir.DataType.UINT64: "u64"}


#: the integer GEMMs (kernels/qgemm.py): their values are int8/uint8 whatever their float scales
INT_GEMMS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"})


def value_dtype(node: ir.Node) -> str:
    """The chip dtype name ('fp16', 'bf16', or 'fp32') of the float values a node moves ('int8' for
    an integer GEMM)."""
    if node.op_type in INT_GEMMS:
        return "int8"
    for v in (*node.outputs, *node.inputs):
        if v is not None and v.dtype in FLOATS:
            return _CHIP_DTYPE.get(v.dtype, "fp32")
    return "fp32"


# ---- attribute helpers ---------------------------------------------------------------------
def a_int(node, name, default):
    """Integer attribute `name` of `node`, or `default`."""
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def a_float(node, name, default):
    """Float attribute `name` of `node`, or `default`."""
    a = node.attributes.get(name)
    return default if a is None else float(a.value)


def a_ints(node, name, default=None):
    """Integer-list attribute `name` of `node`, or `default`."""
    a = node.attributes.get(name)
    return default if a is None else [int(x) for x in a.value]


def a_str(node, name, default):
    """String attribute `name` of `node` (bytes decoded), or `default`."""
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    return v.decode() if isinstance(v, bytes) else str(v)


def a_strs(node, name, default=()):
    """String-list attribute `name` of `node` (bytes decoded), or `default` as a list."""
    a = node.attributes.get(name)
    return list(default) if a is None else [x.decode() if isinstance(x, bytes) else str(x) for x in a.value]


def shape(v) -> tuple[int, ...]:
    """The static shape of value `v` (opinfo.shape_of)."""
    return opinfo.shape_of(v)


def const_ints(v) -> list[int] | None:
    """A constant input's values as a flat list of ints, None if not constant."""
    c = opinfo.const_value(v)
    return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]


def const_scalar(v) -> float | None:
    """A small constant's value as a float (an instruction immediate), None if not constant."""
    if v is None or opinfo.numel(v) > 16:
        return None
    c = opinfo.const_value(v)
    return None if c is None or np.asarray(c).size < 1 else float(np.asarray(c, np.float64).reshape(-1)[0])

