"""The vector unit's quantisation functions, ``quant`` and ``dequant``: what they read (with their
reserved-field checks) and what they compute. One function per direction serves every low-bit dtype
(int8, uint8, FP8 E4M3/E5M2, and for dequant packed int4/uint4 and int32): the instruction's dtype
field says which, so a changed dtype code changes the values (or is refused), never the graph.

Operands (VECTOR fields): src0 the data, src1 the scale (float), src2 the zero point (optional; of the
quantised dtype). ``arg`` = 0: scale and zero point broadcast over the dims their masks mark (per
tensor, per axis); ``arg`` = B > 0: one scale (and zero point) per block of B elements along dim 3,
so their dim 3 has ceil(n3 / B) entries (MatMulNBits' blocks along K).

Packed 4-bit operands: rows along dim 3 hold two elements per byte, element 2i in the low nibble (as
ONNX's int4/uint4 and ORT's MatMulNBits pack them); each row starts on a byte, so a row of n
elements is ceil(n / 2) bytes. In memory they are bytes ("u8"): what they mean is the dtype field's.

Rounding follows ONNX's QuantizeLinear: x / scale in float32, rounded half to even, plus the zero
point, saturated to the dtype's range; FP8 rounds to nearest even and saturates (saturate=1) to
the largest finite value (448 for E4M3, 57344 for E5M2). DequantizeLinear: (x - zero point) * scale
in float32.
"""

from __future__ import annotations

import math

import numpy as np

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.isa import NONE
from kcompiler.backends.npu.sim.data import F32, NP_DTYPES
from kcompiler.backends.npu.sim.faults import _Bad
from kcompiler.backends.npu.sim.vector_spec import _dense, _masked

LOWBIT_FNS = frozenset({"quant", "dequant"})
#: the dtypes quant writes and dequant reads
QUANT_DTYPES = ("i8", "u8", "f8e4m3", "f8e5m2")
DEQUANT_DTYPES = QUANT_DTYPES + ("i4", "u4", "i32")
PACKED = ("i4", "u4")
_INT_RANGE = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}
_FP8_MAX = {"f8e4m3": 448.0, "f8e5m2": 57344.0}


def _param_shape(shape, mask: int, block: int) -> tuple[int, ...]:
    """The shape of a scale or zero point of a tile of `shape`: broadcast over `mask`, and with `block`
    one entry per block of dim 3."""
    s = _masked(shape, mask)
    if block and not mask >> 3 & 1:  # (broadcast along dim 3: one for every block)
        s = s[:3] + (math.ceil(shape[3] / block),)
    return s


def _stored(shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of an operand as memory holds it: a 4-bit one as bytes, each row packed."""
    if dtype in PACKED:
        return shape[:-1] + (math.ceil(shape[-1] / 2),), "u8"
    return shape, dtype


def lowbit_accesses(dec, ins, core, f, shape, masks, axes, dt, srcs) -> list:
    """The accesses of a quant or dequant (sources first, the destination last), with their checks.
    `dt[i]` is operand i's dtype name (0 the destination, 1.. the sources)."""
    fn = isa.VFN_NAMES[ins.aux]
    block = f["arg"]
    if masks[0] or masks[1]:
        raise _Bad(f"{fn} reads and writes whole tiles (the data and destination masks are reserved: 0)")
    if fn == "quant":
        if dt[1] not in isa.FLOAT_DTYPES or dt[0] not in QUANT_DTYPES:
            raise _Bad(f"quant rounds float data to {'/'.join(QUANT_DTYPES)}, not {dt[1]} to {dt[0]}")
        q = dt[0]
    else:
        if dt[1] not in DEQUANT_DTYPES or dt[0] not in isa.FLOAT_DTYPES:
            raise _Bad(f"dequant widens {'/'.join(DEQUANT_DTYPES)} data to float, not {dt[1]} to {dt[0]}")
        q = dt[1]
    if dt[2] not in isa.FLOAT_DTYPES:
        raise _Bad(f"a scale is float, not {dt[2]}")
    if srcs[2] != NONE and dt[3] != q:
        raise _Bad(f"the zero point has the quantised data's dtype {q}, not {dt[3]}")
    if block:
        if fn == "quant" or q in ("i32",):
            raise _Bad(f"{fn} of {q} takes no block size (arg reserved: 0)")
        if masks[2] >> 3 & 1 or shape[3] == 1:
            raise _Bad("a block size needs a scale that varies along dim 3 (arg reserved: 0 for a broadcast scale)")

    def sram(i, addr, shp, dtype, write=False):
        shp, dtype = _stored(tuple(shp), dtype)
        return dec.sram(core, addr, dtype, shp, _dense(shp), write)

    out = [sram(1, srcs[0], shape, dt[1]), sram(2, srcs[1], _param_shape(shape, masks[2], block), dt[2])]
    if srcs[2] != NONE:
        out.append(sram(3, srcs[2], _param_shape(shape, masks[3], block), dt[3]))
    return out + [sram(0, f["dst"], shape, dt[0], True)]


def unpack4(raw: np.ndarray, n: int, signed: bool) -> np.ndarray:
    """The 4-bit elements of packed rows `raw` (..., ceil(n/2) bytes), as int8 (..., n)."""
    raw = np.asarray(raw, np.uint8)
    lo, hi = raw & 0xF, raw >> 4
    out = np.stack([lo, hi], axis=-1).reshape(raw.shape[:-1] + (2 * raw.shape[-1],))[..., :n].astype(np.int8)
    if signed:
        out = np.where(out >= 8, out - 16, out).astype(np.int8)
    return out


def pack4(q: np.ndarray) -> np.ndarray:
    """Rows of 4-bit values (..., n) packed two per byte, element 2i in the low nibble (the inverse of
    unpack4): what the compiler lays out for a 4-bit operand."""
    q = np.asarray(q).astype(np.int16) & 0xF
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), q.dtype)], axis=-1)
    return (q[..., 0::2] | q[..., 1::2] << 4).astype(np.uint8)


def _values(x: np.ndarray, dtype: str, n: int) -> np.ndarray:
    """An operand as float32 values (a packed 4-bit one unpacked to rows of `n`)."""
    if dtype in PACKED:
        return unpack4(x, n, dtype == "i4").astype(F32)
    if dtype in _FP8_MAX:  # bytes of the operand seen as their FP8 dtype (views keep the bits)
        x = np.asarray(x).view(NP_DTYPES[dtype]) if x.dtype == np.uint8 else x
    return np.asarray(x).astype(F32)


def _expand(p: np.ndarray, block: int, n3: int) -> np.ndarray:
    """A per-block parameter (..., ceil(n3/block)) repeated over its block's elements (..., n3)."""
    return np.repeat(p, block, axis=3)[..., :n3] if block and p.shape[3] > 1 else p


def lowbit_result(fn: str, f: dict, srcs: list[np.ndarray], dst_shape) -> np.ndarray:
    """What a quant or dequant computes, as float32 values the destination's dtype holds exactly
    (quant) or rounds (dequant)."""
    names = [isa.DTYPES[f["dtypes"] >> (4 * i) & 0xF] for i in range(4)]
    block = f["arg"]
    n3 = dst_shape[3]
    scale = _expand(srcs[1].astype(F32), block, n3)
    q = names[1] if fn == "dequant" else names[0]
    zp = None
    if len(srcs) > 2:  # its row length: that of its shape before packing (as lowbit_accesses read it)
        zn = _param_shape(tuple(dst_shape), f["bcast"] >> 12 & 0xF, block)[3]
        zp = _expand(_values(srcs[2], q, zn), block, n3)
    if fn == "dequant":
        x = _values(srcs[0], q, n3)
        if zp is not None:
            x = x - zp
        return np.broadcast_to(x * scale, dst_shape)
    y = np.asarray(srcs[0]).astype(F32) / scale
    if q in _FP8_MAX:
        m = F32(_FP8_MAX[q])
        y = np.clip(y, -m, m)  # saturate=1 (NaN stays NaN); the cast to FP8 rounds to nearest even
        return np.broadcast_to(y.astype(NP_DTYPES[q]).astype(F32), dst_shape)
    y = np.rint(y)
    if zp is not None:
        y = y + zp
    lo, hi = _INT_RANGE[q]
    return np.broadcast_to(np.clip(y, lo, hi), dst_shape)
