"""The integer datapath: the array's exact integer product and the vector unit's quantisation
functions (quant, dequant, requant, iadd; isa.VECTOR_FNS).

The array multiplies i8/u8 operands into an int32 accumulator exactly. The simulator forms the
product in float64, which is exact while every partial sum stays below 2^53 (K * 255 * 255 < 2^53
for any K below 10^11), then stores it as int32 (wrapping, as a 32-bit adder does).

Requantisation is the fixed-point step integer hardware and gemmlowp/TFLite use: the int32
accumulator plus an int32 per-channel offset (bias - x_zero_point * colsum(W), folded at compile
time) is multiplied by a per-channel Q31 multiplier M (an int32 below 2^31) into a 64-bit product,
shifted right by the op's r bits rounding half to even (ONNX QuantizeLinear's rounding), plus the
output zero point, saturated to the output dtype. M and r come from the real scales x_scale *
w_scale / y_scale (in float64), r fitted to the largest, so (acc + offset) * M / 2^r equals
(acc + offset) * scale to 2^-31 relative (times max scale / scale for the other channels).

ONNX Runtime's QLinearConv / QLinearMatMul / QGemm (MLAS) requantise in float32 instead:
nearbyint(float(acc + bias) * float(scale)) + zero point, with float(acc + bias) rounded to 24 bits
and the product rounded again. The two agree except where the value lies within float32's rounding
(about |acc| * 2^-24 * scale) of a half-way point between two integers: measured, one step in 3 of
802,816 elements of resnet50's first convolution (none in 100,352 of a 64-channel 3x3 layer). A deep
network propagates such steps: on resnet50 (quantised by ORT, BatchNormalization folded) 98.4% of the
logits equal ORT's, within 2 steps (benchmarks/int8_agreement.py). So requant_f32 also computes
MLAS's float32 formula, bit for bit (kernels/qgemm.py: npu.vector.requant = "float32"; resnet50's logits then
equal ORT's, all of them). QuantizeLinear (x / scale in float32, round half to even, saturate) and
DequantizeLinear ((x - zero point) * scale in float32) are computed as ONNX Runtime computes them,
bit for bit.
"""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.sim.faults import _Bad

F32 = np.float32
#: the range of each integer dtype a quantising function saturates to
RANGE = {"i8": (-128, 127), "u8": (0, 255), "i32": (-(1 << 31), (1 << 31) - 1)}
INT_FNS = frozenset({"requant", "iadd", "requant_f32"})


def imatmul_into(a: np.ndarray, b: np.ndarray, acc: np.ndarray, accumulate: bool, za: int = 0, zb: int = 0) -> None:
    """acc (+)= (a - za) @ (b - zb) exactly in int32 (wrapping), for integer operands (za, zb: the feeder's
    zero points; the float64 product is exact: 9-bit operands, K far below 2^35)."""
    p = np.matmul(a.astype(np.float64) - za, b.astype(np.float64) - zb).astype(np.int64)
    if accumulate:
        p += acc
    acc[...] = p.astype(np.int32)


def _wrap32(x: np.ndarray) -> np.ndarray:
    """int64 values wrapped to int32's range (a 32-bit adder's result), as int64."""
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def round_shift(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """p / 2^r rounded half to even, in exact int64 arithmetic (r >= 1)."""
    q = p >> r
    rem = p - (q << r)
    half = np.left_shift(np.int64(1), r - 1)
    return q + ((rem > half) | ((rem == half) & (q & 1 == 1)))


def dtype_of(f: dict, i: int) -> str:
    """Operand i's dtype name (0 the destination) from a VECTOR's dtypes field."""
    return isa.DTYPES[f["dtypes"] >> (4 * i) & 0xF]


def int_result(fn: str, f: dict, srcs: list[np.ndarray], dst_shape) -> np.ndarray:
    """What an integer-datapath VECTOR computes (before the store to the destination's dtype)."""
    dst = dtype_of(f, 0)
    if fn == "iadd":
        return np.broadcast_to(_wrap32(srcs[0].astype(np.int64) + srcs[1].astype(np.int64)), dst_shape)
    lo, hi = RANGE[dst]
    zp = int(isa.bits_f32(f["imm0"]))
    acc, off, scale = srcs
    x = _wrap32(acc.astype(np.int64) + off.astype(np.int64))
    if fn == "requant":
        m = scale.astype(np.int64)
        if m.size and m.min() < 0:
            raise _Bad("a requantisation multiplier is negative")
        q = round_shift(x * m, np.int64(isa.bits_f32(f["imm1"])))
        return np.broadcast_to(np.clip(q + zp, lo, hi), dst_shape)
    if fn == "requant_f32":  # MLAS's float requantisation, bit for bit
        q = np.rint(x.astype(F32) * scale.astype(F32)).astype(np.float64)
        return np.broadcast_to(np.clip(q + zp, lo, hi), dst_shape)
    raise AssertionError(fn)


def multiplier_shift(real: np.ndarray) -> tuple[np.ndarray, int]:
    """(Q31 multipliers, one right shift r) with real ~= M / 2^r per channel: r fits the largest scale
    (its M in [2^30, 2^31)), the others' M are smaller (relative precision 2^-31 * max / scale), as
    hardware with per-channel multipliers and a per-layer shift does; 1 <= r <= 62. Raises ValueError
    for a scale >= 2^30 or not positive."""
    real = np.asarray(real, np.float64).reshape(-1)
    if not real.size or not np.all(np.isfinite(real)) or real.min() <= 0 or real.max() >= 2.0 ** 30:
        raise ValueError("requantisation scales must be positive and below 2^30")
    _, exp = np.frexp(real.max())  # max = mant * 2^exp, mant in [0.5, 1)
    r = min(62, 31 - int(exp))
    m = np.rint(real * 2.0 ** r).astype(np.int64)
    if m.max() >= 1 << 31:  # the largest rounded up to 2^31
        r -= 1
        m = np.rint(real * 2.0 ** r).astype(np.int64)
    return m.astype(np.int32), r
