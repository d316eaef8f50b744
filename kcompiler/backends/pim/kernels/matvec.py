"""Matrix-vector products (GEMV) on the banks: the product's items, their bank layout, and the
commands that write the matrix, run the MACs and add the read-back partial sums on the host.

A matrix-vector kernel computes ``y[g, m, n] = sum_k x[g, m, k] * w[g, n, k]`` for G groups
(one for a weight matrix; batch x heads for attention over a KV cache) and M input vectors.
The matrix is cut into *items*: an item is the work all units of one channel do in lock
step with one buffer content — on a ``dot`` device (AiM) one output row per unit over one
buffer-sized chunk of k, on a ``simd`` device (HBM-PIM) up to lanes x accumulators outputs
per unit over a range of k. Items go to channels in contiguous blocks; each unit stores its
part of an item at the same bank offset as every other unit of its channel, packed
row-major into DRAM rows, so one all-bank command serves the whole channel.

Staging layouts the commands address (element dtype of the device, zero padded):
  dot:  x as [G, M, Kp], w as [G, N, Kp] with Kp = K rounded up to the lanes (a column's worth)
  simd: x as [G, M, K],  w as [G, K, Np] with Np = N rounded up to a unit's outputs
(kernels/columns.py says how a bank-transfer descriptor addresses them.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from kcompiler.backends.pim.isa import CLR, Command
from kcompiler.backends.pim.kernels.columns import CommandSink, bk_desc, seg_start, segments
from kcompiler.backends.pim.spec import PimSpec


@dataclass(frozen=True)
class Item:
    g: int
    n0: int
    n1: int
    k0: int
    k1: int


def matvec_items(spec: PimSpec, G: int, N: int, K: int) -> list[Item]:
    upc = spec.units_per_channel
    kc = min(K, spec.input_buffer_elems)
    items = []
    if spec.mac_dataflow == "dot":
        for g in range(G):
            for k0 in range(0, K, kc):
                for n0 in range(0, N, upc):
                    items.append(Item(g, n0, min(N, n0 + upc), k0, min(K, k0 + kc)))
        return items
    per_unit = spec.simd_lanes * spec.accumulators_per_unit
    block = upc * per_unit
    nblocks = G * math.ceil(N / block)
    # split k too when there are fewer output blocks than channels (partials reduced on the host)
    splits = max(1, min(math.ceil(spec.channels / nblocks), math.ceil(K / kc)))
    krange = math.ceil(math.ceil(K / splits) / kc) * kc
    for g in range(G):
        for k0 in range(0, K, krange):
            for n0 in range(0, N, block):
                items.append(Item(g, n0, min(N, n0 + block), k0, min(K, k0 + krange)))
    return items


def _split(items: list, parts: int) -> list[list]:
    q, r = divmod(len(items), parts)
    out, i = [], 0
    for p in range(parts):
        n = q + (1 if p < r else 0)
        out.append(items[i:i + n])
        i += n
    return out


@dataclass
class MatvecLayout:
    per_channel: list[list[tuple[Item, int, int, int, int]]]  # (item, column offset, columns, units, regs)
    rows: int
    Kp: int
    Np: int


@functools.lru_cache(maxsize=512)
def matvec_layout(spec: PimSpec, G: int, N: int, K: int) -> MatvecLayout:
    """Where each item of the product goes (a function of the shape: cached, and shared by its callers,
    which only read it)."""
    lanes = spec.simd_lanes
    per_channel = []
    max_cols = 0
    for items in _split(matvec_items(spec, G, N, K), spec.channels):
        layout, offset = [], 0
        for it in items:
            klen = it.k1 - it.k0
            if spec.mac_dataflow == "dot":
                ncols, units, regs = -(-klen // lanes), it.n1 - it.n0, 1
            else:
                units = math.ceil((it.n1 - it.n0) / (lanes * spec.accumulators_per_unit))
                regs = min(spec.accumulators_per_unit, math.ceil((it.n1 - it.n0) / lanes))
                ncols = klen * regs
            layout.append((it, offset, ncols, units, regs))
            offset += ncols
        max_cols = max(max_cols, offset)
        per_channel.append(layout)
    per_row = spec.columns_per_row * spec.banks_per_unit
    Kp = -(-K // lanes) * lanes if spec.mac_dataflow == "dot" else K
    # simd: a row of w spans the outputs the units' registers cover (all of them read: no dead padding)
    Np = N if spec.mac_dataflow == "dot" else max(
        it.n0 + units * regs * lanes for layout in per_channel for it, _o, _n, units, regs in layout)
    return MatvecLayout(per_channel, -(-max_cols // per_row) if max_cols else 0, Kp, Np)


def emit_weight_writes(em: CommandSink, lay: MatvecLayout, G: int, N: int, K: int, w_addr: int, base_row: int,
                       flags: int = 0) -> list[Command]:
    """WR_BK commands putting a matrix laid out in staging (module docstring) into its bank columns.
    Returned, and emitted only if `em` is given a step (the compiler runs them itself for constants)."""
    s = em.spec
    eb = s.element_bytes
    lanes = s.simd_lanes
    out = []
    for ch, layout in enumerate(lay.per_channel):
        for it, off, ncols, units, regs in layout:
            for r, b, c, n in segments(off, ncols, s):
                j0 = seg_start(off, r, b, c, s)
                if s.mac_dataflow == "dot":
                    d, extra = bk_desc(em, lay.Kp, lanes, 1, 0, units, n, lanes)
                    addr = w_addr + ((it.g * N + it.n0) * lay.Kp + it.k0 + j0 * lanes + extra) * eb
                else:
                    per_unit = lanes * s.accumulators_per_unit
                    d, extra = bk_desc(em, per_unit, lay.Np, regs, j0 % regs, units, n, lanes)
                    addr = w_addr + ((it.g * K + it.k0 + j0 // regs) * lay.Np + it.n0 + extra) * eb
                out.append(Command("WR_BK", ch, row=base_row + r, bank=b, col=c, count=n, units=units, addr=addr,
                                   desc=d, flags=flags, step=em.step))
    return out


def emit_matvec(em: CommandSink, lay: MatvecLayout, G: int, M: int, N: int, x_addr: int, part_addr: int,
                base_row: int) -> None:
    """The channel streams of y[g,m,:] = W[g] @ x[g,m,:]: each item's MACs, then its RD_MAC into the
    partial-sum slot `partial_slots` gives it (emit_partial_sums adds them up on the host)."""
    s = em.spec
    eb = s.element_bytes
    lanes = s.simd_lanes
    slots = partial_slots(s, lay, M, part_addr)
    for ch, layout in enumerate(lay.per_channel):
        for m in range(M):
            loaded = None
            for it, off, ncols, units, regs in layout:
                row0 = (it.g * M + m) * lay.Kp
                if s.mac_dataflow == "dot":
                    key = (it.g, m, it.k0, it.k1)
                    if key != loaded:
                        em.emit("WR_GB", ch, addr=x_addr + (row0 + it.k0) * eb, gb=0, length=ncols * lanes)
                        loaded = key
                    for i, (r, b, c, n) in enumerate(segments(off, ncols, s)):
                        j0 = seg_start(off, r, b, c, s)
                        em.emit("MAC_ABK", ch, row=base_row + r, bank=b, col=c, count=n, units=units, gb=j0 * lanes,
                                acc=0, nacc=1, flags=CLR if i == 0 else 0)
                else:
                    kc = s.input_buffer_elems
                    first = True
                    for k0 in range(it.k0, it.k1, kc):
                        klen = min(kc, it.k1 - k0)
                        em.emit("WR_GB", ch, addr=x_addr + (row0 + k0) * eb, gb=0, length=klen)
                        seg_off = off + (k0 - it.k0) * regs
                        for r, b, c, n in segments(seg_off, klen * regs, s):
                            j = seg_start(seg_off, r, b, c, s)
                            em.emit("MAC_ABK", ch, row=base_row + r, bank=b, col=c, count=n, units=units,
                                    gb=j // regs, acc=j % regs, nacc=regs, flags=CLR if first else 0)
                            first = False
                slot = next(slots)[0]
                em.emit("RD_MAC", ch, units=units, acc=0, nacc=regs, addr=slot)


def partial_slots(spec: PimSpec, lay: MatvecLayout, M: int, part_addr: int):
    """(partial-slot address, g, m, n0, n1) of each item's read-back partial sums, in program order
    (channel, vector, item): where emit_matvec's RD_MACs put them."""
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
    slot = part_addr
    for layout in lay.per_channel:
        for m in range(M):
            for it, _off, _ncols, units, regs in layout:
                yield slot, it.g, m, it.n0, it.n1
                slot += -(-units * regs * lpa * acc_bytes // 4) * 4


def vector_desc(n: int) -> tuple[int, ...]:
    """The canonical copy descriptor of n contiguous elements (dims, source and destination strides,
    as geometry.merge_dims writes it: a dim of 1 has stride 0)."""
    return (1, 1, 1, n, 0, 0, 0, 1, 0, 0, 0, 1) if n != 1 else (1, 1, 1, 1) + (0,) * 8


def emit_partial_sums(em: CommandSink, lay: MatvecLayout, M: int, N: int, part_addr: int, y_addr: int,
                      acc_dtype: int) -> None:
    """The host adds each item's read-back partial sums into y[g, m, n0:n1] (float32, zeroed before)."""
    descs: dict[int, int] = {}
    for slot, g, m, n0, n1 in partial_slots(em.spec, lay, M, part_addr):
        d = descs.get(n1 - n0)
        if d is None:
            d = descs[n1 - n0] = em.desc(*vector_desc(n1 - n0))
        em.emit("HADD", addr=y_addr + ((g * M + m) * N + n0) * 4, addr2=slot, dtype2=acc_dtype, desc=d)


def partial_bytes(spec: PimSpec, lay: MatvecLayout, M: int) -> int:
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
    return sum(M * -(-units * regs * lpa * acc_bytes // 4) * 4 for layout in lay.per_channel
               for _it, _off, _n, units, regs in layout)
