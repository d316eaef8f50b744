"""Event-driven timing of an NPU instruction stream, and what each instruction costs.

Each core has four in-order engine queues (dma_in, matrix, vector, dma_out); all DMA
engines share the DRAM channel. Between BARRIERs the simulator repeatedly starts the
queue head that can start earliest: its engine is free, every channel it waits on holds
a token (tokens are FIFO per core and channel; a token carries the time its signaller
ended) and, for DMA, its bytes then occupy DRAM at the sustained bandwidth. A BARRIER
starts when every engine of every core has drained.

Everything is read off the instructions' fields: the bytes a DMA moves are its block's
elements times their dtype's size, a MATMUL's cycles are the systolic formula of its tile
at the rate the chip lists for its operand dtype, a VECTOR's the vector unit's model over
its tile (a window function's work per output is its CONFIG's taps). The same walk counts
MACs, bytes and vector operations for the report.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import systolic_cycles, vector_cycles
from kcompiler.backends.npu.spec import MAC_ENERGY_45NM_PJ, NpuSpec
from kcompiler.errors import LoweringError

#: the chip-table name of an instruction dtype (spec.array.dtypes keys)
CHIP_DTYPE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8"}


@dataclass
class InstrTime:
    start: int
    end: int
    dram_cycles: int = 0
    dram_start: int = 0  # when its bytes start to occupy the DRAM channel (DMA only)


@dataclass
class Work:
    """What one instruction does, from its fields: for the timing model and the report."""

    dram_bytes: int = 0
    macs: int = 0
    vector_elems: int = 0  # lane operations of the vector unit
    sram_bytes: int = 0
    cycles: int = 0  # engine cycles (MATMUL / VECTOR; DMA time comes from the DRAM channel)
    mac_dtype: str = ""  # MATMUL: the operand dtype


def _numel(*dims: int) -> int:
    return math.prod(dims)


def mac_rate(spec: NpuSpec, dtype: str) -> tuple[float, str]:
    """(MACs per PE per cycle, chip dtype charged) for operands of instruction dtype `dtype`: the
    chip's rate for it where it lists one, else its charged dtype's."""
    name = CHIP_DTYPE.get(dtype, "")
    if name in spec.array.dtypes:
        return spec.array.dtypes[name], name
    return spec.array.rate, spec.array.dtype


def mac_energy(spec: NpuSpec, charged: str) -> float:
    """Energy of one MAC charged at chip dtype `charged` (the TOML gives it at the chip's charged
    dtype; others scale by Horowitz's 45 nm ratios, see spec.py)."""
    base = spec.energy.per_mac_j
    e = MAC_ENERGY_45NM_PJ
    if charged != spec.array.dtype and charged in e and spec.array.dtype in e:
        return base * e[charged] / e[spec.array.dtype]
    return base


def work(instrs: list[isa.Instr], spec: NpuSpec) -> list[Work]:
    """Each instruction's work, walking the program in order (window functions read the vector
    unit's CONFIG in force; a barrier clears it)."""
    a = spec.array
    v = spec.vector
    windows: dict[tuple[int, int], tuple[int, ...]] = {}
    out = []
    for ins in instrs:
        w = Work()
        oc = ins.opcode
        if oc == isa.BARRIER:
            windows.clear()
        elif oc == isa.CONFIG:
            f = ins.fields()
            windows[(ins.core, ins.aux & 1)] = (f["kh"], f["kw"])
        elif oc in (isa.LOAD, isa.STORE):
            f = ins.fields()
            n = _numel(f["n0"], f["n1"], f["n2"], f["n3"]) * _eb(ins.aux)
            w.dram_bytes = w.sram_bytes = n
        elif oc == isa.COPY:
            f = ins.fields()
            w.dram_bytes = 2 * _numel(f["n0"], f["n1"], f["n2"], f["n3"]) * _eb(ins.aux)
        elif oc == isa.FILL:
            f = ins.fields()
            w.dram_bytes = _numel(f["n0"], f["n1"], f["n2"], f["n3"]) * isa.DTYPE_BYTES.get(_dt(ins.aux & 0xF), 1)
        elif oc == isa.GATHER:
            f = ins.fields()
            eb = _eb(ins.aux & 0xF)
            w.dram_bytes = (2 * f["outer"] * f["count"] * f["inner"] * eb
                            + f["count"] * isa.DTYPE_BYTES.get(_dt(ins.aux >> 4 & 0xF), 8))
        elif oc == isa.MATMUL:
            f = ins.fields()
            g, m, n, k = f["g"], f["m"], f["n"], f["k"]
            dt = _dt(ins.aux & 0xF)
            rate, charged = mac_rate(spec, dt)
            w.mac_dtype = charged
            w.macs = g * m * n * k
            eb = isa.DTYPE_BYTES.get(dt, 4)
            w.sram_bytes = g * ((m * k + k * n) * eb + m * n * 4)
            w.cycles = g * systolic_cycles(a.rows, a.cols, a.dataflow, m, k, n, rate) + spec.issue_cycles
        elif oc == isa.VECTOR:
            w = _vector_work(ins, spec, windows)
            fn = isa.VFN_NAMES[ins.aux] if ins.aux < len(isa.VFN_NAMES) else "copy"
            cls = isa.VFN_CLASS[fn]
            w.cycles = vector_cycles(v.lanes, v.latency[cls], v.cycles_per_elem[cls], w.vector_elems) + spec.issue_cycles
        out.append(w)
    return out


def _dt(code: int) -> str:
    return isa.DTYPES[code] if code < len(isa.DTYPES) else "u8"


def _eb(code: int) -> int:
    return isa.ESIZES[code] if code < len(isa.ESIZES) else 1


def _vector_work(ins: isa.Instr, spec: NpuSpec, windows) -> Work:
    f = ins.fields()
    fn = isa.VFN_NAMES[ins.aux] if ins.aux < len(isa.VFN_NAMES) else "copy"
    _, n_src, per = isa.VECTOR_FNS[fn]
    tile = (f["n0"], f["n1"], f["n2"], f["n3"])
    masks = [f["bcast"] >> (4 * i) & 0xF for i in range(5)]
    dts = [_dt(f["dtypes"] >> (4 * i) & 0xF) for i in range(5)]

    def numel(mask):
        return _numel(*(1 if mask >> d & 1 else x for d, x in enumerate(tile)))

    w = Work()
    if fn in isa.WINDOW_FNS:
        kh, kw = windows.get((ins.core, 1), (1, 1))
        mult = max(1, f["arg"]) if fn == "dwconv" else 1
        outs = _numel(*tile) * mult
        w.vector_elems = outs * kh * kw
        if fn == "dwconv":
            w.macs = outs * kh * kw
        w.sram_bytes = outs * (kh * kw + 1) * isa.DTYPE_BYTES.get(dts[0], 4)
        return w
    if fn in ("softmax", "layernorm", "rmsnorm", "reduce_sum", "reduce_mean", "reduce_max", "lrn"):
        elems = _numel(*tile)
    elif fn == "attn_step":
        elems = tile[0] * tile[1]
    elif fn == "attn_final":
        elems = tile[0] * tile[1]
    else:
        elems = numel(masks[0])
    w.vector_elems = int(elems * per)
    srcs = [f["src0"], f["src1"], f["src2"], f["src3"]]
    w.sram_bytes = elems * isa.DTYPE_BYTES.get(dts[0], 4) + sum(
        numel(masks[i + 1]) * isa.DTYPE_BYTES.get(dts[i + 1], 4) for i in range(min(n_src, 4)) if srcs[i] != isa.NONE)
    return w


def simulate(instrs: list[isa.Instr], spec: NpuSpec, works: list[Work] | None = None
             ) -> tuple[list[InstrTime], int, dict[str, int]]:
    """(per-instruction times, total cycles, busy cycles per engine and 'dram')."""
    works = works if works is not None else work(instrs, spec)
    times: list[InstrTime | None] = [None] * len(instrs)
    bpc = spec.dram_bytes_per_cycle
    lat = int(round(spec.dram.latency_s * spec.clock_hz))
    busy: dict[str, int] = {}
    now = 0
    seg: list[int] = []

    def run_segment(seg: list[int], t0: int) -> int:
        queues: dict[tuple[int, str], deque] = {}
        for i in seg:
            ins = instrs[i]
            queues.setdefault((ins.core, ins.engine), deque()).append(i)
        free = {key: t0 for key in queues}
        tokens: dict[tuple[int, int], deque] = {}
        dram_free = t0
        end_all = t0
        remaining = len(seg)
        keys = list(queues)
        while remaining:
            best = None
            for key in keys:
                q = queues[key]
                if not q:
                    continue
                ins = instrs[q[0]]
                t = free[key]
                ok = True
                w = ins.wait
                while w:
                    bit = w & -w
                    w ^= bit
                    tq = tokens.get((ins.core, bit))
                    if not tq:
                        ok = False
                        break
                    t = max(t, tq[0])
                if ok and (best is None or t < best[0] or (t == best[0] and q[0] < best[2])):
                    best = (t, key, q[0])
            if best is None:
                stuck = [instrs[q[0]].text() for q in queues.values() if q]
                raise LoweringError("NPU program deadlocks: no engine can start; heads: " + "; ".join(stuck[:4]))
            t, key, i = best
            ins = instrs[i]
            queues[key].popleft()
            w = ins.wait
            while w:
                bit = w & -w
                w ^= bit
                tokens[(ins.core, bit)].popleft()
            nbytes = works[i].dram_bytes
            if nbytes:
                xfer = math.ceil(nbytes / bpc)
                d0 = max(t, dram_free)
                dram_free = d0 + xfer
                end = d0 + xfer + lat + spec.issue_cycles
                times[i] = InstrTime(t, end, xfer, d0)
                busy["dram"] = busy.get("dram", 0) + xfer
            else:
                end = t + (works[i].cycles or spec.issue_cycles)
                times[i] = InstrTime(t, end)
            name = f"core{ins.core}.{ins.engine}"
            busy[name] = busy.get(name, 0) + (end - t)
            free[key] = end
            s = ins.signal
            while s:
                bit = s & -s
                s ^= bit
                tokens.setdefault((ins.core, bit), deque()).append(end)
            end_all = max(end_all, end)
            remaining -= 1
        leftover = [(c, b) for (c, b), q in tokens.items() if q]
        if leftover:
            raise LoweringError(f"NPU program leaves unconsumed tokens on channels {leftover}")
        return end_all

    for i, ins in enumerate(instrs):
        if ins.opcode == isa.BARRIER:
            now = run_segment(seg, now)
            times[i] = InstrTime(now, now + spec.issue_cycles)
            now += spec.issue_cycles
            seg = []
        else:
            seg.append(i)
    now = run_segment(seg, now)
    return times, now, busy


def order_violations(prog, times: list[InstrTime], limit: int = 20) -> list[str]:
    """Where the timeline lets two instructions that touch the same bytes (one of them writing)
    overlap in time or run against program order: values follow program order, so each such pair
    is a place where the time describes a different program than the values (a store still
    reading an accumulator that the next tile's MATMUL already overwrites, say).

    Every byte of each core's scratchpad and of DRAM is followed in program order: a reader must
    start after the last writer of its bytes ended, a writer after the last writer and every
    reader since. Returns one line per violation (at most `limit`); empty when the tokens order
    every dependency."""
    import numpy as np

    from kcompiler.backends.npu import sim

    dec = sim.Decoder(prog)
    out: list[str] = []
    sram_w = [np.full(prog.sram_bytes, -1, np.int64) for _ in range(prog.cores)]
    sram_r = [np.full(prog.sram_bytes, -1, np.int64) for _ in range(prog.cores)]
    # DRAM: only the bytes a segment between barriers touches can conflict, and a barrier orders
    # everything before it; per segment, the touched extents are tracked sparsely by buffer
    dram: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def dram_maps(a) -> tuple[np.ndarray, np.ndarray, int]:
        lo, hi = a.region
        key = (lo, hi)
        if key not in dram:
            dram[key] = (np.full(hi - lo, -1, np.int64), np.full(hi - lo, -1, np.int64))
        w, r = dram[key]
        return w, r, lo

    for i, ins in enumerate(prog.instrs):
        accs = dec.accesses(ins)
        if ins.opcode == isa.BARRIER:
            for m in sram_w + sram_r:
                m[...] = -1
            dram.clear()
            continue
        t = times[i]
        marks = []
        for a in accs:
            if a.extent() is None:
                continue
            if a.space == "sram":
                w, r, base = sram_w[a.core], sram_r[a.core], 0
            else:
                w, r, base = dram_maps(a)
            idx = _byte_indices(a) - base
            marks.append((a.write, w, r, idx))
            need = w[idx].max()
            if a.write:
                need = max(need, r[idx].max())
            if need > t.start and len(out) < limit:
                j = int(np.flatnonzero((w[idx] == need) | (r[idx] == need))[0])
                out.append(f"instruction {i} `{ins.text()}` starts at cycle {t.start}, before cycle {need} when an "
                           f"earlier instruction that {'reads or ' if a.write else ''}writes its "
                           f"{a.space} byte {int(idx[j]) + base} ends")
        for write, w, r, idx in marks:  # after checking all: an instruction may read what it writes
            if write:
                w[idx] = t.end
            else:
                r[idx] = np.maximum(r[idx], t.end)
    return out


def _byte_indices(a) -> "np.ndarray":
    """The absolute byte addresses an access touches (every byte of every element)."""
    import numpy as np

    e = a.esize
    idx = np.asarray(a.addr, np.int64)
    for n, s in zip(a.shape, a.strides):
        idx = idx[..., None] + np.arange(n, dtype=np.int64) * s * e
    return (idx[..., None] + np.arange(e, dtype=np.int64)).ravel()
