"""Resize on the systolic array: every mode ONNX defines except tf_crop_and_resize is separable, one
1-D interpolation per axis, and a 1-D interpolation of n_in samples to n_out is a constant
(n_out, n_in) matrix (a row per output sample holding its taps' coefficients: one 1 for nearest,
two weights for linear, four for cubic, more with antialias). So a Resize of the last two axes is
two MatMuls, X @ Rw^T then Rh @ (X @ Rw^T), whose matrices the compiler writes into the program's
weight image (composite.py): the simulator interpolates from those bytes alone, and a nearest
resize is exact (one product by 1.0 per output).

The coefficients follow ONNX's reference implementation (onnx.reference.ops.op_resize), computed in
float64 from the scale as given (a float32 `scales` value, or sizes / input size)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu.cost import dma_cycles
from kcompiler.backends.npu.kernels.codegen import Layout
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.backends.npu.kernels.attrs import a_float, a_int, a_ints, a_str, shape
from kcompiler.backends.npu.kernels.copy import emit_copy
from kcompiler.backends.npu.kernels.composite import Alias, CompositeKernel, const_value, stand_in, stand_in_node
from kcompiler.backends.npu.kernels.gemm import GemmKernel

MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
POLICIES = ("stretch", "not_larger", "not_smaller")


# ---- the 1-D interpolation matrices ----------------------------------------------------------
def _coeffs(ratio: float, scale: float, mode: str, nearest: str, a: float, antialias: bool) -> np.ndarray:
    """The taps' coefficients at `ratio` in (0, 1] past the tap before the sample point."""
    if mode == "nearest":
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
              "ceil": True}[nearest]
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
    if mode == "linear":
        if not antialias:
            return np.array([1 - ratio, ratio])
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        args = (np.arange(start, 2 - start) - ratio) * s
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum()
    if not antialias:
        return np.array([((a * (ratio + 1) - 5 * a) * (ratio + 1) + 8 * a) * (ratio + 1) - 4 * a,
                         ((a + 2) * ratio - (a + 3)) * ratio * ratio + 1,
                         ((a + 2) * (1 - ratio) - (a + 3)) * (1 - ratio) * (1 - ratio) + 1,
                         ((a * ((1 - ratio) + 1) - 5 * a) * ((1 - ratio) + 1) + 8 * a) * ((1 - ratio) + 1) - 4 * a])
    s = min(scale, 1.0)
    start = int(np.floor(-2 / s) + 1)
    c = np.array([_cubic_tap(s * (i - ratio), a) for i in range(start, 2 - start)])
    return c / c.sum()


def _cubic_tap(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x * x + 1
    return a * x ** 3 - 5 * a * x * x + 8 * a * x - 4 * a if x < 2 else 0.0


def _source_coords(ctm: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Where each output sample lies in the input (ONNX's coordinate_transformation_mode)."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in
    if ctm == "align_corners":
        return np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5  # half_pixel


def axis_matrix(n_in: int, n_out: int, scale: float, mode: str, ctm: str, nearest: str = "round_prefer_floor",
                a: float = -0.75, exclude_outside: bool = False, antialias: bool = False) -> np.ndarray:
    """The (n_out, n_in) matrix of a 1-D resize: taps past the edges read the edge sample."""
    x = _source_coords(ctm, n_in, n_out, scale)
    m = np.zeros((n_out, n_in))
    for i, xi in enumerate(x):
        base = math.floor(xi)
        ratio = 1.0 if xi == base else xi - base
        c = _coeffs(ratio, scale, mode, nearest, a, antialias)
        n = len(c)
        pad = (n + 1) // 2
        xp = xi + pad
        p = math.floor(xp)
        start = p + (-(n // 2) if xp == p else -(n // 2) + 1)
        idx = np.arange(start, start + n) - pad
        if exclude_outside:
            c = np.where((idx < 0) | (idx >= n_in), 0.0, c)
            c = c / (c.sum() or 1.0)
        np.add.at(m[i], np.clip(idx, 0, n_in - 1), c)
    return m


# ---- what the node asks for -----------------------------------------------------------------
def resize_scales(node) -> list[float]:
    """Per axis: the scale the coordinate transform divides by. Raises ValueError saying why the
    node is not lowered (the check's reason)."""
    xs, ys = shape(node.inputs[0]), shape(node.outputs[0])
    r = len(xs)
    axes = [a % r for a in (a_ints(node, "axes") or range(r))]
    ins = list(node.inputs) + [None] * 4
    sc = opinfo.const_value(ins[2]) if ins[2] is not None else None
    sz = opinfo.const_value(ins[3]) if ins[3] is not None else None
    scales = [1.0] * r
    if sc is not None and sc.size:
        for d, s in zip(axes, np.asarray(sc, np.float32).reshape(-1)):
            if not s > 0:
                raise ValueError(f"scale {float(s)} of axis {d} is not positive")
            scales[d] = float(s)
        want = [int(xs[d] * scales[d]) if d in axes else xs[d] for d in range(r)]
    elif sz is not None and sz.size:
        full = list(xs)
        for d, s in zip(axes, np.asarray(sz).reshape(-1)):
            full[d] = int(s)
        ratios = [full[d] / xs[d] for d in range(r)]
        policy = a_str(node, "keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            scales, want = ratios, full
        else:
            s = (min if policy == "not_larger" else max)(ratios[d] for d in axes)
            scales = [s if d in axes else 1.0 for d in range(r)]
            want = [int(s * xs[d] + 0.5) if d in axes else xs[d] for d in range(r)]
    else:
        raise ValueError("neither scales nor sizes is given")
    if tuple(want) != tuple(ys):
        raise ValueError(f"the output shape {ys} is not the one its scales give ({tuple(want)})")
    return scales


def resize_check(node) -> Support:
    """What the matrix lowering implements (the rest runs on the host, which ONNX Runtime judges)."""
    ins = list(node.inputs)
    if len(ins) < 3:
        return no("Resize-10 (no roi input) runs on the host")
    for v in ins[1:]:
        if v is not None and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    if opinfo.is_const(ins[0]):
        return no("a constant input is folded, not resized on the NPU")
    for attr, allowed, default in (("mode", MODES, "nearest"), ("coordinate_transformation_mode", COORD_MODES,
                                   "half_pixel"), ("nearest_mode", NEAREST_MODES, "round_prefer_floor"),
                                   ("keep_aspect_ratio_policy", POLICIES, "stretch")):
        v = a_str(node, attr, default)
        if v not in allowed:
            return no(f"attribute {attr}={v!r} is not lowered (only {list(allowed)})")
    if a_int(node, "antialias", 0) and a_str(node, "mode", "nearest") == "nearest":
        return no("antialias with mode nearest is not defined")
    try:
        scales = resize_scales(node)
    except ValueError as exc:
        return no(str(exc))
    xs, ys = shape(ins[0]), shape(node.outputs[0])
    for d in range(len(xs) - 2):
        if xs[d] != ys[d] or (xs[d] > 1 and scales[d] != 1.0):
            return no(f"it resizes axis {d} (the NPU resizes the last two axes)")
    if 0 in xs or 0 in ys:
        return no("an empty tensor")
    return YES


def copy_pattern(m: np.ndarray) -> tuple[int, int, int] | None:
    """(r, q, c) when a nearest matrix picks input (o // r) * q + c for output o: each input repeated
    r times (an integer upsampling) or every q-th from c (a downsampling); None for another pattern."""
    if not np.array_equal(m, (m == 1.0).astype(m.dtype)) or not np.all(m.sum(axis=1) == 1):
        return None
    idx = m.argmax(axis=1)
    n_out, n_in = m.shape
    o = np.arange(n_out)
    if n_out % n_in == 0 and np.array_equal(idx, o // (n_out // n_in)):
        return n_out // n_in, 1, 0
    q = int(idx[1] - idx[0]) if n_out > 1 else 1
    if q >= 1 and np.array_equal(idx, o * q + idx[0]):
        return 1, q, int(idx[0])
    return None


class NearestCopyKernel(Kernel):
    """A nearest Resize whose picks are a repeat or a stride along both axes: one DMA copy on core 0
    whose source strides say which input each output reads (0 along a repeat), no arithmetic."""

    kind = "copy"

    def __init__(self, node, spec, plans: list[tuple[int, int, int]]):
        super().__init__(node, spec)
        self.plans = plans

    def cost(self) -> Cost:
        lat = int(self.spec.dram.latency_s * self.spec.clock_hz)
        return Cost(cycles=dma_cycles(2 * opinfo.numel(self.out) * self.spec.elem_bytes, self.spec.dram_bytes_per_cycle,
                                      lat) + self.spec.issue_cycles)

    def emit(self, cg, op):
        xl, ol = cg.layout(self.node.inputs[0]), cg.layout(self.out)
        (rh, qh, ch), (rw, qw, cw) = self.plans
        xs, os_ = xl.strides, ol.strides
        oh, ow = ol.shape[-2], ol.shape[-1]
        dst = Layout(ol.buf, ol.off, ol.dtype, (*ol.shape[:-2], oh // rh, rh, ow // rw, rw),
                     (*os_[:-2], rh * os_[-2], os_[-2], rw * os_[-1], os_[-1]))
        emit_copy(cg, op, xl, dst, src_strides=(*xs[:-2], qh * xs[-2], 0, qw * xs[-1], 0),
                  src_off=xl.off + (ch * xs[-2] + cw * xs[-1]) * xl.esize)


class ResizeKernel(CompositeKernel):
    """Resize of the last two axes: a MatMul by the transposed width matrix (the leading axes
    folded into its rows), then the height matrix as a 1x1 convolution over the planes viewed as
    (planes, H, 1, width) images of H channels (one GEMM whose weights stay in the array, not one
    small GEMM per plane), either skipped when it is the identity, a BARRIER between them."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        x, out = node.inputs[0], self.out
        xs, ys = shape(x), shape(out)
        scales = resize_scales(node)
        kw = dict(mode=a_str(node, "mode", "nearest"), ctm=a_str(node, "coordinate_transformation_mode", "half_pixel"),
                  nearest=a_str(node, "nearest_mode", "round_prefer_floor"), a=a_float(node, "cubic_coeff_a", -0.75),
                  exclude_outside=bool(a_int(node, "exclude_outside", 0)), antialias=bool(a_int(node, "antialias", 0)))
        r = len(xs)
        mats = {d: axis_matrix(xs[d], ys[d], scales[d], **kw) for d in range(max(0, r - 2), r)}
        steps = [d for d in sorted(mats, reverse=True) if mats[d].shape[0] != mats[d].shape[1]
                 or not np.array_equal(mats[d], np.eye(xs[d]))]
        if not steps:  # an identity resize still writes its output: a MatMul by the identity
            steps = [r - 1]
        self.matrices = {d: mats[d] for d in steps}
        plans = [copy_pattern(mats[d]) for d in range(r - 2, r)] if r >= 2 and kw["mode"] == "nearest" else [None]
        if None not in plans:
            self.kind = "copy"
            self.add(NearestCopyKernel(node, spec, plans))
            return
        base = out.name or node.name
        cur = stand_in(x)
        if r - 1 in steps:  # along the last axis: cur @ M^T
            m = mats[r - 1]
            nxt = stand_in(out) if steps == [r - 1] else stand_in(x, f"{base}/resize_w", xs[:-1] + (ys[-1],))
            w = const_value(f"{base}/resize_matrix_w", x.dtype, (m.shape[1], m.shape[0]), lambda m=m: m.T)
            self.add(GemmKernel(stand_in_node("MatMul", [cur, w], nxt, f"{node.name}/resize_w"), spec))
            cur = stand_in(nxt)
        if r - 2 in steps:
            self._height_step(node, spec, cur, mats[r - 2], base)

    def _height_step(self, node, spec, cur, m, base):
        """M @ cur over the second-to-last axis: a plain MatMul for a 2-D input, else a 1x1 Conv."""
        cs, ys = shape(cur), shape(self.out)
        w_name = f"{base}/resize_matrix_h"
        if len(cs) == 2:
            w = const_value(w_name, cur.dtype, m.shape, lambda: m)
            self.add(GemmKernel(stand_in_node("MatMul", [w, cur], stand_in(self.out), f"{node.name}/resize_h"), spec))
            return
        planes = math.prod(cs[:-2])
        src = Alias(f"{base}/resize_h_in", cur, (planes, cs[-2], 1, cs[-1]))
        dst = Alias(f"{base}/resize_h_out", stand_in(self.out), (planes, ys[-2], 1, ys[-1]))
        w = const_value(w_name, cur.dtype, m.shape + (1, 1), lambda: m[:, :, None, None])
        attrs = [ir.AttrInt64s("kernel_shape", [1, 1])]
        conv = stand_in_node("Conv", [src.value(cur.dtype), w], dst.value(cur.dtype), f"{node.name}/resize_h", attrs)
        self.add(GemmKernel(conv, spec), [src, dst])
