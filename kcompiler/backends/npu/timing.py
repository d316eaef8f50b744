"""Event-driven timing of an NPU instruction stream.

Each core has four in-order engine queues (dma_in, matrix, vector, dma_out); all DMA
engines share the DRAM channel. Between BARRIERs the simulator repeatedly starts the
queue head that can start earliest: its engine is free, every channel it waits on holds
a token (tokens are FIFO per core and channel; a token carries the time its signaller
ended) and, for DMA, its bytes then occupy DRAM at the sustained bandwidth. A BARRIER
starts when every engine of every core has drained.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import systolic_cycles, vector_cycles
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.errors import LoweringError


@dataclass
class InstrTime:
    start: int
    end: int
    dram_cycles: int = 0
    dram_start: int = 0  # when its bytes start to occupy the DRAM channel (DMA only)


def dma_bytes(ins: isa.Instr) -> int:
    if ins.opcode in (isa.LOAD, isa.STORE):
        return ins.args[2] * ins.args[3]
    if ins.opcode == isa.COPY:
        return ins.args[0] + ins.args[1]
    return 0


def compute_cycles(ins: isa.Instr, spec: NpuSpec) -> int:
    """Cycles a MATMUL or VECTOR instruction keeps its engine busy (DMA: see simulate)."""
    if ins.opcode == isa.MATMUL:
        g0, g1, m0, m1, n0, n1, k0, k1 = ins.args
        a = spec.array
        return (g1 - g0) * systolic_cycles(a.rows, a.cols, a.dataflow, m1 - m0, k1 - k0, n1 - n0, a.rate) \
            + spec.issue_cycles
    if ins.opcode == isa.VECTOR:
        cls = isa.VFN_CLASS[isa.VECTOR_FNS[ins.aux][0]]
        v = spec.vector
        return vector_cycles(v.lanes, v.latency[cls], v.cycles_per_elem[cls], ins.args[2]) + spec.issue_cycles
    return spec.issue_cycles


def sram_bytes(ins: isa.Instr, spec: NpuSpec) -> int:
    eb = spec.elem_bytes
    if ins.opcode == isa.MATMUL:
        g0, g1, m0, m1, n0, n1, k0, k1 = ins.args
        m, n, k = m1 - m0, n1 - n0, k1 - k0
        return int((g1 - g0) * ((m * k + k * n) * eb + m * n * 4))
    if ins.opcode == isa.VECTOR:
        return int(ins.args[2] * eb * (ins.args[5] + 1))
    return dma_bytes(ins)


def simulate(instrs: list[isa.Instr], spec: NpuSpec, op_specs: list[NpuSpec] | None = None
             ) -> tuple[list[InstrTime], int, dict[str, int]]:
    """(per-instruction times, total cycles, busy cycles per engine and 'dram'). `op_specs[op]`
    charges one op's MATMUL/VECTOR instructions (the chip at that op's value dtype, see
    NpuSpec.for_values); the DRAM channel and the issue cost are the chip's."""
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
            nbytes = dma_bytes(ins)
            if nbytes:
                xfer = math.ceil(nbytes / bpc)
                d0 = max(t, dram_free)
                dram_free = d0 + xfer
                end = d0 + xfer + lat + spec.issue_cycles
                times[i] = InstrTime(t, end, xfer, d0)
                busy["dram"] = busy.get("dram", 0) + xfer
            else:
                end = t + compute_cycles(ins, spec if op_specs is None else op_specs[ins.op])
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
