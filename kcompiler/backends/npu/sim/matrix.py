"""The matrix unit on arrays: the float32 product into the accumulator (one BLAS call per group,
oriented as the accumulator is) and the feeder that builds A from a window's patch."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu.sim.data import F32, _f32
from kcompiler.backends.npu.sim.window import Window, _valid


def matmul_into(a: np.ndarray, b: np.ndarray, acc: np.ndarray, accumulate: bool) -> None:
    """acc (+)= a @ b in float32 (operands widened exactly; one BLAS call per group).

    The product is formed in the accumulator's orientation (as (b.T @ a.T).T when its rows are
    strided and its columns not), so storing or adding it streams through memory: numpy's
    `+=` between a row-major product and a column-major view measured 5x slower than the
    product itself. An operand strided in both of its last two dims is packed first (numpy's
    matmul would take a slow non-BLAS loop)."""
    a, b = _blasable(_f32(a)), _blasable(_f32(b))
    st = acc.strides
    if len(st) >= 2 and abs(st[-2]) < abs(st[-1]):
        x, y, dst = b.swapaxes(-1, -2), a.swapaxes(-1, -2), acc.swapaxes(-1, -2)
    else:
        x, y, dst = a, b, acc
    if not accumulate and dst.ndim == 2 and dst.flags.c_contiguous:
        np.matmul(x, y, out=dst)  # straight into the accumulator: no temporary to copy
    elif accumulate:
        dst += np.matmul(x, y)
    else:
        dst[...] = np.matmul(x, y)


def _blasable(x: np.ndarray) -> np.ndarray:
    e = x.itemsize
    if x.ndim >= 2 and x.strides[-1] != e and x.strides[-2] != e and x.shape[-1] > 1 and x.shape[-2] > 1:
        return np.ascontiguousarray(x)
    return x


class WindowCols:
    """How a window MATMUL's feeder builds A[m, k] (k = (channel, tap row, tap column), m = output
    pixels p0.. of the window's images; zero where a tap falls outside the image) from the patch
    elements it reads: `box`, input rows [ylo, ...) and columns [xlo, ...) of the images from p0's
    on (images, channels, rows, columns), or None when it reads none. Worked out once per
    instruction; the reference walk and the replay call the same object, so they build the same A."""

    _cache: dict = {}

    @classmethod
    def of(cls, w: "Window", p0: int, m: int, k: int, ylo: int, xlo: int, pad: float = 0.0) -> "WindowCols":
        key = (w, p0, m, k, ylo, xlo, pad)
        hit = cls._cache.get(key)
        if hit is None:
            if len(cls._cache) > 4096:
                cls._cache.clear()
            hit = cls._cache[key] = cls(w, p0, m, k, ylo, xlo, pad)
        return hit

    def __init__(self, w: "Window", p0: int, m: int, k: int, ylo: int, xlo: int, pad: float = 0.0):
        self.c, self.kh, self.kw, self.m, self.k = k // (w.kh * w.kw), w.kh, w.kw, m, k
        #: what a tap outside the image reads (an integer conv's input zero point; else 0)
        self.pad = pad
        P = w.oh * w.ow
        img0 = p0 // P
        #: per image segment: (box image, pixels [lo, hi) of A, output rows [oh0, oh1), first pixel in
        #: them, taps [(i, j, dst rows, dst cols, src rows, src cols)])
        self.segments = []
        p = p0
        while p < p0 + m:
            img, rem = divmod(p, P)
            end = min(p0 + m, (img + 1) * P)
            oh0, oh1 = rem // w.ow, (end - 1 - img * P) // w.ow + 1
            taps = []
            for i in range(w.kh):
                ra, rb = _valid(i, w.dh, w.pt, w.sh, w.h, w.oh)
                ra, rb = max(ra, oh0), min(rb, oh1)
                if rb <= ra:
                    continue
                y0 = ra * w.sh - w.pt + i * w.dh - ylo
                for j in range(w.kw):
                    ca, cb = _valid(j, w.dw, w.pl, w.sw, w.w, w.ow)
                    if cb <= ca:
                        continue
                    x0 = ca * w.sw - w.pl + j * w.dw - xlo
                    taps.append((i, j, slice(ra - oh0, rb - oh0), slice(ca, cb),
                                 slice(y0, y0 + (rb - ra - 1) * w.sh + 1, w.sh),
                                 slice(x0, x0 + (cb - ca - 1) * w.sw + 1, w.sw)))
            self.segments.append((img - img0, p - p0, end - p0, oh0, oh1, rem - oh0 * w.ow, w.ow, taps))
            p = end

    def __call__(self, box: np.ndarray | None) -> np.ndarray:
        if box is not None and len(self.segments) == 1 and self.kh == self.kw == 1:
            img, lo, hi, oh0, oh1, first, ow, taps = self.segments[0]
            if len(taps) == 1:
                # one tap: A is the patch itself when each channel's pixels are one run of it
                _, _, dr, dc, sr, sc = taps[0]
                x = box[img][:, sr, sc]
                e = x.itemsize
                if x.shape[1:] == (oh1 - oh0, ow) and x.strides[2] == e and x.strides[1] == ow * e:
                    x = x[:, first // ow:, first % ow:]
                    return np.lib.stride_tricks.as_strided(x, (self.k, self.m), (x.strides[0], e),
                                                           writeable=False).T
        out = np.full((self.c, self.kh, self.kw, self.m), self.pad, F32)
        if box is not None:
            for img, lo, hi, oh0, oh1, first, ow, taps in self.segments:
                whole = first == 0 and (hi - lo) == (oh1 - oh0) * ow
                # whole output rows: write the taps straight into A; else through the rows they cover
                rows = out[..., lo:hi].reshape(self.c, self.kh, self.kw, oh1 - oh0, ow) if whole else \
                    np.full((self.c, self.kh, self.kw, oh1 - oh0, ow), self.pad, F32)
                x = box[img]
                for i, j, dr, dc, sr, sc in taps:
                    rows[:, i, j, dr, dc] = x[:, sr, sc]
                if not whole:
                    out[..., lo:hi] = rows.reshape(self.c, self.kh, self.kw, -1)[..., first: first + (hi - lo)]
        return out.reshape(self.k, self.m).T

