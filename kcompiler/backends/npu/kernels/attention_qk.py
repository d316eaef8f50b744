"""Attention's qk_matmul_output (modes 0-2: the scaled scores, after softcap, plus the mask): a
second pass after the attention proper, since the flash-attention tiles never keep scores. Per
(batch, head) and (query, key) block: Q and K rows loaded, S = Q·Kᵀ on the array, the vector unit
scales it (softcap, mask) into the output dtype, a store writes the block. Each block runs after the
previous one's store (the scores are small next to the attention they come from)."""

from __future__ import annotations

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import dma, make
from kcompiler.backends.npu.isa import CH, DTYPE_BYTES
from kcompiler.backends.npu.kernels.common import sram_aligned
from kcompiler.backends.npu.kernels.vector import VTile


def qk_mode(node) -> int:
    return int(node.attributes["qk_matmul_output_mode"].value) if "qk_matmul_output_mode" in node.attributes else 0


def qk_problem(k, mask_dtype_bool: bool) -> str | None:
    """Why the kernel cannot write qk_matmul_output for this node (None: it can)."""
    mode = qk_mode(k.node)
    if mode == 3:
        return "qk_matmul_output mode 3 (the softmax probabilities) is not lowered"
    if mode in (0, 1) and (mode == 1) != bool(k.softcap):
        return f"qk_matmul_output mode {mode} {'without' if mode else 'with'} softcap is not lowered"
    if mode == 2 and (k.band is not None or mask_dtype_bool):
        return "qk_matmul_output mode 2 with a causal/window band or a boolean mask is not lowered"
    return None


def emit_qk_output(k, cg, op: int, lays, out) -> None:
    """The qk_matmul_output pass (after a barrier: the attention's tokens are drained)."""
    X = cg.layout(out)
    mode = qk_mode(k.node)
    use_mask = mode == 2 and lays.M is not None
    for core, (lo, hi) in enumerate(k.per_core):
        t = k.tiling(hi - lo)
        tq, tk = t.tq, t.tk
        dt, xdt = lays.Q.dtype, X.dtype
        eb = DTYPE_BYTES[dt]
        addr = 0
        slots = []
        for size in (tq * k.hd * eb, tk * k.hd * eb, tq * tk * DTYPE_BYTES[lays.M.dtype] if use_mask else 0,
                     tq * tk * 4, tq * tk * DTYPE_BYTES[xdt]):
            slots.append(addr)
            addr += sram_aligned(max(size, 1))
        a_q, a_k, a_m, a_s, a_x = slots
        blocks = [(bh, q0, min(k.s, q0 + tq), k0, min(k.t, k0 + tk)) for bh in range(lo, hi)
                  for q0 in range(0, k.s, tq) for k0 in range(0, k.t, tk)]
        for g, (bh, q0, q1, k0, k1) in enumerate(blocks):
            last = g == len(blocks) - 1
            rq, rk = q1 - q0, k1 - k0
            loads = []
            off, shp, strd = k._rows(lays.Q, "q", bh, q0, q1)
            loads.append((dt, lays.Q.buf, off, a_q, shp, strd))
            off, shp, strd = k._rows(lays.K, "k", bh, k0, k1)
            loads.append((dt, lays.K.buf, off, a_k, shp, strd))
            m_src = None
            if use_mask:
                b, h = divmod(bh, k.hq)
                sb, sh_, sq, sk = lays.m_strides
                mq, mk = (rq if sq else 1), (rk if sk else 1)
                M = lays.M
                loads.append((M.dtype, M.buf, M.off + (b * sb + h * sh_ + q0 * sq + k0 * sk) * M.esize, a_m,
                              (mq, mk), (sq, sk)))
                m_src = (a_m, (1 if mq == 1 and rq > 1 else 0) | (2 if mk == 1 and rk > 1 else 0), M.dtype)
            for j, (ldt, buf, off, a, shp, strd) in enumerate(loads):
                cg.emit(dma(isa.LOAD, core, op, ldt, buf, off, a, shp, strd, wait=CH["mx>ld"] if g and not j else 0,
                            signal=CH["ld>mx"] if j == len(loads) - 1 else 0))
            cg.emit(make(isa.MATMUL, core, op, CH["ld>mx"], CH["mx>vx"] | (0 if last else CH["mx>ld"]), isa.DT[dt],
                         a=a_q, b=a_k, acc=a_s, m=rq, n=rk, k=k.hd, a_sm=k.hd if rq > 1 else 0,
                         a_sk=1 if k.hd > 1 else 0, b_sk=1 if k.hd > 1 else 0, b_sn=k.hd if rk > 1 else 0,
                         acc_sm=rk if rq > 1 else 0, acc_sn=1 if rk > 1 else 0, g=1))
            vecs = _scores(k, VTile(k, core, op, (rq, rk, 1, 1), 0, (a_x, 0, xdt), [], []), a_s, a_x, xdt, m_src)
            for j, ins in enumerate(vecs):
                cg.emit(ins.replace(wait=(CH["mx>vx"] | (CH["st>vx"] if g else 0)) if j == 0 else 0,
                                    signal=CH["vx>st"] if j == len(vecs) - 1 else 0))
            b, h = divmod(bh, k.hq)
            st = X.strides
            cg.emit(dma(isa.STORE, core, op, xdt, X.buf, X.off + (b * st[0] + h * st[1] + q0 * st[2] + k0 * st[3])
                        * X.esize, a_x, (rq, rk), (st[2], st[3]), wait=CH["vx>st"],
                        signal=0 if last else CH["st>vx"]))


def _scores(k, t: VTile, a_s: int, a_x: int, xdt: str, m_src):
    """The vector instructions turning the raw scores at a_s (float32) into the output block at a_x."""
    s = (a_s, 0, "f32")
    out = []
    if k.softcap:
        out += [t.vec("scale", s, [s], (k.scale / k.softcap, 0.0, 0.0)), t.vec("tanh", s, [s]),
                t.vec("scale", s, [s], (k.softcap, 0.0, 0.0))]
        scale = 1.0
    else:
        scale = k.scale
    if m_src is not None:  # mask + scale * S
        out.append(t.vec("axpy", (a_x, 0, xdt), [m_src, s], (scale, 0.0, 0.0)))
    else:
        out.append(t.vec("scale", (a_x, 0, xdt), [s], (scale, 0.0, 0.0)))
    return out
