"""The vector unit's exact functions on masks, indices and integers: comparisons, boolean logic,
select, dtype conversion, integer arithmetic, shifts, arg-reductions and the triangle mask.

The float functions (vfn.py) widen every operand to float32. These do not: they compute in the
dtype the operands are stored in (an int64 index beyond 2^24, a uint64 shifted right, a bool), so
their results are exact. Booleans are bytes ("u8") holding 0 or 1; a nonzero byte reads as true.
Integer arithmetic wraps at the dtype's width, as a fixed-width ALU does; an integer division by
zero gives 0 (the unit raises no trap: a defined value, where C and ONNX leave it undefined).
A float operand of a comparison or arg-reduction is widened to float32 (exact for every float dtype
the NPU holds); a conversion ("cast") rounds as ONNX's Cast does, FP8 saturating when imm0 is 1.

Nothing here knows which op of which model it runs for: every value comes from the operands and
the instruction's fields (dtypes, imm0..imm2, arg).
"""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.sim.data import F32, NP_DTYPES
from kcompiler.backends.npu.sim.faults import _Bad

COMPARE = {"eq": np.equal, "lt": np.less, "gt": np.greater, "le": np.less_equal, "ge": np.greater_equal}
LOGIC = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}
INT_BINARY = {"int_add": np.add, "int_sub": np.subtract, "int_mul": np.multiply, "int_max": np.maximum,
              "int_min": np.minimum, "shl": np.left_shift, "shr": np.right_shift}
INT_UNARY = {"int_neg": np.negative, "int_abs": np.abs}
ARG = ("argmax", "argmin")
MASK_FNS = frozenset({*COMPARE, *LOGIC, "not", "where", "cast", *INT_BINARY, *INT_UNARY, "int_div", "mod",
                      *ARG, "trilu"})

INT = ("i8", "u8", "i32", "i64", "u16", "u32", "u64")
FLOAT = isa.FLOAT_DTYPES
#: FP8 formats a cast converts to and from (the fnuz ones: no negative zero, no infinities)
FP8 = ("f8e4m3", "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz")
#: the largest finite value of each FP8 format: a saturating cast clamps to it
FP8_MAX = {"f8e4m3": 448.0, "f8e5m2": 57344.0, "f8e4m3fnuz": 240.0, "f8e5m2fnuz": 57344.0}
NUMERIC = FLOAT + INT
CASTABLE = NUMERIC + FP8
BOOL = "u8"


def _same(names: list[str], idx, allowed, fn: str) -> None:
    first = names[idx[0]]
    if first not in allowed:
        raise _Bad(f"{fn} computes on {'/'.join(allowed)}, not {first}")
    for i in idx[1:]:
        if names[i] != first:
            raise _Bad(f"the operands of {fn} have one dtype ({first}), not {names[i]}")


def check_dtypes(fn: str, f: dict, names: list[str], n_src: int) -> None:
    """The operand dtypes an exact function takes (names[0] the destination, then src0..): raise _Bad
    otherwise, and for the immediates a function reads, a valid value."""
    srcs = list(range(1, n_src + 1))
    if fn in COMPARE:
        if names[0] != BOOL:
            raise _Bad(f"{fn} writes booleans (u8), not {names[0]}")
        _same(names, srcs, NUMERIC, fn)
    elif fn in LOGIC or fn == "not":
        _same(names, [0] + srcs, (BOOL,), fn)
    elif fn == "where":
        if names[1] != BOOL:
            raise _Bad(f"where's condition is boolean (u8), not {names[1]}")
        _same(names, [0, 2, 3], NUMERIC, fn)
    elif fn == "cast":
        if names[0] not in CASTABLE or names[1] not in CASTABLE:
            raise _Bad(f"cast converts between {'/'.join(CASTABLE)}, not {names[1]} to {names[0]}")
        if names[0] in FLOAT and names[1] in FLOAT:  # (one function per conversion: a changed function shows)
            raise _Bad(f"cast does not convert {names[1]} to {names[0]}: that is copy's rounding")
        sat = isa.bits_f32(f["imm0"])
        if sat not in (0.0, 1.0) or (sat and names[0] not in FP8):
            raise _Bad(f"cast's saturate flag (imm0) is 0 or 1, and 1 only to an FP8 dtype, not {sat} to {names[0]}")
        if f["arg"] not in (0, 1) or (f["arg"] and names[0] != BOOL):
            raise _Bad(f"cast's boolean flag (arg) is 0 or 1, and 1 only to u8, not {f['arg']} to {names[0]}")
    elif fn in INT_BINARY or fn in INT_UNARY or fn == "int_div":
        _same(names, [0] + srcs, INT, fn)
        if fn == "int_abs" and names[0] in ("u8", "u16", "u32", "u64"):
            raise _Bad("int_abs of an unsigned dtype (it is the identity: the compiler copies)")
    elif fn == "mod":
        _same(names, [0] + srcs, NUMERIC, fn)
        if f["arg"] not in (0, 1) or (names[0] in FLOAT and f["arg"] != 1):
            raise _Bad(f"mod's fmod flag (arg) is 0 or 1, and 1 for floats, not {f['arg']}")
    elif fn in ARG:
        if names[0] != "i64" or names[1] not in NUMERIC:
            raise _Bad(f"{fn} reads numbers and writes int64 indices, not {names[1]} to {names[0]}")
        if f["arg"] not in (0, 1):
            raise _Bad(f"{fn}'s select-last-index flag (arg) is 0 or 1, not {f['arg']}")
    elif fn == "trilu":
        _same(names, [0, 1], NUMERIC, fn)
        if names[2] != "i64":
            raise _Bad(f"trilu's diagonal offset (src1) is int64, not {names[2]}")
        if f["arg"] not in (0, 1):
            raise _Bad(f"trilu's upper flag (arg) is 0 or 1, not {f['arg']}")
        for name in ("imm0", "imm1"):
            v = isa.bits_f32(f[name])
            if not (v == int(v) and 0 <= v < 2 ** 24) or f[name] != isa.f32_bits(int(v)):  # (-0.0 too)
                raise _Bad(f"trilu's tile origin ({name}) is a row or column index, not {v!r}")
    else:
        raise AssertionError(fn)


def _num(x: np.ndarray) -> np.ndarray:
    """A float operand widened to float32 (exact), an integer one as it is."""
    return x.astype(F32) if x.dtype.kind not in "iub" else x


def cast(x: np.ndarray, src: str, dst: str, saturate: bool, to_bool: bool = False) -> np.ndarray:
    """`x` (of instruction dtype `src`) converted to `dst` as ONNX's Cast converts: floats to integers
    truncated toward zero, to a boolean (`to_bool`, a u8 destination) 1 where nonzero (NaN too), FP8
    rounded to nearest even and, saturating, clamped to the format's largest finite value (infinities
    too; NaN stays NaN)."""
    out = NP_DTYPES[dst]
    if to_bool:
        return (np.asarray(x).astype(F32) != 0 if src in FP8 else np.asarray(x) != 0).astype(out)
    if src in FP8 or src in FLOAT:
        x = np.asarray(x).astype(F32)
        if dst in FP8:
            if saturate:
                m = F32(FP8_MAX[dst])
                x = np.clip(x, -m, m)
            return x.astype(out)
        if dst in FLOAT:
            return x.astype(out)
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(out)
    x = np.asarray(x)
    if dst in FP8:  # an integer to FP8: through float32 (exact up to 2^24, then rounded once more)
        y = x.astype(F32)
        if saturate:
            y = np.clip(y, -F32(FP8_MAX[dst]), F32(FP8_MAX[dst]))
        return y.astype(out)
    return x.astype(out)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b truncated toward zero in the operands' dtype (0 where b is 0)."""
    safe = np.where(b == 0, 1, b).astype(a.dtype)
    if a.dtype.kind == "u":
        q = a // safe
    else:
        q = np.abs(a.astype(np.int64)) // np.abs(safe.astype(np.int64))
        q = np.where((a < 0) != (safe < 0), -q, q).astype(a.dtype)
    return np.where(b == 0, 0, q).astype(a.dtype)


def _mod(a: np.ndarray, b: np.ndarray, fmod: bool) -> np.ndarray:
    if a.dtype.kind == "f" or a.dtype == F32:
        return np.fmod(a, b)
    safe = np.where(b == 0, 1, b).astype(a.dtype)
    r = np.fmod(a, safe) if fmod else np.mod(a, safe)
    return np.where(b == 0, 0, r).astype(a.dtype)


def _arg(fn: str, x: np.ndarray, axis: int, last: bool) -> np.ndarray:
    x = _num(x)
    pick = np.argmax if fn == "argmax" else np.argmin
    if last:
        n = x.shape[axis]
        idx = n - 1 - pick(np.flip(x, axis=axis), axis=axis)
    else:
        idx = pick(x, axis=axis)
    return np.expand_dims(idx, axis).astype(np.int64)


def _trilu(x: np.ndarray, k: np.ndarray, row0: int, col0: int, upper: bool) -> np.ndarray:
    """x kept where (upper) column - row >= k, (lower) column - row <= k, else 0; rows along dim 2 and
    columns along dim 3 of the tile, counted from the tile's origin (row0, col0) in the matrix."""
    rows = row0 + np.arange(x.shape[2], dtype=np.int64)[:, None]
    cols = col0 + np.arange(x.shape[3], dtype=np.int64)[None, :]
    kk = np.asarray(k, np.int64).reshape(-1)[0]
    keep = (cols - rows >= kk) if upper else (cols - rows <= kk)
    return np.where(keep, x, np.zeros((), x.dtype))


def mask_result(fn: str, f: dict, srcs: list[np.ndarray], dst_shape) -> np.ndarray:
    """What an exact function computes, in the destination's dtype (broadcast to dst_shape)."""
    names = [isa.DTYPES[f["dtypes"] >> (4 * i) & 0xF] for i in range(len(srcs) + 1)]
    out = NP_DTYPES[names[0]]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if fn in COMPARE:
            r = COMPARE[fn](_num(srcs[0]), _num(srcs[1]))
        elif fn in LOGIC:
            r = LOGIC[fn](srcs[0] != 0, srcs[1] != 0)
        elif fn == "not":
            r = srcs[0] == 0
        elif fn == "where":
            r = np.where(srcs[0] != 0, srcs[1], srcs[2])
        elif fn == "cast":
            r = cast(srcs[0], names[1], names[0], bool(isa.bits_f32(f["imm0"])), bool(f["arg"]))
        elif fn in INT_BINARY:
            r = INT_BINARY[fn](srcs[0], srcs[1])
        elif fn in INT_UNARY:
            r = INT_UNARY[fn](srcs[0])
        elif fn == "int_div":
            a, b = np.broadcast_arrays(srcs[0], srcs[1])
            r = _int_div(a, b)
        elif fn == "mod":
            a, b = np.broadcast_arrays(_num(srcs[0]), _num(srcs[1]))
            r = _mod(a, b, bool(f["arg"]))
        elif fn in ARG:
            axes = f["bcast"] >> 20 & 0xF
            (axis,) = [d for d in range(4) if axes >> d & 1]
            return _arg(fn, srcs[0], axis, bool(f["arg"]))
        elif fn == "trilu":
            r = _trilu(srcs[0], srcs[1], int(isa.bits_f32(f["imm0"])), int(isa.bits_f32(f["imm1"])),
                       bool(f["arg"]))
        else:
            raise AssertionError(fn)
        return np.broadcast_to(np.asarray(r).astype(out), dst_shape)


def compute_dtype(fn: str, names: list[str]) -> str:
    """The dtype class ('f32', 'i32' or 'i64') a VECTOR of `fn` computes in, whose rate the chip's
    npu.vector.dtypes gives: every float function float32; an exact one int64 if an operand is 64-bit,
    else float32 if one is a float, else int32."""
    if fn not in MASK_FNS:
        return "f32"
    if any(n in ("i64", "u64") for n in names):
        return "i64"
    return "f32" if any(n in FLOAT or n in FP8 for n in names) else "i32"
