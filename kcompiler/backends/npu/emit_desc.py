"""What one GEMM-like op computes, as plain numbers (``GemmDesc``), and the geometry helpers the
emitter and the simulator's hint share: the per-group offsets, the pixel pieces of a conv tile and
the input rows its patch needs. Split from emit.py (which re-exports them); imports neither onnx
nor onnx_ir."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from kcompiler.backends.npu import isa

def _tuples(x):
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


@dataclass(frozen=True)
class GemmDesc:
    dtype: str  # A and B as stored
    out_dtype: str
    G: int
    M: int  # plain: rows; conv: pixels of all images
    N: int
    K: int
    #: plain: (buf, per-group byte offsets, s_m, s_k); conv: (buf, per-group byte offsets, s_img, s_c, s_row, s_col)
    a: tuple
    b: tuple  # (buf, per-group byte offsets, s_k, s_n): B[g, k, n]
    #: where acc[g, m, n] goes: (buf, per-group byte offsets, s_m, s_n, s_img); conv: m is the pixel of an image
    out: tuple
    #: conv: (kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, H, W, OH, OW); None for a plain GEMM
    conv: tuple | None
    #: per core: (g0, g1, m0, m1, n0, n1, tm, tn, tk, order) with order 0 = "mnk", 1 = "nmk"
    cores: tuple
    #: the epilogue: (fn, imm0, imm1, imm2, operand) with operand None or (buf, per-group byte offsets,
    #: dtype, s_m, s_n, s_img) read in the output's coordinates (stride 0: broadcast), or a tuple of
    #: such views for a step reading several (requant: offsets, multipliers, shifts)
    steps: tuple
    #: B's dtype when it differs from A's (an integer GEMM: u8 activations, i8 weights); "": A's
    b_dtype: str = ""
    #: integer conv: the byte a padding tap reads (the input zero point in A's dtype), 0 otherwise
    pad: int = 0
    #: an integer GEMM whose feeder subtracts zero points (A's byte, B's byte), or None: a right operand
    #: computed at run time, whose column sums the compiler cannot fold into the bias
    zero_points: tuple[int, int] | None = None

    @property
    def integer(self) -> bool:
        """Integer operands: an exact int32 accumulator and integer epilogue steps."""
        return self.dtype in isa.INT_DTYPES

    @property
    def acc_dtype(self) -> str:
        return "i32" if self.integer else "f32"

    @property
    def P(self) -> int:
        """Pixels per image (conv) or rows (plain): the unit along m at which s_img applies."""
        if self.conv is None:
            return self.M
        return self.conv[12] * self.conv[13]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "GemmDesc":
        d = json.loads(text)
        return cls(**{k: _tuples(v) for k, v in d.items()})


def step_views(operand) -> list:
    """The operand views of one epilogue step: none, one view, or a tuple of views."""
    if operand is None:
        return []
    return list(operand) if isinstance(operand[0], tuple) else [operand]


def _off(offs: tuple, g: int) -> int:
    return offs[g] if len(offs) > 1 else offs[0]


def m_pieces(m0: int, m1: int, P: int) -> list[tuple[int, int, int, int, int]]:
    """The pixel range [m0, m1) as (image, images, first pixel, pixels, index in the tile) pieces
    that are rectangular in (image, pixel): a partial first image, whole images, a partial last."""
    out = []
    m = m0
    while m < m1:
        img, p = divmod(m, P)
        if p == 0 and m1 - m >= P:
            n = (m1 - m) // P
            out.append((img, n, 0, P, m - m0))
            m += n * P
        else:
            take = min(P - p, m1 - m)
            out.append((img, 1, p, take, m - m0))
            m += take
    return out


def patch_rows(desc: GemmDesc, m0: int, m1: int) -> tuple[int, int, int, int]:
    """(first image, images, first input row, rows) of the input patch an output pixel range needs."""
    kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, H, W, OH, OW = desc.conv
    P = OH * OW
    img0, img1 = m0 // P, (m1 - 1) // P
    if img1 > img0:
        return img0, img1 - img0 + 1, 0, H
    oh0, oh1 = (m0 % P) // OW, ((m1 - 1) % P) // OW
    y0 = max(0, oh0 * sh - pt)
    y1 = min(H, oh1 * sh - pt + (kh - 1) * dh + 1)
    return img0, 1, y0, max(0, y1 - y0)
