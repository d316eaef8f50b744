"""The device's element dtypes, and the arithmetic of FP16 scaling: the power-of-two shift that keeps
an operand or a partial sum inside FP16's range (HRANGE computes it at run time, the compiler for
constant weights)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

NP_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(ml_dtypes.bfloat16), 2: np.dtype(np.float16), 3: np.dtype(np.int64),
             4: np.dtype(np.int32)}
#: largest magnitude a scaled FP16 operand or partial sum may reach (half of FP16's 65504: headroom)
FP16_LIMIT = 2.0 ** 15


def shift_for(bound: float, limit: float = FP16_LIMIT) -> int:
    """Smallest s >= 0 with bound * 2**-s <= limit (0 for a zero or non-finite bound)."""
    if not math.isfinite(bound) or bound <= limit:
        return 0
    return int(math.ceil(math.log2(bound / limit)))


def split_shift(s: int, ea: float, eb: float, sa: int, sb: int) -> tuple[int, int]:
    """Share an extra shift s between two operands, larger scaled magnitude first (keeps both away from
    FP16's subnormal range)."""
    for _ in range(s):
        if ea * 2.0 ** -sa >= eb * 2.0 ** -sb:
            sa += 1
        else:
            sb += 1
    return sa, sb


def amax(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0

