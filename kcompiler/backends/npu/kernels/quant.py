"""QuantizeLinear and DequantizeLinear (int8/uint8, per tensor or per axis; int32 for a bias's
DequantizeLinear) on the vector unit, so a quantised model's boundaries run on the NPU too: one
`quant` or `dequant` VECTOR per tile (sim/intvec.py: x / scale rounded half to even, plus the zero
point, saturated; (x - zero point) * scale), the scale and zero point read as operands broadcast
along every axis but the quantisation axis."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Layout
from kcompiler.backends.npu.kernels.common import broadcast_operand
from kcompiler.backends.npu.kernels.vector import VectorKernel
from kcompiler.backends.base import YES, Support, no

_I8 = (ir.DataType.INT8, ir.DataType.UINT8)


class QuantLinearKernel(VectorKernel):
    """QuantizeLinear (fn quant) or DequantizeLinear (fn dequant)."""

    def __init__(self, node, spec):
        self.fn = "quant" if node.op_type == "QuantizeLinear" else "dequant"
        super().__init__(node, spec)

    def stream_inputs(self):
        return [v for v in self.node.inputs if v is not None]

    def operands(self, cg):
        x, *params = self.stream_inputs()
        rank = len(self.space)
        axis = a_int(self.node, "axis", 1) % max(rank, 1)
        ops = [broadcast_operand(cg.layout(x), self.space)]
        for v in params:
            lay = cg.layout(v)
            if opinfo.numel(v) > 1:  # per axis: one value per index of `axis`
                n = lay.shape[0]
                lay = Layout(lay.buf, lay.off, lay.dtype, (n,) + (1,) * (rank - axis - 1),
                             (lay.strides[0],) + (0,) * (rank - axis - 1))
            ops.append(broadcast_operand(lay, self.space))
        return ops

    def body(self, t):
        return [t.vec(self.fn, t.dst, t.src)]


def quant_linear_check(node) -> Support:
    """The Q/DQ the vector unit runs: static shapes, a float32 scale per tensor or per axis (no
    blocks), int8/uint8 (and int32 for DequantizeLinear) integers."""
    ins = [v for v in node.inputs]
    x, scale = ins[0], ins[1] if len(ins) > 1 else None
    zp = ins[2] if len(ins) > 2 else None
    out = node.outputs[0]
    for v in (x, scale, zp, out):
        if v is not None and opinfo.shape_of(v) is None:
            return no(f"'{v.name}' has no static shape")
    if scale is None or scale.dtype != ir.DataType.FLOAT:
        return no("the scale must be float32")
    if a_int(node, "block_size", 0):
        return no("blocked quantisation is not lowered")
    q = out if node.op_type == "QuantizeLinear" else x
    f = x if node.op_type == "QuantizeLinear" else out
    ints = _I8 + ((ir.DataType.INT32,) if node.op_type == "DequantizeLinear" else ())
    if q.dtype not in ints:
        return no(f"dtype {q.dtype} (the NPU quantises to int8/uint8)")
    if f.dtype not in FLOATS or (node.op_type == "QuantizeLinear" and f.dtype != ir.DataType.FLOAT):
        return no(f"float side {f.dtype} is not lowered")
    if zp is not None and zp.dtype != q.dtype:
        return no("the zero point's dtype is not the quantised values'")
    rank = len(shape(x))
    axis = a_int(node, "axis", 1)
    for v in (scale, zp):
        if v is None or opinfo.numel(v) == 1:
            continue
        if len(shape(v)) != 1 or not -rank <= axis < rank or shape(v)[0] != shape(x)[axis % rank]:
            return no("a scale or zero point must be per tensor or 1-D along the axis")
    return YES
