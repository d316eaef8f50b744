"""The window registers (CONFIG) and the input rows and columns a window's taps read: shared by the
decoder (which bounds what a window MATMUL or pooling reads) and the matrix feeder."""

from __future__ import annotations

from dataclasses import dataclass

from kcompiler.backends.npu.isa import Instr
from kcompiler.backends.npu.sim.faults import _Bad


@dataclass(frozen=True)
class Window:
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    h: int
    w: int
    oh: int
    ow: int
    flags: int

    @classmethod
    def of(cls, ins: Instr) -> "Window":
        f = ins.fields()
        w = cls(**f)
        if min(w.kh, w.kw, w.sh, w.sw, w.dh, w.dw, w.h, w.w, w.oh, w.ow) < 1:
            raise _Bad("window sizes, strides and dilations must be at least 1")
        for name, used, size in (("dh", "kh", w.kh), ("dw", "kw", w.kw), ("sh", "oh", w.oh), ("sw", "ow", w.ow)):
            if size == 1 and f[name] != 1:
                raise _Bad(f"{name} means nothing when {used} is 1 (reserved: must be 1)")
        for dim, size, k, s, d, pad, out in (("rows", w.h, w.kh, w.sh, w.dh, w.pt, w.oh),
                                             ("columns", w.w, w.kw, w.sw, w.dw, w.pl, w.ow)):
            # the output extent follows from the input's, as ONNX computes it: out = floor((size + pad +
            # end pad - extent) / stride) + 1 for an end pad below extent + stride - 1 (ceil mode too)
            extent = (k - 1) * d + 1
            lo = max(0, (out - 1) * s - size - pad + extent)
            hi = min(extent + s - 2, out * s - 1 - size - pad + extent)
            if lo > hi:
                raise _Bad(f"a window of {k} taps (dilation {d}, stride {s}, pad {pad}) over {size} input {dim} "
                           f"cannot give {out} outputs")
        if w.flags & ~(1 | 0xFF << 8):
            raise _Bad(f"unknown window flags {w.flags:#x}")
        return w


def reads_pad(w: Window) -> bool:
    """Whether some tap of some output of the window falls outside the input (reads padding)."""
    return (w.pt > 0 or w.pl > 0 or (w.oh - 1) * w.sh - w.pt + (w.kh - 1) * w.dh >= w.h
            or (w.ow - 1) * w.sw - w.pl + (w.kw - 1) * w.dw >= w.w)


def pad_value(w: Window, dtype: str) -> float:
    """The value a padding tap of the matrix feeder reads: the CONFIG's pad byte in A's dtype."""
    b = w.flags >> 8 & 0xFF
    return float(b - 256 if dtype == "i8" and b >= 128 else b)


def _window_rows(w: Window, p0: int, m: int) -> tuple[int, int, int, int]:
    """(first image, images, lowest input row, highest input row + 1) the feeder reads for output
    pixels [p0, p0 + m) (rows clipped to the image; padding reads nothing)."""
    P = w.oh * w.ow
    img0, img1 = p0 // P, (p0 + m - 1) // P
    if img1 > img0:
        oh_lo, oh_hi = 0, w.oh - 1
    else:
        oh_lo, oh_hi = (p0 % P) // w.ow, ((p0 + m - 1) % P) // w.ow
    rows = _touched(oh_lo, oh_hi, w.kh, w.sh, w.dh, w.pt, w.h)
    if rows is None:
        return img0, img1 - img0 + 1, 0, 0
    return img0, img1 - img0 + 1, rows[0], rows[1]


def _window_cols(w: Window) -> tuple[int, int] | None:
    """[lowest, highest + 1) input column any output column's taps read (None: none)."""
    return _touched(0, w.ow - 1, w.kw, w.sw, w.dw, w.pl, w.w)


def _touched(o_lo: int, o_hi: int, k: int, s: int, d: int, pad: int, size: int) -> tuple[int, int] | None:
    """[lowest, highest + 1) input index o * s - pad + t * d (o in [o_lo, o_hi], t < k) inside [0, size)."""
    lo, hi = None, None
    for t in range(k):
        a, b = _valid(t, d, pad, s, size, o_hi + 1)
        a = max(a, o_lo)
        if b <= a:
            continue
        first, last = a * s - pad + t * d, (b - 1) * s - pad + t * d
        lo = first if lo is None else min(lo, first)
        hi = last + 1 if hi is None else max(hi, last + 1)
    return None if lo is None else (lo, hi)


def _valid(tap: int, dil: int, pad: int, stride: int, size: int, out: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose input index o * stride - pad + tap * dil lies in [0, size)."""
    lo = max(0, -((tap * dil - pad) // stride))
    hi = min(out, (size - 1 + pad - tap * dil) // stride + 1) if size - 1 + pad - tap * dil >= 0 else 0
    return lo, max(lo, hi)

