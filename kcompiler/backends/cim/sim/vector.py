"""The CIM chip's digital periphery: unrolling convolution inputs (IM2COL) and element-wise
functions (VOP: bias, residual, and the activations of a fused GEMM's epilogue), in float32."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.cim import isa
from kcompiler.backends.npu.vfn import gelu, gelu_tanh, hardswish, silu
from kcompiler.backends.numerics import sigmoid
from kcompiler.errors import ExecutionError

F32 = np.float32


def im2col(m, f: dict) -> None:
    """[n, c, h, w] (batch stride nstride) -> [n*oh*ow, c*kh*kw], patch order (c, kh, kw)."""
    n, c, h, w, kh, kw = f["n"], f["c"], f["h"], f["w"], f["kh"], f["kw"]
    sh, sw, pt, pl, dh, dw, oh, ow = f["sh"], f["sw"], f["pt"], f["pl"], f["dh"], f["dw"], f["oh"], f["ow"]
    if min(n, c, h, w, kh, kw, sh, sw, dh, dw, oh, ow) <= 0 or min(pt, pl) < 0 or f["nstride"] < c * h * w:
        raise ExecutionError(f"CIM program: IM2COL with impossible fields {f}")
    if max(pt, pl, kh * dh, kw * dw) > 1 << 16 or n * oh * ow * c * kh * kw > m.mem.size:
        raise ExecutionError(f"CIM program: IM2COL of {n}x{c}x{oh}x{ow} patches does not fit the memory")
    m.span(f["src"], (n - 1) * f["nstride"] + c * h * w, "IM2COL input")
    out = m.mem[m.span(f["dst"], n * oh * ow * c * kh * kw, "IM2COL output")].reshape(n, oh, ow, c, kh, kw)
    ph = max((oh - 1) * sh + (kh - 1) * dh + 1 - pt - h, 0)
    pw = max((ow - 1) * sw + (kw - 1) * dw + 1 - pl - w, 0)
    for b in range(n):
        x = m.mem[f["src"] + b * f["nstride"]:f["src"] + b * f["nstride"] + c * h * w].reshape(c, h, w)
        xp = np.pad(x, ((0, 0), (pt, ph), (pl, pw)))
        for i in range(kh):
            for j in range(kw):
                win = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                out[b, :, :, :, i, j] = win.transpose(1, 2, 0)


def _unary(fn: str, a: np.ndarray, alpha: F32, beta: F32) -> np.ndarray:
    if fn == "relu":
        return np.maximum(a, F32(0))
    if fn == "sigmoid":
        return sigmoid(a)
    if fn == "tanh":
        return np.tanh(a)
    if fn == "hardswish":
        return hardswish(a)
    if fn == "gelu":
        return gelu(a)
    if fn == "gelu_tanh":
        return gelu_tanh(a)
    if fn == "silu":
        return silu(a)
    if fn == "leakyrelu":
        return np.where(a >= 0, a, a * alpha)
    if fn == "hardsigmoid":
        return np.clip(a * alpha + beta, F32(0), F32(1))
    if fn == "clip":
        return np.minimum(np.maximum(a, alpha), beta)
    raise ExecutionError(f"CIM program: VOP function '{fn}' is not unary")


def vop(m, f: dict) -> None:
    """dst = fn(a, b): a and dst contiguous over dims d0..d3, b read with strides s0..s3."""
    if not 0 <= f["fn"] < len(isa.VOP_FNS):
        raise ExecutionError(f"CIM program: unknown VOP function {f['fn']}")
    fn = isa.VOP_FNS[f["fn"]]
    dims = (f["d0"], f["d1"], f["d2"], f["d3"])
    if min(dims) <= 0:
        raise ExecutionError(f"CIM program: VOP over dims {dims}")
    size = int(np.prod(dims))
    a = m.mem[m.span(f["a"], size, "VOP operand")].reshape(dims)
    alpha, beta = F32(isa.bits_float(f["alpha"])), F32(isa.bits_float(f["beta"]))
    if f["fn"] in isa.BINARY:
        strides = (f["s0"], f["s1"], f["s2"], f["s3"])
        if min(strides) < 0:
            raise ExecutionError(f"CIM program: VOP operand strides {strides}")
        m.span(f["b"], sum((d - 1) * s for d, s in zip(dims, strides)) + 1, "VOP second operand")
        b = np.lib.stride_tricks.as_strided(m.mem[f["b"]:], dims, tuple(4 * s for s in strides), writeable=False)
        r = a + alpha * b if fn == "add" else a * b
    else:
        r = _unary(fn, a, alpha, beta)
    m.mem[m.span(f["dst"], size, "VOP result")] = np.asarray(r, F32).reshape(-1)
