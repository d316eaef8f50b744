"""Timing and energy of a CIM program, from its instruction rows and the chip's figures.

Within one step (a node of the subgraph) the crossbars work in parallel, each through the MVMs
and reprogramming (PROG every=1) it is given; the digital periphery and the activation memory
stream beside them. A step lasts as long as the busiest of the three. Energy is counted by where
it goes: dac, crossbar, adc, shift_add (the analog MVM), digital (periphery ops), data_movement
(activation memory), programming. Needs no weights: a timing-only program has the same rows."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kcompiler.backends.base import OpEvent, Timeline
from kcompiler.backends.cim import isa
from kcompiler.backends.cim.sim.code import Code
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import ExecutionError

ENERGY_PARTS = ("dac", "crossbar", "adc", "shift_add", "digital", "data_movement", "programming")


class _Step:
    def __init__(self):
        self.xbar_s: dict[int, float] = defaultdict(float)
        self.digital_ops = 0.0
        self.bytes = 0.0
        self.macs = 0
        self.energy = dict.fromkeys(ENERGY_PARTS, 0.0)


def _account(spec: CimSpec, code: Code, st: _Step, row: np.ndarray) -> None:
    name, f = isa.fields_of(row)
    e = spec.energy
    if name == "MVM":
        n, cols = max(f["nvec"], 0), f["outs"] * spec.slices
        st.xbar_s[f["xbar"]] += n * spec.mvm_seconds(cols)
        for k, v in spec.mvm_energy(f["rows"], cols).items():
            st.energy[k] += n * v
        # abs-max and quantisation of each input, scale and accumulation of each output
        st.digital_ops += n * (2 * f["rows"] + 3 * f["outs"])
        st.bytes += 4 * n * (f["rows"] + f["outs"] * (2 if f["acc"] else 1))
        st.macs += n * f["rows"] * f["outs"]
    elif name == "PROG" and f["every"] not in (0, 1):
        raise ExecutionError(f"CIM program: PROG every={f['every']} (0: resident, 1: every inference)")
    elif name == "PROG" and f["every"]:
        rows = int(code.image_rows[f["image"]]) if 0 <= f["image"] < len(code.image_rows) else spec.rows
        st.xbar_s[f["xbar"]] += rows * spec.timing.program_row_s
        st.energy["programming"] += rows * spec.cols * spec.planes * e.program_cell_j
    elif name == "IM2COL":
        patches = f["n"] * f["oh"] * f["ow"] * f["c"] * f["kh"] * f["kw"]
        st.bytes += 4 * (patches + f["n"] * f["c"] * f["h"] * f["w"])
    elif name == "XPOSE":
        st.bytes += 8 * f["a"] * f["b"] * f["c"]
    elif name == "VOP":
        size = f["d0"] * f["d1"] * f["d2"] * f["d3"]
        st.digital_ops += size
        st.bytes += 4 * size * (3 if f["fn"] in isa.BINARY else 2)


def simulate(spec: CimSpec, code: Code) -> Timeline:
    steps: dict[int, _Step] = defaultdict(_Step)
    for row in code.instrs:
        if not 0 <= int(row[1]) < len(code.steps):  # its time would be charged to no node, silently
            raise ExecutionError(f"CIM program: a row of step {int(row[1])}; the program has {len(code.steps)}")
        _account(spec, code, steps[int(row[1])], row)
    t, ops, busy = 0.0, [], defaultdict(float)
    e = spec.energy
    for i, (name, op_type) in enumerate(code.steps):
        st = steps.get(i, _Step())
        st.energy["digital"] += st.digital_ops * e.digital_op_j
        st.energy["data_movement"] += st.bytes * e.sram_byte_j
        analog = max(st.xbar_s.values(), default=0.0)
        digital = st.digital_ops / spec.timing.digital_ops_per_s
        memory = st.bytes / spec.timing.sram_bandwidth
        dur = max(analog, digital, memory)
        bound = "memory" if memory > max(analog, digital) else "compute"  # the digital periphery computes too
        ops.append(OpEvent(name, op_type, t, t + dur, cycles=int(round(dur * spec.clock_hz)), macs=st.macs,
                           sram_bytes=int(st.bytes), energy_j=sum(st.energy.values()), bound=bound,
                           engine="crossbars", energy_parts={k: v for k, v in st.energy.items() if v},
                           dtype=_dtype(spec, st)))
        busy["crossbars"] += analog
        busy["digital"] += digital
        busy["memory"] += memory
        t += dur
    return Timeline(seconds=t, cycles=int(round(t * spec.clock_hz)), ops=ops, engine_busy_s=dict(busy))


def _dtype(spec: CimSpec, st: "_Step") -> str:
    """What a CIM step computed at: its crossbars' analog products at the chip's input and weight
    precisions, or only the digital periphery."""
    if st.macs:
        return f"analog {spec.input_bits}-bit x {spec.weight_bits}-bit"
    return "digital" if st.digital_ops else ""


def programming_cost(spec: CimSpec, code: Code) -> tuple[float, float, int]:
    """(seconds, joules, crossbars) of writing the program's images once (PROG every=0): crossbars
    are written in parallel, the rows of one crossbar one after another."""
    per_xbar: dict[int, float] = defaultdict(float)
    joules = 0.0
    for row in code.instrs:
        if int(row[0]) == isa.PROG:
            _, f = isa.fields_of(row)
            rows = int(code.image_rows[f["image"]]) if 0 <= f["image"] < len(code.image_rows) else spec.rows
            per_xbar[f["xbar"]] += rows * spec.timing.program_row_s
            joules += rows * spec.cols * spec.planes * spec.energy.program_cell_j
    return max(per_xbar.values(), default=0.0), joules, len(per_xbar)
