"""LSTM on the NPU as GEMMs and vector ops, step by step (composite.py): the input projection of every
step at once, X (T*B, I) @ W^T + (Wb + Rb), is one GEMM; then per step and direction the recurrent
GEMM h @ R^T plus that step's projection, a sigmoid over the i, o, f gates and a tanh over the cell
gate (strided views of the gate rows, ONNX's iofc order), c = f * c + i * g and h = o * tanh(c),
h written straight into Y. Every part is a kernel the backend already lowers; a BARRIER separates
consecutive parts, so a step reads what the one before wrote. The transposed weights and summed
biases are constants the compiler writes into the weight image.

What is lowered: forward, reverse and bidirectional LSTMs with the default activations, no clip,
no peepholes, input_forget 0, layout 0, and no sequence_lens (or all of them the full length)."""

from __future__ import annotations

import numpy as np

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu.cost import dma_cycles
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_int, a_str, a_strs, shape
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.backends.npu.kernels.composite import Alias, CompositeKernel, const_value, stand_in, stand_in_node
from kcompiler.backends.npu.kernels.copy import emit_copy
from kcompiler.backends.npu.kernels.elementwise import ElementwiseKernel
from kcompiler.backends.npu.kernels.gemm import GemmKernel

DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}


def _inputs(node) -> list:
    return list(node.inputs) + [None] * (8 - len(node.inputs))


def _used(v) -> bool:
    return v is not None and bool(v.name) and (bool(v.uses()) or v.is_graph_output())


def recurrent_check(node) -> Support:
    x, w, r, b, seq, h0, c0, p = _inputs(node)
    for v in (x, h0, c0, *node.outputs):
        if v is None or (v.producer() is node and not _used(v)):
            continue
        if opinfo.shape_of(v) is None:
            return no(f"'{v.name}' has no static shape")
        if v.dtype not in FLOATS:
            return no(f"'{v.name}' has dtype {v.dtype} (the NPU claims float32, float16 and bfloat16 ops)")
    for v, what in ((w, "W"), (r, "R"), (b, "B")):
        if v is not None and not opinfo.is_const(v):
            return no(f"its {what} must be a compile-time constant")
    if p is not None:
        return no("peepholes (input P) are not lowered")
    acts = a_strs(node, "activations", ())
    default = DEFAULT_ACTIVATIONS[node.op_type]
    if acts and tuple(acts) not in (default, default * 2):
        return no(f"activations {acts} are not lowered (only sigmoid, tanh, tanh)")
    if node.attributes.get("clip") is not None or a_int(node, "input_forget", 0) or a_int(node, "layout", 0):
        return no("clip, input_forget and layout=1 are not lowered")
    if a_str(node, "direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return no("unknown direction")
    if seq is not None:
        lens = opinfo.const_value(seq) if opinfo.is_const(seq) else None
        if lens is None or not np.all(np.asarray(lens) == shape(x)[0]):
            return no("sequence_lens shorter than the sequence run on the host")
    if 0 in shape(x):
        return no("an empty sequence")
    return YES


class _CopyPart(Kernel):
    """Copies one view to another (the last h or c into Y_h / Y_c), core 0's DMA."""

    kind = "copy"

    def __init__(self, node, spec, src: Alias, dst: Alias):
        super().__init__(node, spec)
        self.src, self.dst = src, dst

    def cost(self) -> Cost:
        n = int(np.prod(self.dst.shape)) * self.spec.elem_bytes
        return Cost(cycles=dma_cycles(2 * n, self.spec.dram_bytes_per_cycle,
                                      int(self.spec.dram.latency_s * self.spec.clock_hz)) + self.spec.issue_cycles)

    def emit(self, cg, op):
        self.src.lay_out(cg)
        self.dst.lay_out(cg)
        emit_copy(cg, op, cg.layouts[self.src.name], cg.layouts[self.dst.name])


class RecurrentKernel(CompositeKernel):
    """An LSTM or GRU, step by step (the module docstring): each direction's steps (`_direction`),
    then the last h (and c) copied into Y_h (and Y_c) when they are read."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        x, w, r, b, _, h0, c0, _ = _inputs(node)
        self.t_len, self.batch, self.n_in = shape(x)
        self.hid = a_int(node, "hidden_size", shape(r)[-1])
        dirs = {"forward": [0], "reverse": [1], "bidirectional": [0, 1]}[a_str(node, "direction", "forward")]
        self.n_dir = len(dirs)
        self.base = base = self.out.name or node.name
        outs = list(node.outputs) + [None] * 3
        self.y = outs[0] if _used(outs[0]) else None
        hs_shape = (self.t_len, self.n_dir, self.batch, self.hid)
        self.hs = stand_in(self.y) if self.y is not None else stand_in(x, f"{base}/lstm_hs", hs_shape)
        self.dt = x.dtype
        self._last: dict[int, dict[str, Alias]] = {}
        for d, reverse in enumerate(dirs):
            self._direction(node, spec, d, bool(reverse), w, r, b, h0, c0)
        for out, src_name in ((outs[1], "h"), (outs[2], "c")):
            if _used(out):
                for d, reverse in enumerate(dirs):
                    self.add(_CopyPart(node, spec, self._last[d][src_name],
                                       Alias(f"{out.name}/lstm_d{d}", stand_in(out), (self.batch, self.hid),
                                             offset=d * self.batch * self.hid)))

    def _ew(self, op, ins, out, name, spec, aliases=()):
        self.add(ElementwiseKernel(stand_in_node(op, ins, out, name), spec), list(aliases))

    def _projection(self, spec, p, d, w, b, gates, biases):
        """G = X (T*B, I) @ W_d^T + bias for every step at once: (T*B, gates*H); `biases(b_d)` sums
        the (2 * gates * H,) bias row into the (gates * H,) one the projection adds."""
        t_len, bsz, hid, n_in, dt = self.t_len, self.batch, self.hid, self.n_in, self.dt
        wd = const_value(f"{p}_wt", dt, (n_in, gates * hid), lambda: np.asarray(opinfo.const_value(w), np.float64)[d].T)
        bias = const_value(f"{p}_b", dt, (gates * hid,), lambda: (
            np.zeros(gates * hid) if b is None else biases(np.asarray(opinfo.const_value(b), np.float64)[d])))
        xs = Alias(f"{p}_x", stand_in(self.node.inputs[0]), (t_len * bsz, n_in))
        g_all = stand_in(self.node.inputs[0], f"{p}_g", (t_len * bsz, gates * hid))
        self.add(GemmKernel(stand_in_node("Gemm", [xs.value(dt), wd, bias], g_all, f"{p}_proj"), spec), [xs])
        return g_all


class LstmKernel(RecurrentKernel):
    def _direction(self, node, spec, d, reverse, w, r, b, h0, c0):
        t_len, bsz, hid, dt, base = self.t_len, self.batch, self.hid, self.dt, self.base
        p = f"{base}/lstm_d{d}"
        rd = const_value(f"{p}_rt", dt, (hid, 4 * hid), lambda: np.asarray(opinfo.const_value(r), np.float64)[d].T)
        g_all = self._projection(spec, p, d, w, b, 4, lambda bd: bd.reshape(2, -1).sum(0))
        z = stand_in(g_all, f"{p}_z", (bsz, 4 * hid))
        sig = stand_in(g_all, f"{p}_sig", (bsz, 3 * hid))
        cell = stand_in(g_all, f"{p}_cell", (bsz, hid))
        fc, ig, tc = (stand_in(g_all, f"{p}_{n}", (bsz, hid)) for n in ("fc", "ig", "tc"))
        c = stand_in(g_all, f"{p}_c", (bsz, hid))
        h_prev = None if h0 is None else Alias(f"{p}_h0", stand_in(h0), (bsz, hid), offset=d * bsz * hid)
        c_prev = None if c0 is None else Alias(f"{p}_c0", stand_in(c0), (bsz, hid), offset=d * bsz * hid)
        h_last = None
        for step in range(t_len):
            t = t_len - 1 - step if reverse else step
            q = f"{p}_t{t}"
            g_t = Alias(f"{q}_g", g_all, (bsz, 4 * hid), offset=t * bsz * 4 * hid)
            if h_prev is None:  # a zero initial state: the gates are the projection alone
                gates = g_t
            else:
                self.add(GemmKernel(stand_in_node("Gemm", [h_prev.value(dt), rd, g_t.value(dt)], stand_in(z),
                                                  f"{q}_rec"), spec), [h_prev, g_t])
                gates = Alias(f"{q}_z", z, (bsz, 4 * hid))
            iof = Alias(f"{q}_iof", gates.src, (bsz, 3 * hid), (4 * hid, 1), gates.offset)
            cg_ = Alias(f"{q}_cg", gates.src, (bsz, hid), (4 * hid, 1), gates.offset + 3 * hid)
            self._ew("Sigmoid", [iof.value(dt)], stand_in(sig), f"{q}_sigmoid", self.spec, [iof])
            self._ew("Tanh", [cg_.value(dt)], stand_in(cell), f"{q}_tanh_g", self.spec, [cg_])
            i_, o_, f_ = (Alias(f"{q}_{n}", sig, (bsz, hid), (3 * hid, 1), k * hid) for k, n in enumerate("iof"))
            if c_prev is None:  # a zero initial cell: c = i * g
                self._ew("Mul", [i_.value(dt), stand_in(cell)], stand_in(c), f"{q}_c", self.spec, [i_])
            else:
                self._ew("Mul", [i_.value(dt), stand_in(cell)], stand_in(ig), f"{q}_ig", self.spec, [i_])
                self._ew("Mul", [f_.value(dt), c_prev.value(dt)], stand_in(fc), f"{q}_fc", self.spec, [f_, c_prev])
                self._ew("Add", [stand_in(fc), stand_in(ig)], stand_in(c), f"{q}_c", self.spec)
            c_prev = Alias(f"{q}_cprev", c, (bsz, hid))
            self._ew("Tanh", [stand_in(c)], stand_in(tc), f"{q}_tanh_c", self.spec)
            h_t = Alias(f"{q}_h", self.hs, (bsz, hid), offset=(t * self.n_dir + d) * bsz * hid)
            self._ew("Mul", [o_.value(dt), stand_in(tc)], h_t.value(dt), f"{q}_h", self.spec, [o_, h_t])
            h_prev = h_last = h_t
        self._last[d] = {"h": h_last, "c": c_prev}


class GruKernel(RecurrentKernel):
    """GRU (gates z, r, h): h~ = tanh(x W_h + (r * h) R_h + Rb_h + Wb_h), or with linear_before_reset
    tanh(x W_h + r * (h R_h + Rb_h) + Wb_h); h = h~ + z * (h - h~). A zero initial h is a zero
    constant the first step reads (one code path)."""

    def _direction(self, node, spec, d, reverse, w, r, b, h0, c0):
        t_len, bsz, hid, dt, base = self.t_len, self.batch, self.hid, self.dt, self.base
        p = f"{base}/gru_d{d}"
        lbr = bool(a_int(node, "linear_before_reset", 0))
        r_all = lambda: np.asarray(opinfo.const_value(r), np.float64)[d]  # noqa: E731
        r_zr = const_value(f"{p}_rzr", dt, (hid, 2 * hid), lambda: r_all()[:2 * hid].T)
        r_h = const_value(f"{p}_rht", dt, (hid, hid), lambda: r_all()[2 * hid:].T)
        rb_h = const_value(f"{p}_rbh", dt, (hid,), lambda: (
            np.zeros(hid) if b is None else np.asarray(opinfo.const_value(b), np.float64)[d][5 * hid:]))

        def proj_bias(bd):  # z and r add both biases; h adds Rb_h inside the reset unless linear_before_reset
            wb, rb = bd[:3 * hid], bd[3 * hid:]
            return wb + np.concatenate([rb[:2 * hid], np.zeros(hid) if lbr else rb[2 * hid:]])

        g_all = self._projection(spec, p, d, w, b, 3, proj_bias)
        zr, sig = (stand_in(g_all, f"{p}_{n}", (bsz, 2 * hid)) for n in ("zr", "sig"))
        rh, hh, ht, df, e = (stand_in(g_all, f"{p}_{n}", (bsz, hid)) for n in ("rh", "hh", "ht", "df", "e"))
        h_prev = Alias(f"{p}_h0", stand_in(h0), (bsz, hid), offset=d * bsz * hid) if h0 is not None else \
            Alias(f"{p}_hzero", const_value(f"{p}_zero", dt, (bsz, hid), lambda: np.zeros((bsz, hid))), (bsz, hid))
        for step in range(t_len):
            t = t_len - 1 - step if reverse else step
            q = f"{p}_t{t}"
            g_zr = Alias(f"{q}_gzr", g_all, (bsz, 2 * hid), (3 * hid, 1), t * bsz * 3 * hid)
            g_h = Alias(f"{q}_gh", g_all, (bsz, hid), (3 * hid, 1), t * bsz * 3 * hid + 2 * hid)
            self.add(GemmKernel(stand_in_node("Gemm", [h_prev.value(dt), r_zr, g_zr.value(dt)], stand_in(zr),
                                              f"{q}_rec_zr"), spec), [h_prev, g_zr])
            self._ew("Sigmoid", [stand_in(zr)], stand_in(sig), f"{q}_sigmoid", spec)
            z_, r_ = (Alias(f"{q}_{n}", sig, (bsz, hid), (2 * hid, 1), k * hid) for k, n in enumerate("zr"))
            if lbr:  # r * (h R_h + Rb_h) + (x W_h + Wb_h)
                self.add(GemmKernel(stand_in_node("Gemm", [h_prev.value(dt), r_h, rb_h], stand_in(rh), f"{q}_rec_h"),
                                    spec), [h_prev])
                self._ew("Mul", [r_.value(dt), stand_in(rh)], stand_in(e), f"{q}_reset", spec, [r_])
                self._ew("Add", [stand_in(e), g_h.value(dt)], stand_in(hh), f"{q}_hh", spec, [g_h])
            else:  # (r * h) R_h + (x W_h + Wb_h + Rb_h)
                self._ew("Mul", [r_.value(dt), h_prev.value(dt)], stand_in(rh), f"{q}_reset", spec, [r_, h_prev])
                self.add(GemmKernel(stand_in_node("Gemm", [stand_in(rh), r_h, g_h.value(dt)], stand_in(hh),
                                                  f"{q}_rec_h"), spec), [g_h])
            self._ew("Tanh", [stand_in(hh)], stand_in(ht), f"{q}_tanh", spec)
            self._ew("Sub", [h_prev.value(dt), stand_in(ht)], stand_in(df), f"{q}_diff", spec, [h_prev])
            self._ew("Mul", [z_.value(dt), stand_in(df)], stand_in(e), f"{q}_keep", spec, [z_])
            h_t = Alias(f"{q}_h", self.hs, (bsz, hid), offset=(t * self.n_dir + d) * bsz * hid)
            self._ew("Add", [stand_in(ht), stand_in(e)], h_t.value(dt), f"{q}_h", spec, [h_t])
            h_prev = h_t
        self._last[d] = {"h": h_prev}
