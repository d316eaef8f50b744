"""The vector unit on arrays: what a VECTOR computes from its operands (elementwise functions,
reductions, normalisations, window functions) and attention's online-softmax step."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu import isa, vfn
from kcompiler.backends.npu.sim.data import F32, _f32
from kcompiler.backends.npu.sim.lowbit import lowbit_result
from kcompiler.backends.npu.sim.intvec import int_result
from kcompiler.backends.npu.sim.maskvec import mask_result
from kcompiler.backends.npu.sim.vector_spec import _VSPEC
from kcompiler.backends.npu.sim.window import Window


def vector_result(fn: str, f: dict, srcs: list[np.ndarray], dst_shape, window: "Window | None") -> np.ndarray:
    """What a VECTOR computes (float32) from its source operands (all but attention's)."""
    kind = _VSPEC[fn].kind
    if kind == "lowbit":
        return lowbit_result(fn, f, srcs, dst_shape)
    if kind == "int":
        return int_result(fn, f, srcs, dst_shape)
    if kind == "exact" or kind == "argreduce":
        return mask_result(fn, f, srcs, dst_shape)
    i0, i1, i2 = isa.bits_f32(f["imm0"]), isa.bits_f32(f["imm1"]), isa.bits_f32(f["imm2"])
    if kind == "elementwise":
        r = vfn.ELEMENTWISE[fn]([_f32(x) for x in srcs], i0, i1, i2)
        return np.broadcast_to(np.asarray(r, F32), dst_shape)
    if kind in ("reduce", "softmax", "norm", "lrn"):
        axes_mask = f["bcast"] >> 20 & 0xF
        axes = tuple(d for d in range(4) if axes_mask >> d & 1)
        x = _f32(srcs[0])
        if kind == "reduce":
            if fn == "reduce_rstd":
                return vfn.rstd(x, axes, i0)
            if fn in vfn.REDUCE_MORE:
                return vfn.REDUCE_MORE[fn](x, axes)
            return {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max,
                    "reduce_min": np.min}[fn](x, axis=axes, keepdims=True)
        if kind == "softmax":
            if fn == "hardmax":
                return vfn.hardmax(x, axes)
            if fn == "lp_normalize":
                return vfn.lp_normalize(x, axes, i0)
            return vfn.logsoftmax(x, axes) if fn == "logsoftmax" else vfn.softmax(x, axes)
        if kind == "lrn":
            return vfn.lrn(x, axes[0], f["arg"], i0, i1, i2)
        gamma = _f32(srcs[1])
        if fn == "layernorm":
            return vfn.layernorm(x, axes, i0, gamma, _f32(srcs[2]) if len(srcs) > 2 else None)
        return vfn.rmsnorm(x, axes, i0, gamma)
    if kind == "window":
        return _window_fn(fn, srcs, window)
    if kind == "loss":
        axes = tuple(d for d in range(4) if f["bcast"] >> 20 >> d & 1)
        return vfn.nll(_f32(srcs[0]), _f32(srcs[1]), _f32(srcs[2]) if len(srcs) > 2 else None, axes,
                       i0 if f["arg"] & 1 else None, bool(f["arg"] & 2))
    if kind == "attn_final":
        l_sum = _f32(srcs[1])[1][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            # a row no key was allowed to (its running sum 0) is 0, as ONNX's fully-masked-row guard says
            return np.where(l_sum == 0, F32(0), _f32(srcs[0]) / l_sum)
    raise AssertionError(kind)


def attn_step(f: dict, s: np.ndarray, mask: np.ndarray | None, state: np.ndarray | None, acc_in: np.ndarray | None,
              state_out: np.ndarray, acc_out: np.ndarray, dst: np.ndarray) -> None:
    """One score tile of online softmax: scale and mask S, update the running max and sum, rescale
    the output accumulator, write P (the probabilities) in place of S. The running sum adds P as
    written (rounded to the destination's dtype), the values the P·V matmul then reads: the output
    is divided by the sum of the weights it was actually made of."""
    scale = F32(isa.bits_f32(f["imm0"]))
    s = _f32(s) * scale
    if mask is not None:
        if mask.dtype == np.uint8:  # a boolean mask: False hides the key
            s = np.where(mask.astype(bool), s, F32(-np.inf))
        else:
            s = s + _f32(mask)
    if f["arg"] & 2:  # a band of keys: key j of query row i is allowed when imm1 <= j - i <= imm2
        rel = np.arange(s.shape[1], dtype=F32)[None, :] - np.arange(s.shape[0], dtype=F32)[:, None]
        s = np.where((rel >= F32(isa.bits_f32(f["imm1"]))) & (rel <= F32(isa.bits_f32(f["imm2"]))), s,
                     F32(-np.inf))
    if state is None:  # the first tile of a row block
        m_old = np.full(s.shape[0], -np.inf, F32)
        l_old = np.zeros(s.shape[0], F32)
        o_old = np.zeros(acc_out.shape, F32)
    else:
        m_old, l_old = _f32(state[0]), _f32(state[1])
        o_old = _f32(acc_in)
    with np.errstate(invalid="ignore"):
        m_new = np.maximum(m_old, s.max(axis=1))
        p = np.exp(s - m_new[:, None])
        corr = np.exp(m_old - m_new)
    corr = np.where(np.isneginf(m_old), F32(0), corr)
    # a row with every key so far hidden (max -inf) has no probability yet, not exp(-inf + inf)
    p = np.where(np.isneginf(m_new)[:, None], F32(0), p)
    dst[...] = p.astype(dst.dtype)
    l_new = l_old * corr + (p if dst.dtype == F32 else _f32(dst)).sum(axis=1)
    state_out[...] = np.stack([m_new, l_new]).astype(F32)
    acc_out[...] = o_old * corr[:, None]


def _window_fn(fn: str, srcs: list[np.ndarray], w: "Window") -> np.ndarray:
    x = _f32(srcs[0])  # (images, channels, h, w)
    fill = -np.inf if fn == "maxpool" else 0.0
    xp, pt, pl = _pad_planes(x, w, fill)
    taps = [(i, j) for i in range(w.kh) for j in range(w.kw)]
    if fn == "dwconv":
        wt = _f32(srcs[1])  # (channels, mult, taps)
        mult = wt.shape[1]
        out = np.zeros((x.shape[0], x.shape[1], mult, w.oh, w.ow), F32)
        for t, (i, j) in enumerate(taps):
            out += _tap(xp, w, i, j, pt, pl)[:, :, None] * wt[None, :, :, t, None, None]
        return out.reshape(x.shape[0], x.shape[1] * mult, w.oh, w.ow)
    acc = None
    for i, j in taps:
        win = _tap(xp, w, i, j, pt, pl)
        if acc is None:
            acc = np.array(win, F32)
        elif fn == "maxpool":
            np.maximum(acc, win, out=acc)
        else:
            acc += win
    return acc if fn == "maxpool" else acc / _pool_count(w)


def _pad_planes(x: np.ndarray, w: "Window", fill: float):
    """The planes padded so every tap of every output reads inside: (array, top pad, left pad)."""
    need_h = (w.oh - 1) * w.sh + (w.kh - 1) * w.dh + 1
    need_w = (w.ow - 1) * w.sw + (w.kw - 1) * w.dw + 1
    pt, pl = max(0, w.pt), max(0, w.pl)
    pb = max(0, need_h - w.pt - w.h)
    pr = max(0, need_w - w.pl - w.w)
    if pt or pl or pb or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    return x, pt, pl


def _tap(xp: np.ndarray, w: "Window", i: int, j: int, pt: int, pl: int) -> np.ndarray:
    y0 = i * w.dh - w.pt + pt
    x0 = j * w.dw - w.pl + pl
    return xp[:, :, y0: y0 + (w.oh - 1) * w.sh + 1: w.sh, x0: x0 + (w.ow - 1) * w.sw + 1: w.sw]


def _pool_count(w: "Window") -> np.ndarray:
    """How many taps of each output an average divides by: those inside the input, or with
    flags bit 0 those inside the input padded by the window's pads."""
    lo_y, hi_y, lo_x, hi_x = 0, w.h, 0, w.w
    if w.flags & 1:
        lo_y, hi_y, lo_x, hi_x = -w.pt, w.h + w.pb, -w.pl, w.w + w.pr
    oy = np.arange(w.oh)[:, None] * w.sh - w.pt + np.arange(w.kh)[None, :] * w.dh
    ox = np.arange(w.ow)[:, None] * w.sw - w.pl + np.arange(w.kw)[None, :] * w.dw
    cy = ((oy >= lo_y) & (oy < hi_y)).sum(1)
    cx = ((ox >= lo_x) & (ox < hi_x)).sum(1)
    return np.maximum(cy[:, None] * cx[None, :], 1).astype(F32)
