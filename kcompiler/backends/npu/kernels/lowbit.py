"""Quantisation on the NPU: QuantizeLinear / DequantizeLinear on the vector unit (``quant`` and
``dequant``, one function for every low-bit dtype: the instruction's dtype field says which), and the
FP8 GEMM ``kcompiler.Fp8MatMul`` (passes/fusion/fp8.py) on the systolic array.

Fp8MatMul runs as the GEMM kernel's tiles with FP8 A and B (one byte each moved and held), the
MATMULs at the FP8 dtype (charged at the chip's fp8 rate) accumulating exactly in float32, and an
epilogue that multiplies by sx * sw (a scalar or one per output column, a constant the compiler
makes) and, when the group ended in a QuantizeLinear, rounds to FP8 with ``quant`` by sy. ONNX
Runtime computes the same group as (x sx)(w sw) summed in float32: the products' rounding differs
by float32 ulps, which can move a result that lies on an FP8 rounding boundary by one FP8 step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Support, no
from kcompiler.backends.npu.emit import GemmDesc
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout, contiguous
from kcompiler.backends.npu.kernels.conv import ConvKernel, per_channel
from kcompiler.backends.npu.kernels.common import Kernel, Operand, broadcast_operand
from kcompiler.backends.npu.kernels.gemm import MatMulKernel
from kcompiler.backends.npu.kernels.vector import VectorKernel, VTile

F8 = (ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2)
#: the quantised dtypes the vector unit's quant writes and dequant reads (dequant also int32: biases)
QUANTISED = (ir.DataType.INT8, ir.DataType.UINT8) + F8
F32 = np.float32


# ---- QuantizeLinear / DequantizeLinear ---------------------------------------------------------
def qdq_check(node: ir.Node) -> Support:
    """A per-tensor or per-axis Q/DQ between a float and int8/uint8/FP8 (dequant also from int32):
    static shapes, constant scale and zero point, saturating FP8."""
    x, y = node.inputs[0], node.outputs[0]
    if shape(x) is None or shape(y) is None:
        return no("Q/DQ needs static shapes")
    q, f = (y, x) if node.op_type == "QuantizeLinear" else (x, y)
    allowed = QUANTISED + ((ir.DataType.INT32,) if node.op_type == "DequantizeLinear" else ())
    if q.dtype not in allowed or f.dtype not in FLOATS:
        return no(f"{node.op_type} between {f.dtype} and {q.dtype} is not lowered")
    for v in node.inputs[1:]:
        if v is not None and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    if "block_size" in node.attributes and a_int(node, "block_size", 0):
        return no("blocked Q/DQ runs on the host")
    if node.op_type == "QuantizeLinear" and a_int(node, "saturate", 1) != 1 and y.dtype in F8:
        return no("FP8 QuantizeLinear without saturation runs on the host")
    s = shape(node.inputs[1])
    if s is not None and len(s) > 1:
        return no("a scale of more than one dim (blocked) is not lowered")
    if node.inputs[1].dtype not in FLOATS:
        return no("the scale must be a float")
    return YES


class QdqKernel(VectorKernel):
    """One quant or dequant per tile: the scale (and zero point) broadcast along the op's axis."""

    def __init__(self, node, spec):
        self.fn = "quant" if node.op_type == "QuantizeLinear" else "dequant"
        super().__init__(node, spec)

    def stream_inputs(self):
        return [v for v in self.node.inputs if v is not None]

    def operands(self, cg: Codegen) -> list[Operand]:
        x = self.node.inputs[0]
        rank = len(shape(x))
        axis = a_int(self.node, "axis", 1) % max(rank, 1)
        out = [broadcast_operand(cg.layout(x), self.space)]
        for v in self.streams[1:]:
            lay = cg.layout(v)
            if opinfo.numel(v) > 1:  # per axis: [C] seen as C along `axis`, 1 elsewhere
                sh = tuple(lay.shape[0] if d == axis else 1 for d in range(rank))
                lay = Layout(lay.buf, lay.off, lay.dtype, sh, contiguous(sh))
            else:
                lay = Layout(lay.buf, lay.off, lay.dtype, (1,) * rank, (0,) * rank)
            out.append(broadcast_operand(lay, self.space))
        return out

    def streamed(self) -> int:
        """Only the data streams: the scale and zero point are one value, or one per channel (not a tile
        each: counting them so made the estimate 3x the simulated time and sent DequantizeLinear to the host)."""
        return 1

    def body(self, t: VTile):
        return [t.vec(self.fn, t.dst, list(t.src))]


# ---- the FP8 GEMM ---------------------------------------------------------------------------------
def fp8_matmul_check(node: ir.Node) -> Support:
    """An Fp8MatMul the array multiplies: both operands one FP8 format, static shapes, constant
    weights and scales, a float32 or FP8 output."""
    xq, sx, wq, sw = node.inputs[:4]
    if xq.dtype not in F8 or wq.dtype != xq.dtype:
        return no("Fp8MatMul multiplies two operands of one FP8 format")
    for v in node.inputs[1:]:
        if v is not None and v is not xq and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    if shape(xq) is None or shape(wq) is None or len(shape(wq)) != 2 or len(shape(xq)) < 2:
        return no("static shapes, 2-D weights")
    out = node.outputs[0].dtype
    if out != ir.DataType.FLOAT and out not in F8:
        return no(f"output dtype {out}")
    if opinfo.numel(sw) not in (1, shape(wq)[1]):
        return no("the weight scale is per tensor or per output column")
    return YES


_FP8_SPECS: dict = {}  # id(spec) -> (spec, its FP8 view): the tiler's caches key on the spec's identity


def _fp8_spec(spec):
    """The chip as the tiler sees FP8 operands: 1-byte elements in DMA and SRAM, MACs at its fp8 rate
    (NpuSpec.for_values covers the float dtypes only)."""
    if "fp8" not in spec.array.dtypes:
        return spec
    hit = _FP8_SPECS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    s = dataclasses.replace(spec, array=dataclasses.replace(spec.array, dtype="fp8"))
    object.__setattr__(s, "_value_dtype", "fp8")
    _FP8_SPECS[id(spec)] = (spec, s)
    return s


class _Fp8Gemm:
    """What the FP8 GEMMs share: A = xq and B = wq (inputs 0 and 2) at the chip's fp8 dtype, no fused
    epilogue of their own, the scales (and a Conv's bias, and the output quantisation) as epilogue steps."""

    base_op = "MatMul"

    def __init__(self, node, spec):
        Kernel.__init__(self, node, _fp8_spec(spec))
        self.conv = None
        self.base = self.base_op
        self.steps, self.operands = [], []
        self.base_inputs = [node.inputs[0], node.inputs[2]]
        self._init_dims()
        self.per_core = self._split()
        self.full_operands = []

    def _channel(self, lay: Layout) -> Layout:
        """A per-output-channel table as the epilogue reads it (a conv's output channels are dim 1)."""
        return lay

    def _bias_steps(self, cg: Codegen) -> list:
        """Epilogue steps between the scales and the output quantisation (a Conv's bias); none for a MatMul."""
        return []

    def _step_list(self, cg: Codegen):
        node = self.node
        xq, sx, wq, sw = node.inputs[:4]
        n = self.g * self.n

        def combined():
            s = np.asarray(opinfo.const_value(sx), F32).reshape(-1)[0] * np.asarray(opinfo.const_value(sw), F32)
            return np.broadcast_to(s.reshape(-1), (n,)) if s.size > 1 else s.reshape(1)

        size = (n,) if opinfo.numel(sw) > 1 else (1,)
        steps = [("mul", (0.0, 0.0, 0.0), self._channel(cg.const(f"{node.name}/sxsw", "f32", size, combined)))]
        bias = self._bias_steps(cg)
        steps += bias
        q_at = 4 + len(bias)  # (sy follows the bias input, if any)
        if len(node.inputs) > q_at and node.inputs[q_at] is not None:
            sy = node.inputs[q_at]
            steps.append(("quant", (0.0, 0.0, 0.0),
                          cg.const(f"{node.name}/sy", "f32", (1,),
                                   lambda: np.asarray(opinfo.const_value(sy), F32).reshape(1))))
        return steps

    def desc(self, cg: Codegen) -> GemmDesc:
        """The GEMM's desc with A = xq and B = wq (inputs 0 and 2), the epilogue of _step_list."""
        A, B, Y = cg.layout(self.node.inputs[0]), cg.layout(self.node.inputs[2]), cg.layout(self.out)
        a, b, out, conv = self._views(A, B, Y)
        steps = [(fn, float(i[0]), float(i[1]), float(i[2]), self._operand_view(cg, op, Y))
                 for fn, i, op in self._step_list(cg)]
        cores = []
        for gr, mr, nr in self.per_core:
            t = self.tiling(gr, mr, nr)
            cores.append((gr[0], gr[1], mr[0], mr[1], nr[0], nr[1], t.tm, t.tn, t.tk, 0 if t.order == "mnk" else 1))
        return GemmDesc(A.dtype, Y.dtype, self.g, self.m, self.n, self.k, a, b, out, conv, tuple(cores), tuple(steps))


class Fp8MatMulKernel(_Fp8Gemm, MatMulKernel, lowers="Fp8MatMul"):
    """MatMul of FP8 A (xq) and B (wq) with the dequantisation scales and the output quantisation as
    epilogue steps (see the module docstring)."""

    def _init_dims(self):
        a, b = shape(self.node.inputs[0]), shape(self.node.inputs[2])
        self.k, self.n = a[-1], b[-1]
        self.g, self.m, self.fold_m = 1, int(np.prod(a[:-1])), True


class Fp8ConvKernel(_Fp8Gemm, ConvKernel, lowers="Fp8Conv"):
    """A 2-D convolution of FP8 x and w on the window feeder: the scales per output channel, the float bias,
    then the output quantisation, as epilogue steps."""

    base_op = "Conv"
    w_index = 2

    def _channel(self, lay: Layout) -> Layout:
        return per_channel(lay)

    def _bias_steps(self, cg: Codegen) -> list:
        return [("add", (0.0, 0.0, 0.0), per_channel(cg.layout(self.node.inputs[4])))]  # y = conv(x sx, w sw) + b


def fp8_conv_check(node: ir.Node) -> Support:
    """An Fp8Conv the array runs: x and w one FP8 format, a 2-D convolution with static shapes, constant
    weights, scales and bias, a float32 or FP8 output."""
    xq, sx, wq, sw, b = node.inputs[:5]
    if xq.dtype not in F8 or wq.dtype != xq.dtype:
        return no("Fp8Conv convolves two operands of one FP8 format")
    for v in node.inputs[1:]:
        if v is not None and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    xs, ws, ys = shape(xq), shape(wq), shape(node.outputs[0])
    if xs is None or ws is None or ys is None or len(xs) != 4 or len(ws) != 4:
        return no("static shapes, a 2-D convolution (NCHW)")
    out = node.outputs[0].dtype
    if out != ir.DataType.FLOAT and out not in F8:
        return no(f"output dtype {out}")
    if opinfo.numel(sw) not in (1, ws[0]) or opinfo.numel(b) != ws[0] or b.dtype != ir.DataType.FLOAT:
        return no("the weight scale is per tensor or per output channel, the bias float per output channel")
    return YES
