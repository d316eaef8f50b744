"""Integer GEMMs on the systolic array: QLinearConv, QLinearMatMul, com.microsoft QGemm (int8/uint8
in and out, requantised in the epilogue) and MatMulInteger, ConvInteger (int32 out).

The array multiplies the stored i8/u8 values exactly into an int32 accumulator (isa: MATMUL with
integer dtypes). Zero points as integer hardware handles them: weights are symmetric (zero point
0: a non-zero weight zero point is refused, the op stays on the host); the activation's zero point
x_zp folds, at compile time, into a per-output-channel int32 offset bias - x_zp * colsum(W), since
sum_k (x - x_zp) w = sum_k x w - x_zp sum_k w. A convolution's padding must then read as x_zp, not
0, so the window feeder's CONFIG carries the pad byte. The epilogue is one vector step, requant
(sim/intvec.py): (acc + offset) * M / 2^r rounded half to even, plus the output zero point,
saturated; its offsets and Q31 multipliers M are per-channel int32 tables the compiler lays out in DRAM
(derived in float64 from x_scale * w_scale / y_scale, as gemmlowp and TFLite do; one shift r per op,
an immediate of the instruction, fitted to the largest scale), loaded into the scratchpad like a bias. MatMulInteger / ConvInteger store the int32 accumulator,
plus the offset table (iadd) when the op has an activation zero point. A QGemm without y_scale (a
float head) adds the offsets (iadd) and multiplies the int32 sum by x_scale * w_scale per channel in
float32 (dequant of the accumulator), which is how ONNX Runtime's QGemm computes its float output.

A right operand computed at run time (QLinearMatMul / MatMulInteger of two activations: attention's
products) has no column sums to fold: the MATMULs then subtract both zero points in the feeder (the
zero-point registers of a CONFIG, isa.ZERO_POINTS), the offsets are the bias alone, and one table
entry per column serves every batch.

In timing mode no table is computed (no weight is read): only the layouts are made."""

from __future__ import annotations

import abc
import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.npu.emit import canonical_window
from kcompiler.backends.npu.kernels.attrs import a_float, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Layout
from kcompiler.backends.npu.kernels.conv import ConvKernel, per_channel
from kcompiler.backends.npu.kernels.gemm import GemmOpKernel, MatMulKernel
from kcompiler.backends.npu.sim.intvec import multiplier_shift
from kcompiler.backends.npu.sim.window import Window, reads_pad
from kcompiler.errors import LoweringError

#: per op: where its quantisation inputs are (x scale, x zero point, w scale, w zero point, y scale,
#: y zero point, int32 bias); None: the op has no such input
ROLES = {
    "QLinearConv": dict(xs=1, xzp=2, ws=4, wzp=5, ys=6, yzp=7, bias=8),
    "QLinearMatMul": dict(xs=1, xzp=2, ws=4, wzp=5, ys=6, yzp=7, bias=None),
    "QGemm": dict(xs=1, xzp=2, ws=4, wzp=5, ys=7, yzp=8, bias=6),
    "MatMulInteger": dict(xs=None, xzp=2, ws=None, wzp=3, ys=None, yzp=None, bias=None),
    "ConvInteger": dict(xs=None, xzp=2, ws=None, wzp=3, ys=None, yzp=None, bias=None),
}


def role(node, name: str):
    """The node's input playing `name` (ROLES), or None when the op or the node lacks it."""
    i = ROLES[node.op_type][name]
    return node.inputs[i] if i is not None and i < len(node.inputs) else None


def const_array(v, dtype=np.float64) -> np.ndarray | None:
    """A constant input's value flattened (None when absent or unknown, e.g. a timing-mode model)."""
    if v is None:
        return None
    c = opinfo.const_value(v)
    return None if c is None else np.asarray(c).astype(dtype).reshape(-1)


class _IntGemm(abc.ABC):
    """What the integer GEMMs add to their float lowering: B's dtype, the pad byte, the requant or
    iadd step and its per-channel tables."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.macs = self.g * self.m * self.n * self.k

    @property
    def requantised(self) -> bool:
        return ROLES[self.node.op_type]["ys"] is not None and not self.float_out

    @property
    def float_out(self) -> bool:
        """A QGemm without y_scale: a float32 output, (int32 sum + offset) * x_scale * w_scale."""
        return self.node.op_type == "QGemm" and role(self.node, "ys") is None

    @property
    def runtime_b(self) -> bool:
        """B computed at run time (attention's products): the feeder subtracts both zero points, since
        B's column sums are not known when compiling."""
        return not opinfo.is_const(self.node.inputs[self.w_index])

    def _zp(self, name: str) -> int:
        z = const_array(role(self.node, name), np.int64)
        return int(z[0]) if z is not None and z.size else 0

    def _int_fields(self, B: Layout) -> tuple:
        pad = 0
        if self.conv is not None:
            w = Window(**canonical_window(*self._conv_tuple()))
            if reads_pad(w):
                pad = self._zp("xzp") & 0xFF
        zps = (self._zp("xzp") & 0xFF, self._zp("wzp") & 0xFF) if self.runtime_b else None
        return (B.dtype, pad, zps)

    def _conv_tuple(self):
        c = self.conv
        xs = shape(self.node.inputs[0])
        return (c.kh, c.kw, self.strides[0], self.strides[1], self.dil[0], self.dil[1], self.pads[0], self.pads[1],
                0, 0, xs[2], xs[3], c.oh, c.ow)

    def _channels(self) -> int:
        # (a batched product of run-time operands: one table entry per column, broadcast over the batch)
        return self.n if self.runtime_b else self.g * self.n

    @abc.abstractmethod
    def _colsum(self, w: np.ndarray) -> np.ndarray:
        """Per output channel, the sum of its weights (the activation zero point's correction)."""

    def _weights(self) -> np.ndarray:
        wv = self.node.inputs[self.w_index]
        return np.asarray(opinfo.const_value(wv)).astype(np.int64)

    def _offsets(self) -> np.ndarray:
        """bias - x_zp * colsum(W) per output channel, as int32 (refused if it overflows)."""
        n = self._channels()
        bias = const_array(role(self.node, "bias"), np.int64)
        off = np.zeros(n, np.int64) if bias is None else np.broadcast_to(bias, (n,)).astype(np.int64)
        zp = self._zp("xzp")
        if zp and not self.runtime_b:  # (else the feeder subtracts it)
            off = off - zp * self._colsum(self._weights())
        if off.size and (off.min() < -(1 << 31) or off.max() >= 1 << 31):
            raise LoweringError(f"'{self.node.name}': bias - x_zero_point * sum(W) overflows int32")
        return off.astype(np.int32)

    def _scales(self, dtype=np.float64) -> np.ndarray:
        """x_scale * w_scale (* alpha) / y_scale per channel, in float64, or in float32 operation by
        operation as ONNX Runtime computes it (requant_f32)."""
        n = self._channels()
        xs = dtype(np.float32(const_array(role(self.node, "xs"))[0]))
        ws = np.broadcast_to(const_array(role(self.node, "ws")), (n,)).astype(np.float32).astype(dtype)
        ys = dtype(np.float32(const_array(role(self.node, "ys"))[0]))
        alpha = dtype(a_float(self.node, "alpha", 1.0) if self.node.op_type == "QGemm" else 1.0)
        return (alpha * xs * ws / ys).astype(dtype) if alpha != 1 else (xs * ws / ys).astype(dtype)

    def _out_scales(self) -> np.ndarray:
        """x_scale * w_scale per channel in float32: a float output's scale, as ONNX Runtime's QGemm takes it."""
        n = self._channels()
        xs = np.float32(const_array(role(self.node, "xs"))[0])
        return (xs * np.broadcast_to(const_array(role(self.node, "ws")), (n,)).astype(np.float32)).astype(np.float32)

    def _fixed_point(self) -> tuple[np.ndarray, int]:
        try:
            return multiplier_shift(self._scales())
        except ValueError as exc:
            raise LoweringError(f"'{self.node.name}': {exc}") from None

    def _table(self, cg, what: str, value, dtype: str = "i32") -> Layout:
        n = self._channels()
        lay = cg.const(f"{self.node.name}/{what}", dtype, (n,), value)
        return per_channel(lay) if self.conv is not None else lay

    def _step_list(self, cg):
        if self.float_out:  # the exact int32 sum plus offsets, then one float32 product by its channel's scale
            return [("iadd", (0.0, 0.0, 0.0), self._table(cg, "offset", self._offsets)),
                    ("dequant", (0.0, 0.0, 0.0), self._table(cg, "scale", self._out_scales, "f32"))]
        zp = float(self._zp("yzp"))
        # how the chip requantises (npu.vector.requant): float32 scales, as ONNX Runtime's MLAS does (its
        # results bit for bit), or Q31 multipliers and a shift
        if self.requantised and self.spec.vector.requant == "float32":
            tables = [self._table(cg, "offset", self._offsets),
                      self._table(cg, "scale", lambda: self._scales(np.float32), "f32")]
            return [("requant_f32", (zp, 0.0, 0.0), tables)]
        if self.requantised:
            # the shift is an immediate: in timing mode (no scales known) a placeholder of 31
            known = all(const_array(role(self.node, k)) is not None for k in ("xs", "ws", "ys"))
            shift = self._fixed_point()[1] if known else 31
            tables = [self._table(cg, "offset", self._offsets),
                      self._table(cg, "multiplier", lambda: self._fixed_point()[0])]
            return [("requant", (zp, float(shift), 0.0), tables)]
        if role(self.node, "xzp") is not None and not self.runtime_b:
            return [("iadd", (0.0, 0.0, 0.0), self._table(cg, "offset", self._offsets))]
        return []


class QLinearConvKernel(_IntGemm, ConvKernel, lowers="QLinearConv"):
    w_index = 3

    def _colsum(self, w):
        return w.reshape(w.shape[0], -1).sum(axis=1)


class ConvIntegerKernel(_IntGemm, ConvKernel, lowers="ConvInteger"):
    def _colsum(self, w):
        return w.reshape(w.shape[0], -1).sum(axis=1)


class QLinearMatMulKernel(_IntGemm, MatMulKernel, lowers="QLinearMatMul"):
    w_index = 3

    def _colsum(self, w):
        return w.sum(axis=0)


class MatMulIntegerKernel(_IntGemm, MatMulKernel, lowers="MatMulInteger"):
    def _colsum(self, w):
        return w.sum(axis=0)


class QGemmKernel(_IntGemm, GemmOpKernel, lowers="QGemm"):
    w_index = 3

    def _colsum(self, w):
        return w.sum(axis=1) if a_int(self.node, "transB", 0) else w.sum(axis=0)


def int_gemm_problem(node) -> str | None:
    """Why the NPU cannot run this integer GEMM (None: it can): operands i8/u8 with static shapes, the
    weights, scales and zero points constants, the weight zero point 0, the others scalars."""
    op = node.op_type
    ins = list(node.inputs) + [None] * 9
    x, w = ins[0], ins[1 if op in ("MatMulInteger", "ConvInteger") else 3]
    out = node.outputs[0]
    for v, what in ((x, "input"), (w, "weights")):
        if v is None or opinfo.shape_of(v) is None or v.dtype not in (ir.DataType.INT8, ir.DataType.UINT8):
            return f"the {what} must be int8 or uint8 with a static shape"
    if opinfo.shape_of(out) is None:
        return "the output has no static shape"
    float_out = op == "QGemm" and role(node, "ys") is None  # (a float head: float32 out)
    want = (ir.DataType.INT32,) if op in ("MatMulInteger", "ConvInteger") else \
        (ir.DataType.FLOAT,) if float_out else (ir.DataType.INT8, ir.DataType.UINT8)
    if out.dtype not in want:
        return f"output dtype {out.dtype} is not lowered"
    if float_out and role(node, "yzp") is not None:
        return "a y_zero_point without a y_scale"
    runtime = not opinfo.is_const(w)
    if runtime and op not in ("QLinearMatMul", "MatMulInteger"):
        return "the weights must be a compile-time constant"
    for name in ("xs", "xzp", "ws", "wzp", "ys", "yzp", "bias"):
        v = role(node, name)
        if v is None:
            if ROLES[op][name] is not None and (name in ("xs", "ws") or (name == "ys" and not float_out)):
                return f"its {name} input is absent"
            continue
        if not opinfo.is_const(v):
            return f"input '{v.name}' must be a compile-time constant"
        if name in ("xzp", "xs", "ys", "yzp") and opinfo.numel(v) != 1:
            return f"input '{v.name}' must be a scalar (per-tensor)"
        if runtime and name in ("ws", "wzp") and opinfo.numel(v) != 1:
            return f"input '{v.name}' must be a scalar: a run-time B is quantised per tensor"
    wz = const_array(role(node, "wzp"), np.int64)
    if not runtime and wz is not None and wz.size and np.any(wz != 0):
        return "a non-zero weight zero point (asymmetric weights) is not lowered"
    ws, wshape = role(node, "ws"), opinfo.shape_of(w)
    if op in ("QLinearMatMul", "MatMulInteger") and len(wshape) != 2 and not runtime:
        return "B must be a 2-D weight matrix"
    if runtime and (len(wshape) < 2 or len(opinfo.shape_of(x)) < 2):
        return "a run-time B and A have at least two dims"
    if op in ("QLinearConv", "ConvInteger") and (len(wshape) != 4 or len(opinfo.shape_of(x)) != 4):
        return "only 2-D convolutions (NCHW) are lowered"
    n_out = wshape[0] if op in ("QLinearConv", "ConvInteger") else (
        wshape[0] if op == "QGemm" and a_int(node, "transB", 0) else wshape[-1])
    for v in (ws, role(node, "bias")):
        if v is not None and opinfo.numel(v) not in (1, n_out):
            return f"input '{v.name}' must be per tensor or per output channel"
    if op == "QGemm" and a_int(node, "transA", 0) and math.prod(opinfo.shape_of(x)) < 1:
        return "empty input"
    return None
