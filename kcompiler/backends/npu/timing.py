"""Event-driven timing of an NPU instruction stream, and what each instruction costs.

Each core has four in-order engine queues (dma_in, matrix, vector, dma_out); all DMA
engines share the DRAM channel. Between BARRIERs the simulator repeatedly starts the
queue head that can start earliest: its engine is free, every channel it waits on holds
a token (tokens are FIFO per core and channel; a token carries the time its signaller
ended) and, for DMA, its bytes then occupy DRAM at the sustained bandwidth. A BARRIER
starts when every engine of every core has drained.

Everything is read off the instructions' fields: the bytes a DMA moves are its block's
elements times their dtype's size, a MATMUL's cycles are the systolic formula of its tile
at the rate the chip lists for its operand dtype (an operand dtype the chip does not list: once per
pass of the emulation emulation.charge gives, at the rate of the dtype the passes run at), a
VECTOR's the vector unit's model over its tile (a window function's work per output is its CONFIG's taps). The same walk counts
MACs, bytes and vector operations for the report.

A segment whose instructions say exactly what an earlier segment's said about time (core,
engine, channels, DRAM bytes, cycles) has that segment's timeline shifted to its own start: a
decoder's 32 identical blocks are scheduled once (see simulate).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from kcompiler.backends.npu import isa, sim
from kcompiler.backends.npu.cost import systolic_cycles, vector_cycles
from kcompiler.backends.npu.emulation import Charge, charge
from kcompiler.backends.npu.memo import BoundedStore
from kcompiler.backends.npu.sim.maskvec import compute_dtype
from kcompiler.backends.npu.spec import MAC_ENERGY_45NM_PJ, NpuSpec
from kcompiler.errors import LoweringError

#: the chip-table name of an instruction dtype (spec.array.dtypes keys)
CHIP_DTYPE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8", "f8e4m3": "fp8",
              "f8e5m2": "fp8"}


@dataclass(slots=True)
class InstrTime:
    start: int
    end: int
    dram_cycles: int = 0
    dram_start: int = 0  # when its bytes start to occupy the DRAM channel (DMA only)


@dataclass(frozen=True, slots=True)
class Work:
    """What one instruction does, from its fields: for the timing model and the report.
    Instructions that do the same work share one (work() makes each distinct one once)."""

    dram_bytes: int = 0
    macs: int = 0
    vector_elems: int = 0  # lane operations of the vector unit
    sram_bytes: int = 0
    cycles: int = 0  # engine cycles (MATMUL / VECTOR; DMA time comes from the DRAM channel)
    mac_dtype: str = ""  # MATMUL: the array dtype its passes are charged at
    mac_passes: int = 1  # MATMUL: passes of the array (an emulation's, emulation.py), each charged
    mac_label: str = ""  # MATMUL: what it computed at, for the report ("fp32 as 10 int8 passes")


def _numel(*dims: int) -> int:
    return math.prod(dims)


def mac_charge(spec: NpuSpec, dtype: str) -> Charge:
    """How a MATMUL with operands of instruction dtype `dtype` runs on the chip's array: natively at
    its own rate where the chip lists it, else as the emulation the one rule gives (emulation.charge:
    float32 on warboy is 10 int8 passes), the same rule the tiler's estimates use (spec.for_values).
    Cached per (chip, dtype)."""
    key = (id(spec), dtype)
    hit = _CHARGES.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    a = spec.array
    c = charge(a.dtypes, CHIP_DTYPE.get(dtype) or a.dtype, a.dtype)
    _CHARGES[key] = (spec, c)
    return c


_CHARGES: dict = {}


def mac_rate(spec: NpuSpec, dtype: str) -> tuple[float, str]:
    """(MACs per PE per cycle of one pass, chip dtype charged) for operands of instruction dtype
    `dtype`: the chip's rate for the dtype the passes run at (mac_charge; the number of passes
    multiplies the cycles, see work())."""
    c = mac_charge(spec, dtype)
    return spec.array.dtypes.get(c.dtype, spec.array.rate), c.dtype


def mac_energy(spec: NpuSpec, charged: str) -> float:
    """Energy of one MAC charged at chip dtype `charged` (the TOML gives it at the chip's charged
    dtype; others scale by Horowitz's 45 nm ratios, see spec.py)."""
    base = spec.energy.per_mac_j
    e = MAC_ENERGY_45NM_PJ
    if charged != spec.array.dtype and charged in e and spec.array.dtype in e:
        return base * e[charged] / e[spec.array.dtype]
    return base


def _at(opcode: int, *names: str) -> tuple[int, ...]:
    """The positions of named operand fields of an opcode (unsigned fields only: read raw)."""
    assert not isa.SIGNED.intersection(names)
    return tuple(isa.names_of(opcode).index(n) for n in names)


_LD_N = _at(isa.LOAD, "n0", "n1", "n2", "n3")
_ST_N = _at(isa.STORE, "n0", "n1", "n2", "n3")
_CP_N = _at(isa.COPY, "n0", "n1", "n2", "n3")
_FL_N = _at(isa.FILL, "n0", "n1", "n2", "n3")
_GA = _at(isa.GATHER, "outer", "count", "inner")
_MM = _at(isa.MATMUL, "g", "m", "n", "k")
_CF = _at(isa.CONFIG, "kh", "kw")
_VEC = _at(isa.VECTOR, "n0", "n1", "n2", "n3", "bcast", "dtypes", "arg", "src0", "src1", "src2", "src3")
_VEC_SHAPE, _VEC_SRC = _VEC[:7], _VEC[7:]  # a VECTOR's work reads its sources' presence, not their addresses
_VEC_DT = _VEC[5]


def work(instrs: list[isa.Instr], spec: NpuSpec) -> list[Work]:
    """Each instruction's work, walking the program in order (window functions read the vector
    unit's CONFIG in force; a barrier clears it). Fields are read by position (see _at); each
    distinct work is computed once (a MATMUL's from its shape and dtype, a VECTOR's from its
    function, tile, masks, dtypes and window, a DMA's from its bytes)."""
    a = spec.array
    v = spec.vector
    issue = spec.issue_cycles
    windows: dict[tuple[int, int], tuple[int, ...]] = {}
    seen: dict[tuple, Work] = {}
    out = []
    append = out.append
    for ins in instrs:
        oc = ins.opcode
        x = ins.args
        if oc == isa.LOAD or oc == isa.STORE:
            i0, i1, i2, i3 = _LD_N if oc == isa.LOAD else _ST_N
            key = (isa.LOAD, x[i0] * x[i1] * x[i2] * x[i3] * _eb(ins.aux))
            w = seen.get(key)
            if w is None:
                w = seen[key] = Work(dram_bytes=key[1], sram_bytes=key[1])
        elif oc == isa.MATMUL:
            ig, im, in_, ik = _MM
            key = (oc, x[ig], x[im], x[in_], x[ik], ins.aux & 0xF)
            w = seen.get(key)
            if w is None:
                _, g, m, n, k, code = key
                dt = _dt(code)
                rate, charged = mac_rate(spec, dt)
                c = mac_charge(spec, dt)  # an emulated GEMM: the array runs every pass over the tile
                eb = isa.DTYPE_BYTES.get(dt, 4)
                w = seen[key] = Work(
                    macs=g * m * n * k, sram_bytes=g * ((m * k + k * n) * eb + m * n * 4),
                    cycles=g * c.passes * systolic_cycles(a.rows, a.cols, a.dataflow, m, k, n, rate) + issue,
                    mac_dtype=charged, mac_passes=c.passes, mac_label=c.label)
        elif oc == isa.VECTOR:
            key = (oc, ins.aux, windows.get((ins.core, 1)), *(x[i] for i in _VEC_SHAPE),
                   *(x[i] == isa.NONE for i in _VEC_SRC))
            w = seen.get(key)
            if w is None:
                macs, elems, sram = _vector_work(ins, windows)
                fn = isa.VFN_NAMES[ins.aux] if ins.aux < len(isa.VFN_NAMES) else "copy"
                cls = isa.VFN_CLASS[fn]
                # charged at the dtype it computes in (an int64 compare costs what the chip says int64 does)
                names = [_dt(x[_VEC_DT] >> (4 * i) & 0xF) for i in range(5)
                         if i == 0 or x[_VEC_SRC[i - 1]] != isa.NONE]  # (an absent operand's code is 0)
                rel = v.dtypes.get(compute_dtype(fn, names), 1.0)
                w = seen[key] = Work(macs=macs, vector_elems=elems, sram_bytes=sram, cycles=vector_cycles(
                    v.lanes, v.latency[cls], v.cycles_per_elem[cls] * rel, elems) + issue)
        elif oc == isa.BARRIER:
            windows.clear()
            w = _NO_WORK
        elif oc == isa.CONFIG:
            if ins.aux < 2:  # (unit 2, the feeder's zero-point registers, sets no window)
                windows[(ins.core, ins.aux)] = (x[_CF[0]], x[_CF[1]])
            w = _NO_WORK
        elif oc == isa.COPY:
            i0, i1, i2, i3 = _CP_N
            w = Work(dram_bytes=2 * x[i0] * x[i1] * x[i2] * x[i3] * _eb(ins.aux))
        elif oc == isa.FILL:
            i0, i1, i2, i3 = _FL_N
            w = Work(dram_bytes=x[i0] * x[i1] * x[i2] * x[i3] * isa.DTYPE_BYTES.get(_dt(ins.aux & 0xF), 1))
        elif oc == isa.GATHER:
            io, ic, ii = _GA
            eb = _eb(ins.aux & 0xF)
            w = Work(dram_bytes=(2 * x[io] * x[ic] * x[ii] * eb
                                 + x[ic] * isa.DTYPE_BYTES.get(_dt(ins.aux >> 4 & 0xF), 8)))
        else:
            w = _NO_WORK
        append(w)
    return out


_NO_WORK = Work()


def _dt(code: int) -> str:
    return isa.DTYPES[code] if code < len(isa.DTYPES) else "u8"


def _eb(code: int) -> int:
    return isa.ESIZES[code] if code < len(isa.ESIZES) else 1


_REDUCING = frozenset({"softmax", "layernorm", "rmsnorm", "reduce_sum", "reduce_mean", "reduce_max", "lrn",
                       "reduce_min", "reduce_rstd", "logsoftmax", "hardmax", "argmax", "argmin", "reduce_l1",
                       "reduce_l2", "reduce_sumsquare", "reduce_logsum", "reduce_logsumexp", "reduce_prod",
                       "lp_normalize"})


def _vector_work(ins: isa.Instr, windows) -> tuple[int, int, int]:
    """(MACs, vector lane operations, scratchpad bytes) of a VECTOR."""
    n0, n1, n2, n3, bcast, dtypes, arg, *srcs = (ins.args[i] for i in _VEC)
    fn = isa.VFN_NAMES[ins.aux] if ins.aux < len(isa.VFN_NAMES) else "copy"
    _, n_src, per = isa.VECTOR_FNS[fn]
    tile = (n0, n1, n2, n3)

    def numel(mask):
        if not mask & 0xF:
            return n0 * n1 * n2 * n3
        return _numel(*(1 if mask >> d & 1 else x for d, x in enumerate(tile)))

    def dtype_bytes(i):  # (a packed 4-bit operand: half a byte per element)
        return isa.DTYPE_BITS.get(_dt(dtypes >> (4 * i) & 0xF), 32) / 8

    if fn in isa.WINDOW_FNS:
        kh, kw = windows.get((ins.core, 1), (1, 1))
        mult = max(1, arg) if fn == "dwconv" else 1
        outs = n0 * n1 * n2 * n3 * mult
        return (outs * kh * kw if fn == "dwconv" else 0), outs * kh * kw, outs * (kh * kw + 1) * dtype_bytes(0)
    if fn in _REDUCING:
        elems = n0 * n1 * n2 * n3
    elif fn == "attn_step" or fn == "attn_final":
        elems = n0 * n1
    else:
        elems = numel(bcast)
    sram = elems * dtype_bytes(0) + sum(
        numel(bcast >> (4 * (i + 1))) * dtype_bytes(i + 1) for i in range(min(n_src, 4)) if srcs[i] != isa.NONE)
    return 0, int(elems * per), int(sram)


def simulate(instrs: list[isa.Instr], spec: NpuSpec, works: list[Work] | None = None, memo: bool = True
             ) -> tuple[list[InstrTime], int, dict[str, int]]:
    """(per-instruction times, total cycles, busy cycles per engine and 'dram').

    A segment between barriers is timed from what its instructions say about time alone: per
    instruction its core, engine, wait and signal channels, DRAM bytes and engine cycles (with the
    chip's bytes per cycle, DRAM latency and issue cycles), and its start t0. Every time in it is
    t0 plus integers from those, so its timeline shifts with t0. With `memo`, a segment whose
    instructions say exactly what an earlier one's said, in this program or another (a
    transformer's next layer, the same layer's share on the next chip), replays that one's
    relative times at its own t0 instead of being scheduled again (_SEGMENTS); a segment that
    deadlocks or leaves tokens raises every time, as it is never stored."""
    works = works if works is not None else work(instrs, spec)
    n = len(instrs)
    times: list[InstrTime | None] = [None] * n
    bpc = spec.dram_bytes_per_cycle
    lat = int(round(spec.dram.latency_s * spec.clock_hz))
    issue = spec.issue_cycles
    # replaying relative times is exact for integer times only (they always are: the chip's
    # issue cycles is an integer field, the rest are ceilings and products of integers)
    memo = memo and isinstance(issue, int)
    busy: dict[str, int] = {}
    engines = [ins.engine for ins in instrs]
    # what each instruction says about time (equal tuples are one object: keys compare fast)
    seen: dict[tuple, tuple] = {}
    sigs = [seen.setdefault(sig, sig) for sig in
            zip([ins.core for ins in instrs], engines, [ins.wait for ins in instrs], [ins.signal for ins in instrs],
                [w.dram_bytes for w in works], [w.cycles for w in works])]
    chip = (bpc, lat, issue)

    def segment(seg: list[int], t0: int) -> int:
        key = (chip, tuple([sigs[i] for i in seg])) if memo else None
        hit = _SEGMENTS.get(key) if memo else None
        if hit is None:
            hit = _run_segment(seg, t0, instrs, engines, works, bpc, lat, issue)
            if memo:
                _SEGMENTS.put(key, hit, len(seg))
        rel, seg_busy, span = hit
        for i, (s, e, dc, ds) in zip(seg, rel):
            times[i] = InstrTime(t0 + s, t0 + e) if ds is None else InstrTime(t0 + s, t0 + e, dc, t0 + ds)
        for name, c in seg_busy.items():
            busy[name] = busy.get(name, 0) + c
        return t0 + span

    now = 0
    seg: list[int] = []
    for i, ins in enumerate(instrs):
        if ins.opcode == isa.BARRIER:
            now = segment(seg, now)
            times[i] = InstrTime(now, now + issue)
            now += issue
            seg = []
        else:
            seg.append(i)
    now = segment(seg, now)
    return times, now, busy


#: segment timelines relative to their start, by (chip constants, what each instruction says about
#: time): at most 100k instructions' worth (~30 MB), the oldest dropped first
_SEGMENTS = BoundedStore(100_000)


def _run_segment(seg: list[int], t0: int, instrs: list[isa.Instr], engines: list[str], works: list[Work],
                 bpc: float, lat: int, issue: int) -> tuple[list[tuple], dict[str, int], int]:
    """One segment's schedule from t0, relative to t0: (per instruction (start, end, DRAM cycles,
    DRAM start or None when it moves no DRAM bytes), busy cycles per engine in the order they first
    appear, end).

    Repeatedly starts the queue head that can start earliest (ties: the earliest in the program).
    A head's earliest start changes only when its own queue runs (the engine's free time, the
    next head) or when a token of a channel it waits on is pushed or popped, which only an
    instruction of its own core does; so after each start only that core's heads that wait on a
    channel it touched are looked at again, and candidates sit in a heap (stale ones skipped)."""
    qs, by_core = _engine_queues(seg, instrs, engines)
    pos = [0] * len(qs)
    free = [t0] * len(qs)
    tokens: dict[tuple[int, int], deque] = {}
    best: list[tuple[int, int] | None] = [None] * len(qs)  # (earliest start, index) of each head
    heap: list[tuple[int, int, int]] = []

    def look(q: int) -> None:
        """The earliest start of queue q's head, or None while a channel it waits on is empty."""
        if pos[q] == len(qs[q]):
            best[q] = None
            return
        i = qs[q][pos[q]]
        ins = instrs[i]
        t = free[q]
        w = ins.wait
        while w:
            bit = w & -w
            w ^= bit
            tq = tokens.get((ins.core, bit))
            if not tq:
                best[q] = None
                return
            if tq[0] > t:
                t = tq[0]
        best[q] = (t, i)
        heapq.heappush(heap, (t, i, q))

    for q in range(len(qs)):
        look(q)
    rel: dict[int, tuple] = {}
    busy: dict[str, int] = {}
    dram_free = t0
    end_all = t0
    for _ in range(len(seg)):
        t, i, q = _pop_head(heap, best, instrs, qs, pos)
        ins = instrs[i]
        core = ins.core
        pos[q] += 1
        _take_tokens(tokens, core, ins.wait)
        nbytes = works[i].dram_bytes
        if nbytes:
            xfer = math.ceil(nbytes / bpc)
            d0 = max(t, dram_free)
            dram_free = d0 + xfer
            end = d0 + xfer + lat + issue
            rel[i] = (t - t0, end - t0, xfer, d0 - t0)
            busy["dram"] = busy.get("dram", 0) + xfer
        else:
            end = t + (works[i].cycles or issue)
            rel[i] = (t - t0, end - t0, 0, None)
        name = f"core{core}.{engines[i]}"
        busy[name] = busy.get(name, 0) + (end - t)
        free[q] = end
        _give_tokens(tokens, core, ins.signal, end)
        if end > end_all:
            end_all = end
        touched = ins.wait | ins.signal
        for r in by_core[core]:
            if r == q or (pos[r] < len(qs[r]) and instrs[qs[r][pos[r]]].wait & touched):
                look(r)
    leftover = [(c, b) for (c, b), q in tokens.items() if q]
    if leftover:
        raise LoweringError(f"NPU program leaves unconsumed tokens on channels {leftover}")
    return [rel[i] for i in seg], busy, end_all - t0


def _engine_queues(seg: list[int], instrs: list[isa.Instr], engines: list[str]
                   ) -> tuple[list[list[int]], dict[int, list[int]]]:
    """The segment's in-order queues, one per (core, engine) in the order they first appear, and
    per core the indices of its queues."""
    queues: dict[tuple[int, str], list[int]] = {}
    for i in seg:
        queues.setdefault((instrs[i].core, engines[i]), []).append(i)
    by_core: dict[int, list[int]] = {}
    for q, (core, _) in enumerate(queues):
        by_core.setdefault(core, []).append(q)
    return list(queues.values()), by_core


def _pop_head(heap: list[tuple[int, int, int]], best: list, instrs: list[isa.Instr], qs: list[list[int]],
              pos: list[int]) -> tuple[int, int, int]:
    """(start, instruction, queue) of the head that can start earliest, stale candidates skipped;
    a deadlock when no head can start."""
    while heap:
        t, i, q = heapq.heappop(heap)
        if best[q] == (t, i):
            return t, i, q
    stuck = [instrs[qs[q][pos[q]]].text() for q in range(len(qs)) if pos[q] < len(qs[q])]
    raise LoweringError("NPU program deadlocks: no engine can start; heads: " + "; ".join(stuck[:4]))


def _take_tokens(tokens: dict[tuple[int, int], deque], core: int, wait: int) -> None:
    """Pop one token of every channel in the `wait` mask of `core`."""
    while wait:
        bit = wait & -wait
        wait ^= bit
        tokens[(core, bit)].popleft()


def _give_tokens(tokens: dict[tuple[int, int], deque], core: int, signal: int, end: int) -> None:
    """Push a token carrying `end` on every channel in the `signal` mask of `core`."""
    while signal:
        bit = signal & -signal
        signal ^= bit
        tokens.setdefault((core, bit), deque()).append(end)


def order_violations(prog, times: list[InstrTime], limit: int = 20) -> list[str]:
    """Where the timeline lets two instructions that touch the same bytes (one of them writing)
    overlap in time or run against program order: values follow program order, so each such pair
    is a place where the time describes a different program than the values (a store still
    reading an accumulator that the next tile's MATMUL already overwrites, say).

    Every byte of each core's scratchpad and of DRAM is followed in program order: a reader must
    start after the last writer of its bytes ended, a writer after the last writer and every
    reader since. Returns one line per violation (at most `limit`); empty when the tokens order
    every dependency."""
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
    e = a.esize
    idx = np.asarray(a.addr, np.int64)
    for n, s in zip(a.shape, a.strides):
        idx = idx[..., None] + np.arange(n, dtype=np.int64) * s * e
    return (idx[..., None] + np.arange(e, dtype=np.int64)).ravel()
