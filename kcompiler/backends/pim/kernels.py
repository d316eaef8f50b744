"""PIM kernels: bank layout, command streams and per-bank functional computation.

A matrix-vector kernel computes ``y[g, m, n] = sum_k x[g, m, k] * w[g, n, k]`` for G groups
(one for a weight matrix; batch x heads for attention over a KV cache) and M input vectors.
The matrix is cut into *items*: an item is the work all units of one channel do in lock
step with one buffer content — on a ``dot`` device (AiM) one output row per unit over one
buffer-sized chunk of k, on a ``simd`` device (HBM-PIM) up to lanes x accumulators outputs
per unit over a range of k. Items go to channels in contiguous blocks; each unit stores its
part of an item at the same bank offset as every other unit of its channel, packed
row-major into DRAM rows, so one all-bank command serves the whole channel.

Everything here depends only on shapes; values are touched only by ``compute``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import ml_dtypes
import numpy as np

from kcompiler.backends.pim.isa import BURST, Command
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.backends.pim.timing import simulate_channel


def device_dtype(spec: PimSpec):
    return ml_dtypes.bfloat16 if spec.dtype == "bfloat16" else np.float16


def _bursts(nbytes: float) -> int:
    return max(1, math.ceil(nbytes / BURST))


@dataclass(frozen=True)
class Item:
    g: int
    n0: int
    n1: int
    k0: int
    k1: int


@dataclass
class Kernel:
    """One node's work on the device: its command streams and how to compute its value."""

    name: str
    op_type: str
    streams: list[list[Command]]  # one per channel
    macs: int
    weight_bytes: int  # bytes the units read from their banks
    rows_used: int  # DRAM rows per bank the kernel's resident operands occupy
    compute: Callable[[list[np.ndarray]], np.ndarray] | None = None
    _time: tuple | None = field(default=None, repr=False)

    def time(self, spec: PimSpec):
        """(seconds, activations, columns, io_bytes) of the slowest channel / summed."""
        if self._time is None:
            per = [simulate_channel(spec, s) for s in self.streams if s]
            seconds = max((p.seconds for p in per), default=0.0)
            self._time = (seconds, sum(p.activations for p in per), sum(p.columns for p in per),
                          sum(p.io_bytes for p in per))
        return self._time


def _segments(offset: int, ncols: int, cols_per_visit: int) -> list[tuple[int, int, int]]:
    """Split a run of columns at a unit's bank offset into (row, col, count) row visits."""
    out = []
    while ncols > 0:
        row, col = divmod(offset, cols_per_visit)
        n = min(ncols, cols_per_visit - col)
        out.append((row, col, n))
        offset += n
        ncols -= n
    return out


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


def build_matvec(spec: PimSpec, name: str, op_type: str, G: int, M: int, N: int, K: int) -> Kernel:
    """The command streams of y[g,m,:] = W[g] @ x[g,m,:] for all groups and vectors."""
    eb = spec.element_bytes
    lanes = spec.simd_lanes
    cols_per_visit = spec.columns_per_row * spec.banks_per_unit
    per_channel = _split(matvec_items(spec, G, N, K), spec.channels)
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    streams: list[list[Command]] = []
    max_cols = 0
    for ch, items in enumerate(per_channel):
        # lay the items out once; the stream re-reads them for each of the M vectors
        layout, offset = [], 0
        for it in items:
            klen = it.k1 - it.k0
            if spec.mac_dataflow == "dot":
                ncols = math.ceil(klen / lanes)
                units = it.n1 - it.n0
                regs = 1
            else:
                units = math.ceil((it.n1 - it.n0) / (lanes * spec.accumulators_per_unit))
                regs = min(spec.accumulators_per_unit, math.ceil((it.n1 - it.n0) / lanes))
                ncols = klen * regs
            layout.append((it, offset, ncols, units, regs))
            offset += ncols
        max_cols = max(max_cols, offset)
        cmds: list[Command] = []
        for _m in range(M):
            loaded = None
            for it, off, ncols, units, regs in layout:
                if spec.mac_dataflow == "dot":
                    key = (it.g, _m, it.k0, it.k1)
                    if key != loaded:
                        cmds.append(Command("WR_GB", ch, count=_bursts((it.k1 - it.k0) * eb)))
                        loaded = key
                    cmds.extend(Command("MAC_ABK", ch, r, c, n) for r, c, n in _segments(off, ncols, cols_per_visit))
                    cmds.append(Command("RD_MAC", ch, count=_bursts(units * acc_bytes)))
                else:
                    kc = spec.input_buffer_elems
                    for j, k0 in enumerate(range(it.k0, it.k1, kc)):
                        klen = min(kc, it.k1 - k0)
                        cmds.append(Command("WR_GB", ch, count=_bursts(klen * eb)))
                        seg_off = off + (k0 - it.k0) * regs
                        cmds.extend(Command("MAC_ABK", ch, r, c, n)
                                    for r, c, n in _segments(seg_off, klen * regs, cols_per_visit))
                    cmds.append(Command("RD_MAC", ch, count=_bursts(units * regs * lanes * acc_bytes)))
                loaded = loaded if spec.mac_dataflow == "dot" else None
        streams.append(cmds)
    rows = math.ceil(max_cols / cols_per_visit) if max_cols else 0
    return Kernel(name, op_type, streams, macs=G * M * N * K, weight_bytes=G * M * N * K * eb, rows_used=rows)


def matvec_compute(spec: PimSpec, G: int, M: int, N: int, K: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Per-unit numerics: x [G, M, K], w [G, N, K] -> y [G, M, N] (float32).

    Each unit multiplies exactly the partition it holds in the device's dtype and
    accumulates as the hardware does; the host adds the read-back partial sums in FP32.
    """
    dt = device_dtype(spec)
    items = matvec_items(spec, G, N, K)
    lanes = spec.simd_lanes

    def run(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        xq = np.asarray(x).astype(dt)
        wq = np.asarray(w).astype(dt)
        y = np.zeros((G, M, N), np.float32)
        for it in items:
            wk = wq[it.g, it.n0:it.n1, it.k0:it.k1]
            if spec.mac_dataflow == "dot":
                klen = it.k1 - it.k0
                pad = (-klen) % lanes
                wf = np.pad(wk.astype(np.float32), ((0, 0), (0, pad)))
                for m in range(M):
                    xf = np.pad(xq[it.g, m, it.k0:it.k1].astype(np.float32), (0, pad))
                    prod = (wf * xf).reshape(wf.shape[0], -1, lanes)  # BF16 x BF16 is exact in FP32
                    while prod.shape[-1] > 1:  # the adder tree, level by level
                        prod = prod[..., 0::2] + prod[..., 1::2]
                    tree = prod[..., 0]
                    acc = np.zeros(wf.shape[0], np.float32)
                    for col in range(tree.shape[1]):  # the accumulator, one column command at a time
                        acc = acc + tree[:, col]
                    y[it.g, m, it.n0:it.n1] += acc
            else:
                for m in range(M):
                    xs = xq[it.g, m, it.k0:it.k1]
                    acc = np.zeros(it.n1 - it.n0, np.float16)
                    for k in range(it.k1 - it.k0):  # FP16 multiply, FP16 accumulate in GRF_B
                        acc = acc + (wk[:, k] * xs[k]).astype(np.float16)
                    y[it.g, m, it.n0:it.n1] += acc.astype(np.float32)
        return y

    return run


def build_elementwise(spec: PimSpec, name: str, op_type: str, numel: int, streamed_operands: int,
                      fn_index: int = 0) -> Kernel:
    """Operands written to the banks (unless resident), one all-bank op, the result read back."""
    eb = spec.element_bytes
    share = math.ceil(numel / spec.channels)
    per_visit_elems = spec.units_per_channel * spec.simd_lanes * spec.banks_per_unit
    cols = math.ceil(share / per_visit_elems)
    cols_per_visit = spec.columns_per_row * spec.banks_per_unit
    ew = {"Add": "EWADD", "Mul": "EWMUL"}.get(op_type, "AF")
    streams = []
    for ch in range(spec.channels):
        cmds = [Command("WR_BK", ch, count=_bursts(share * eb)) for _ in range(streamed_operands)]
        cmds.extend(Command(ew, ch, r, c, n, arg=fn_index) for r, c, n in _segments(0, cols, cols_per_visit))
        cmds.append(Command("RD_BK", ch, count=_bursts(share * eb)))
        streams.append(cmds)
    return Kernel(name, op_type, streams, macs=0, weight_bytes=numel * eb * 2,
                  rows_used=math.ceil(cols / cols_per_visit) * 3)


def build_append(spec: PimSpec, name: str, op_type: str, numel: int, scattered: bool) -> Kernel:
    """In-place append of `numel` new elements to a bank-resident operand (the KV cache's new token).

    The elements are spread over the channels as the cache is. Contiguous rows go in 32-byte write
    bursts; when the stored layout puts each new element in a different column (a new reduction
    index of a dot-dataflow matrix: one element per output row), each element is a masked burst of
    its own. Only bus time is modelled (the write's row activation is not)."""
    eb = spec.element_bytes
    share = math.ceil(numel / spec.channels)
    bursts = share if scattered else _bursts(share * eb)
    streams = [[Command("WR_BK", ch, count=bursts)] for ch in range(min(spec.channels, numel))]
    return Kernel(name, op_type, streams, macs=0, weight_bytes=numel * eb, rows_used=0)
