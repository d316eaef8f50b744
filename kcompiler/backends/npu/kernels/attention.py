"""The fused ONNX Attention op (passes/fusion/attention.py), flash-attention style: per (batch,
head), query row blocks stay in the scratchpad while K/V row blocks stream through it; scores go
through the array and the vector unit's online softmax without ever reaching DRAM."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import dma, make, split_range
from kcompiler.backends.npu.isa import CH, DTYPE_BYTES, Instr
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_float, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout
from kcompiler.backends.npu.kernels.attention_qk import emit_qk_output, qk_problem
from kcompiler.backends.npu.kernels.copy import emit_copy
from kcompiler.backends.npu.kernels.common import Kernel, sram_aligned
from kcompiler.backends.npu.kernels.vector import VTile
from kcompiler.backends.npu.tiler import tile_attention
from kcompiler.errors import LoweringError


class AttentionKernel(Kernel):
    """ONNX Attention (opset 23), flash-attention style: per (batch, head) and tq query rows,
    K/V tiles of tk rows stream through SRAM; S = Q·Kᵀ on the array, the online-softmax update
    (attn_step) on the vector unit, O += P·V back on the array, then O / l (attn_final). The
    score matrix never reaches DRAM.

    Q/K/V are [B, H, S, hd] or, with q_num_heads/kv_num_heads, [B, S, H*hd].

    With a past KV cache, present_key/present_value (past rows, then the new ones) are written
    first by DRAM copies and K/V are read from them. softcap runs on the score tile before the
    mask (three elementwise functions); is_causal and the sliding window are a band of keys each
    query row may see, which attn_step hides outside (per tile, from the tile's first query and
    key positions)."""

    kind = "gemm"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        q, k, v = node.inputs[:3]
        self.mask = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] is not None else None
        ins = list(node.inputs) + [None] * 6
        self.past_k, self.past_v = ins[4], ins[5]
        qs, ks, vs = shape(q), shape(k), shape(v)
        self.past = shape(self.past_k)[2] if self.past_k is not None else 0
        if len(qs) == 3:
            self.hq, self.hk = a_int(node, "q_num_heads", 1), a_int(node, "kv_num_heads", 1)
            self.b, self.s, self.hd = qs[0], qs[1], qs[2] // self.hq
            self.t, self.hdv = ks[1], vs[2] // self.hk
            self.three_d = True
        else:
            self.b, self.hq, self.s, self.hd = qs
            self.hk, self.t, self.hdv = ks[1], ks[2], vs[3]
            self.three_d = False
        self.t += self.past
        self.kv_three_d = self.three_d and self.past_k is None  # K/V read from the 4-D present tensors
        self.scale = a_float(node, "scale", 1.0 / math.sqrt(self.hd))
        self.softcap = a_float(node, "softcap", 0.0)
        self.band = _band(node, self.past)
        self.macs = self.b * self.hq * self.s * self.t * (self.hd + self.hdv)
        self.bh = self.b * self.hq
        self.per_core = split_range(self.bh, spec.cores)

    def band_of(self, q0: int, k0: int) -> tuple[float, float] | None:
        """The band (lo, hi) of j - i a tile starting at query q0 and key k0 allows (None: no band)."""
        if self.band is None:
            return None
        lo, hi = self.band
        return lo + q0 - k0, hi + q0 - k0

    def tiling(self, n_bh: int):
        return tile_attention(self.spec, n_bh, self.s, self.t, self.hd, self.hdv, self.mask is not None)

    def cost(self) -> Cost:
        cyc = max((self.tiling(hi - lo).cycles for lo, hi in self.per_core), default=0)
        return Cost(cycles=cyc + self.spec.issue_cycles, macs=self.macs)

    def _rows(self, lay: Layout, which: str, bh: int, r0: int, r1: int):
        """(byte offset, shape, strides) of rows [r0, r1) of head `bh`'s Q/K/V/O matrix."""
        b, h = divmod(bh, self.hq)
        if which != "q" and which != "o":
            h //= self.hq // self.hk
        d = {"q": self.hd, "k": self.hd, "v": self.hdv, "o": self.hdv}[which]
        st = lay.strides
        if self.three_d if which in ("q", "o") else self.kv_three_d:
            off = lay.off + (b * st[0] + r0 * st[1] + h * d * st[2]) * lay.esize
            return off, (r1 - r0, d), (st[1], st[2])
        off = lay.off + (b * st[0] + h * st[1] + r0 * st[2]) * lay.esize
        return off, (r1 - r0, d), (st[2], st[3])

    def _present(self, cg: Codegen, op: int, past, new, out) -> Layout:
        """present = concat(past, new) along the sequence (new re-viewed as [B, H, S, d] when 3-D),
        written by DRAM copies; its layout (K or V from here on)."""
        P, N, D = cg.layout(past), cg.layout(new), cg.layout(out)
        emit_copy(cg, op, P, Layout(D.buf, D.off, D.dtype, P.shape, D.strides))
        b, h, n, d = D.shape[0], D.shape[1], D.shape[2] - P.shape[2], D.shape[3]
        if len(N.shape) == 3:  # [B, S, H*d]: element (b, h, s, e) at b*s0 + s*s1 + (h*d + e)*s2
            s0, s1, s2 = N.strides
            src_strides = (s0, d * s2, s1, s2)
        else:
            src_strides = N.strides
        dst = Layout(D.buf, D.off + P.shape[2] * D.strides[2] * D.esize, D.dtype, (b, h, n, d), D.strides)
        emit_copy(cg, op, N, dst, src_strides=src_strides)
        return D

    def emit(self, cg: Codegen, op: int) -> None:
        q, k, v = self.node.inputs[:3]
        Q, K, V, O = cg.layout(q), cg.layout(k), cg.layout(v), cg.layout(self.out)
        if self.past_k is not None:
            outs = list(self.node.outputs) + [None] * 3
            K = self._present(cg, op, self.past_k, k, outs[1])
            V = self._present(cg, op, self.past_v, v, outs[2])
            cg.emit(isa.Instr(isa.BARRIER, isa.ALL_CORES, op, 0, 0, 0, ()))
        M = cg.layout(self.mask) if self.mask is not None else None
        m_strides = None
        if M is not None:
            ms = (1,) * (4 - len(M.shape)) + tuple(M.shape)
            m_st = (0,) * (4 - len(M.shape)) + tuple(M.strides)
            m_strides = tuple(0 if n == 1 else s for n, s in zip(ms, m_st))
        lays = _Layouts(Q, K, V, O, M, m_strides)
        for core, (lo, hi) in enumerate(self.per_core):
            _CoreEmission(self, cg, op, core, lays, lo, hi).emit()
        qk = self.node.outputs[3] if len(self.node.outputs) > 3 else None
        if qk is not None and qk.name and _read(qk):
            cg.emit(isa.Instr(isa.BARRIER, isa.ALL_CORES, op, 0, 0, 0, ()))
            emit_qk_output(self, cg, op, lays, qk)


def _band(node, past: int) -> tuple[float, float] | None:
    """The keys query i may see as lo <= j - i <= hi (absolute key and query positions): is_causal
    allows j <= i + past (bottom-right aligned on the cache), a sliding window past - left <= j - i
    <= past + right; None when neither is set."""
    lo, hi = -math.inf, math.inf
    left, right = a_int(node, "left_window_size", -1), a_int(node, "right_window_size", -1)
    if a_int(node, "is_causal", 0):
        hi = float(past)
    if left >= 0:
        lo = float(past - left)
    if right >= 0:
        hi = min(hi, float(past + right))
    return None if (lo, hi) == (-math.inf, math.inf) else (lo, hi)


@dataclass
class _Layouts:
    """Where Q, K, V, the output and the mask live (the mask's strides over (batch, head, q, k),
    0 where it broadcasts)."""

    Q: Layout
    K: Layout
    V: Layout
    O: Layout
    M: Layout | None
    m_strides: tuple[int, int, int, int] | None


class _CoreEmission:
    """One core's (batch, head) range [lo, hi): its scratchpad slots, its Q and K/V row blocks,
    and their instructions."""

    def __init__(self, k: AttentionKernel, cg: Codegen, op: int, core: int, lays: _Layouts, lo: int, hi: int):
        self.k, self.cg, self.op, self.core, self.lays = k, cg, op, core, lays
        self.dt = lays.Q.dtype
        self.mdt = lays.M.dtype if lays.M is not None else None
        t = k.tiling(hi - lo)
        if t is None:
            raise LoweringError("no attention tiling fits the scratchpad (the fusion check should have refused)")
        self.tq, self.tk = tq, tk = t.tq, t.tk
        self._place_scratchpad()
        self.qblocks = [(bh, q0, min(k.s, q0 + tq)) for bh in range(lo, hi) for q0 in range(0, k.s, tq)]
        self.kblocks = [(k0, min(k.t, k0 + tk)) for k0 in range(0, k.t, tk)]
        self.n_groups = len(self.qblocks) * len(self.kblocks)
        # an instruction without a DRAM address repeats across heads and K tiles: built once per
        # distinct set of the values it is made of (instructions are immutable values)
        self.made: dict[tuple, Instr] = {}

    def _place_scratchpad(self) -> None:
        """Q, K, V and mask tiles double-buffered; one score tile (P overwrites it), the running
        max and sum, one output accumulator."""
        k, tq, tk = self.k, self.tq, self.tk
        eb = DTYPE_BYTES[self.dt]
        sizes = [tq * k.hd * eb, tk * k.hd * eb, tk * k.hdv * eb,
                 tq * tk * DTYPE_BYTES[self.mdt] if self.lays.M is not None else 0]
        addr, self.slots = 0, []
        for s in sizes:
            self.slots.append((addr, addr + sram_aligned(s)))
            addr += 2 * sram_aligned(s)
        self.s_addr = addr
        addr += sram_aligned(tq * tk * 4)
        self.st_addr = addr
        addr += sram_aligned(2 * tq * 4)
        self.o_addr = addr
        addr += sram_aligned(tq * k.hdv * 4)
        if addr > k.spec.sram_bytes:
            raise LoweringError(f"attention tiles of '{k.node.name}' need {addr} bytes of scratchpad")

    def once(self, key, build) -> Instr:
        """The instruction made for `key`, built by `build` the first time."""
        ins = self.made.get(key)
        if ins is None:
            ins = self.made[key] = build()
        return ins

    def emit(self) -> None:
        g = 0
        for qi, (bh, q0, q1) in enumerate(self.qblocks):
            q_slot = self.slots[0][qi % 2]
            for ki, (k0, k1) in enumerate(self.kblocks):
                self._kv_block(g, qi, ki, bh, (q0, q1), (k0, k1), q_slot)
                g += 1
            self._finish(qi, bh, q0, q1)

    def _loads(self, g: int, ki: int, bh: int, q: tuple[int, int], kv: tuple[int, int], q_slot: int):
        """Emit the loads of one K/V block (and of the Q block with the first); returns the mask's
        scratchpad source (None without a mask)."""
        k, lays, slots, dt, mdt = self.k, self.lays, self.slots, self.dt, self.mdt
        (q0, q1), (k0, k1) = q, kv
        rq, rk = q1 - q0, k1 - k0
        par = g % 2
        loads = []  # (dtype, buf, byte offset, SRAM address, shape, strides)
        if ki == 0:
            off, shp, strd = k._rows(lays.Q, "q", bh, q0, q1)
            loads.append((dt, lays.Q.buf, off, q_slot, shp, strd))
        off, shp, strd = k._rows(lays.K, "k", bh, k0, k1)
        loads.append((dt, lays.K.buf, off, slots[1][par], shp, strd))
        off, shp, strd = k._rows(lays.V, "v", bh, k0, k1)
        loads.append((dt, lays.V.buf, off, slots[2][par], shp, strd))
        mask_src = None
        M = lays.M
        if M is not None:
            b, h = divmod(bh, k.hq)
            sb, sh_, sq, sk = lays.m_strides
            mq, mk = (rq if sq else 1), (rk if sk else 1)
            moff = M.off + (b * sb + h * sh_ + q0 * sq + k0 * sk) * M.esize
            loads.append((mdt, M.buf, moff, slots[3][par], (mq, mk), (sq, sk)))
            mask_src = (slots[3][par], (1 if mq == 1 and rq > 1 else 0) | (2 if mk == 1 and rk > 1 else 0), mdt)
        for j, (ldt, buf, off, addr, shp, strd) in enumerate(loads):
            self.cg.emit(dma(isa.LOAD, self.core, self.op, ldt, buf, off, addr, shp, strd,
                             wait=CH["mx>ld"] if (j == 0 and g >= 2) else 0,
                             signal=CH["ld>mx"] if j == len(loads) - 1 else 0))
        return mask_src

    def _kv_block(self, g: int, qi: int, ki: int, bh: int, q: tuple[int, int], kv: tuple[int, int],
                  q_slot: int) -> None:
        """One K/V block against a Q block: S = Q Kᵀ, the online-softmax step, O += P V."""
        k, slots, dt, core, op = self.k, self.slots, self.dt, self.core, self.op
        s_addr, st_addr, o_addr = self.s_addr, self.st_addr, self.o_addr
        mask_src = self._loads(g, ki, bh, q, kv, q_slot)
        rq, rk = q[1] - q[0], kv[1] - kv[0]
        par = g % 2
        # S = Q K^T: B[d, j] = K[j, d]
        self.cg.emit(self.once(("qk", q_slot, par, rq, rk), lambda: make(
            isa.MATMUL, core, op, CH["ld>mx"], CH["mx>vx"], isa.DT[dt], a=q_slot, b=slots[1][par],
            acc=s_addr, m=rq, n=rk, k=k.hd, a_sm=k.hd if rq > 1 else 0, a_sk=1 if k.hd > 1 else 0,
            b_sk=1 if k.hd > 1 else 0, b_sn=k.hd if rk > 1 else 0, acc_sm=rk if rq > 1 else 0,
            acc_sn=1 if rk > 1 else 0, g=1)))
        scale, wait = k.scale, CH["mx>vx"]
        if k.softcap:  # S := softcap * tanh(S * scale / softcap), before the mask; attn_step scales by 1
            s_f32 = (s_addr, 0, "f32")
            for fn, imms in (("scale", (k.scale / k.softcap, 0.0, 0.0)), ("tanh", (0.0, 0.0, 0.0)),
                             ("scale", (k.softcap, 0.0, 0.0))):
                self.cg.emit(self.once(("softcap", fn, imms, rq, rk, wait), lambda fn=fn, imms=imms, w=wait: VTile(
                    k, core, op, (rq, rk, 1, 1), 0, s_f32, [], []).vec(fn, s_f32, [s_f32], imms).replace(wait=w)))
                wait = 0
            scale = 1.0
        band = k.band_of(q[0], kv[0])
        self.cg.emit(self.once(("step", rq, rk, mask_src, ki == 0, scale, band, wait), lambda: VTile(
            k, core, op, (rq, rk, k.hdv, 1), 0, (s_addr, 0, dt), [], []).vec(
            "attn_step", (s_addr, 0, dt), [(s_addr, 0, "f32"), mask_src, (st_addr, 0, "f32"),
                                            (o_addr, 0, "f32")],
            (scale, *(band or (0.0, 0.0))), arg=(1 if ki == 0 else 0) | (2 if band else 0)).replace(
                wait=wait, signal=CH["vx>mx"])))
        last = ki == len(self.kblocks) - 1
        # O += P V
        sig = (CH["mx>ld"] if g + 2 < self.n_groups else 0) | (CH["mx>vx"] if last else 0)
        self.cg.emit(self.once(("pv", par, rq, rk, sig), lambda: make(
            isa.MATMUL, core, op, CH["vx>mx"], sig, isa.DT[dt] | isa.ACCUMULATE, a=s_addr,
            b=slots[2][par], acc=o_addr, m=rq, n=k.hdv, k=rk, a_sm=rk if rq > 1 else 0,
            a_sk=1 if rk > 1 else 0, b_sk=k.hdv if rk > 1 else 0, b_sn=1 if k.hdv > 1 else 0,
            acc_sm=k.hdv if rq > 1 else 0, acc_sn=1 if k.hdv > 1 else 0, g=1)))

    def _finish(self, qi: int, bh: int, q0: int, q1: int) -> None:
        """O / l for a Q block (attn_final), and its store."""
        k, O, core, op, o_addr = self.k, self.lays.O, self.core, self.op, self.o_addr
        rq = q1 - q0
        self.cg.emit(self.once(("final", rq, qi >= 2), lambda: VTile(
            k, core, op, (rq, k.hdv, 1, 1), 0, (o_addr, 0, O.dtype), [], []).vec(
            "attn_final", (o_addr, 0, O.dtype), [(o_addr, 0, "f32"), (self.st_addr, 0, "f32")]).replace(
            wait=CH["mx>vx"] | (CH["st>vx"] if qi >= 2 else 0), signal=CH["vx>st"])))
        off, shp, strd = k._rows(O, "o", bh, q0, q1)
        self.cg.emit(dma(isa.STORE, core, op, O.dtype, O.buf, off, o_addr, shp, strd, wait=CH["vx>st"],
                         signal=CH["st>vx"] if qi + 2 < len(self.qblocks) else 0))


def _read(v) -> bool:
    """Whether anything reads the value: a node, or the graph as one of its outputs."""
    return bool(v.uses()) or v.is_graph_output()


#: the attributes the attention kernel implements (qk_matmul_output_mode and softmax_precision only
#: matter for the extra output qk_matmul_output, which is refused)
ATTENTION_ATTRS = {"is_causal", "softcap", "scale", "q_num_heads", "kv_num_heads", "qk_matmul_output_mode",
                   "softmax_precision", "left_window_size", "right_window_size"}


def attention_support(node: ir.Node, spec) -> Support:
    """Q/K/V (and a past KV cache) in a float dtype, an additive float or boolean mask over every key;
    present_key/present_value are computed, qk_matmul_output and nonpad_kv_seqlen are not."""
    unknown = sorted(set(node.attributes) - ATTENTION_ATTRS)
    if unknown:  # attributes of a later opset: never silently ignored
        return no(f"attribute(s) {unknown} are not lowered")
    ins = list(node.inputs) + [None] * 7
    outs = list(node.outputs) + [None] * 4
    for v in outs[:3]:
        if v is not None and v.name and _read(v) and (opinfo.shape_of(v) is None or v.dtype not in FLOATS):
            return no(f"output '{v.name}' has no static float shape")
    for v in [*ins[:3], ins[4], ins[5]]:
        if v is not None and (opinfo.shape_of(v) is None or v.dtype != ins[0].dtype):
            return no(f"input '{v.name}' must have a static shape and Q's dtype")
    if ins[6] is not None:
        return no("nonpad_kv_seqlen (per-batch key counts read at run time) is not lowered")
    if (ins[4] is None) != (ins[5] is None):
        return no("past_key and past_value come together")
    if ins[4] is None and any(v is not None and v.name and _read(v) for v in outs[1:3]):
        return no("present_key/present_value without a past cache are not lowered")
    ranks = {len(opinfo.shape_of(v)) for v in node.inputs[:3]}
    if ranks not in ({3}, {4}):
        return no("Q, K and V must all be 3-D or all 4-D")
    k = AttentionKernel(node, spec)
    m = ins[3]
    if m is not None:
        ms = opinfo.shape_of(m)
        if ms is None or m.dtype not in (*FLOATS, ir.DataType.BOOL) or (m.dtype != ir.DataType.BOOL and
                                                                        m.dtype != ins[0].dtype):
            return no(f"mask '{m.name}' must be static, boolean or of Q's dtype")
        if not ms or ms[-1] != k.t:
            return no(f"mask '{m.name}' does not cover all {k.t} keys (a shorter one is padded; not lowered)")
    if outs[3] is not None and outs[3].name and _read(outs[3]):
        why = qk_problem(k, m is not None and m.dtype == ir.DataType.BOOL)
        if why is not None:
            return no(f"its extra output '{outs[3].name}': {why}")
    if any(k.tiling(hi - lo) is None for lo, hi in k.per_core):
        return no("no attention tiling fits the scratchpad")
    return YES
