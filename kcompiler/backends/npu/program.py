"""An NPU program: instructions, buffer table, IO bindings and initial DRAM image; run for values
(sim/) and for time (timing.py) from the same instruction list.

This module and the simulator modules it uses import neither onnx nor onnx_ir: a program runs
without the model it was compiled from (tests/backends/npu/test_npu_sim.py checks it).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from kcompiler.backends.base import EngineSpan, OpEvent, Program, Timeline
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.blas import blas_threads
from kcompiler.backends.npu.sim import Binding, Buffer, ProgramData, Simulator
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.backends.npu.timing import mac_charge, mac_energy, simulate, work
from kcompiler.errors import ArtifactError, ExecutionError

#: per op kind, the engine its report line names
_ENGINE = {"gemm": "matrix", "copy": "dma", "vector": "vector", "view": "view", "const": "view"}
_VALUE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


class NpuProgram(Program):
    def __init__(self, device: str, chip: str, spec: NpuSpec, data: ProgramData, functional: bool,
                 kinds: list[str]):
        self.device = device
        self.chip = chip
        self.spec = spec
        self.data = data
        self.functional = functional
        self.kinds = kinds  # per op: gemm | vector | copy | view | const (for the report's engine column)
        self.sim = Simulator(data)
        self._timeline: Timeline | None = None
        #: outputs that are ONNX bools (memory holds them as bytes 0/1): returned as numpy bools, as
        #: ONNX Runtime returns them (the backend sets it from the subgraph: the bytes do not say)
        self.bool_outputs: frozenset[str] = frozenset()

    # ---- the program's parts (mutable: tests and the mutation benchmark change them) ----------
    @property
    def instrs(self) -> list[isa.Instr]:
        return self.data.instrs

    @property
    def buffers(self) -> list[tuple[str, int, int]]:
        return [(b.name, b.addr, b.nbytes) for b in self.data.buffers]

    def invalidate(self) -> None:
        """After changing instructions or the image: check and plan again, time again."""
        self.sim.invalidate()
        self._timeline = None

    # ---- values ------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.functional:
            raise ExecutionError("this NPU program was compiled in timing mode and has no weights",
                                 hint="compile with mode='functional'")
        feeds = {b.name: inputs[b.name] for b in self.data.inputs if b.name in inputs}
        # one thread per BLAS call: the values do not depend on the host (sim._pool); overflow and
        # invalid operations give inf and NaN, as the hardware's float units do, without a warning
        with blas_threads(1), np.errstate(all="ignore"):
            outs = self.sim.run(feeds)
        for name in self.bool_outputs & outs.keys():
            outs[name] = np.asarray(outs[name]).astype(bool)  # (an array even when 0-d: `!= 0` gives a scalar)
        return outs

    # ---- time --------------------------------------------------------------------------
    def simulate(self) -> Timeline:
        if self._timeline is None:
            self._timeline = self._simulate()
        return self._timeline

    def _simulate(self) -> Timeline:
        spec = self.spec
        clock = spec.clock_hz
        instrs = self.data.instrs
        works = work(instrs, spec)
        times, total, busy = simulate(instrs, spec, works)
        e = spec.energy
        by_op: dict[int, list[int]] = {}
        barrier = isa.BARRIER
        for i, ins in enumerate(instrs):
            if ins.opcode != barrier:
                by_op.setdefault(ins.op, []).append(i)
        per_mac: dict[str, float] = {}  # energy of one MAC by the dtype it is charged at
        ops: list[OpEvent] = []
        t_prev = 0
        for op, (name, op_type) in enumerate(self.data.ops):
            kind = self.kinds[op] if op < len(self.kinds) else "vector"
            if kind == "const":
                continue
            idx = by_op.get(op, [])
            if not idx:
                ops.append(OpEvent(name, op_type, t_prev / clock, t_prev / clock, bound="overhead", engine="view"))
                continue
            start = end = None
            dram = sram = macs = vec = mem = 0
            mac_terms = []
            labels: dict[str, None] = {}  # what its MATMULs computed at, in order
            compute: dict[int, int] = {}
            has_matmul = False
            for i in idx:
                t = times[i]
                a, b = t.start, t.end
                if start is None or a < start:
                    start = a
                if end is None or b > end:
                    end = b
                x = works[i]
                dram += x.dram_bytes
                sram += x.sram_bytes
                vec += x.vector_elems
                mem += t.dram_cycles
                if x.macs:
                    macs += x.macs
                    dt = x.mac_dtype or spec.array.dtype
                    if dt not in per_mac:
                        per_mac[dt] = mac_energy(spec, dt)
                    mac_terms.append(x.macs * per_mac[dt] * x.mac_passes)  # every pass of an emulation
                    if x.mac_label:
                        labels.setdefault(x.mac_label)
                oc = instrs[i].opcode
                if oc == isa.MATMUL or oc == isa.VECTOR:
                    has_matmul = has_matmul or oc == isa.MATMUL
                    core = instrs[i].core
                    compute[core] = compute.get(core, 0) + b - a
            t_prev = end
            mac_j = sum(mac_terms)
            bound = "compute" if max(compute.values(), default=0) >= mem else "memory"
            engine = _ENGINE.get(kind, "vector")
            if kind == "gemm" and not has_matmul:
                engine = "vector"  # a depthwise conv runs on the vector unit
            energy = mac_j + vec * e.per_vector_op_j + sram * e.per_sram_byte_j + dram * e.per_dram_byte_j
            # a MATMUL's dtype (emulation.Charge.label); the vector unit computes in float32 on every chip
            dtype = ", ".join(labels) or ("fp32" if compute else "")
            ops.append(OpEvent(name, op_type, start / clock, end / clock, cycles=end - start, macs=macs,
                               dram_bytes=dram, sram_bytes=sram, energy_j=energy, bound=bound, engine=engine,
                               dtype=dtype))
        return Timeline(seconds=total / clock, cycles=total, ops=ops,
                        engine_busy_s={k: v / clock for k, v in sorted(busy.items())}, notes=self.notes(),
                        spans=self._spans(times))

    def notes(self) -> list[str]:
        """What the report says about the dtypes the MATMULs ran at (natively, or as an emulation in
        passes of a dtype the chip lists: timing.mac_charge) and the values they moved."""
        spec = self.spec
        codes: dict[int, None] = {}  # the MATMUL operand dtype codes in the order they first appear
        for ins in self.data.instrs:
            if ins.opcode == isa.MATMUL:
                codes.setdefault(ins.aux & 0xF)
        out = []
        for code in codes:
            dt = isa.DTYPES[code] if code < len(isa.DTYPES) else ""
            c = mac_charge(spec, dt)
            kind = "OPS" if c.dtype.startswith("int") else "FLOPS"
            text = (f"NPU GEMMs with {c.operand.upper()} operands ({c.operand.upper()} bytes) on {self.chip}: "
                    f"{spec.peak_ops_for(c.dtype) / 1e12:.0f} T{kind} {c.dtype.upper()} modelled")
            if c.emulated:
                text += (f", which {self.chip} runs as an emulation in {c.passes} {c.dtype.upper()} passes, each "
                         f"charged ({self.chip} lists no {c.operand.upper()} rate; {c.source}); values computed "
                         f"in float32, the emulation's accuracy target (its own rounding is not modelled)")
            if dt in _VALUE_NAMES and dt != "f32":
                text += f"; values rounded to {_VALUE_NAMES[dt]} at each op's output"
            out.append(text)
        out.append(f"NPU vector unit on {self.chip}: computes in float32 (its formats are not published; modelled)")
        d = self.data
        if d.window is not None and d.dram_bytes > d.window[1] - d.window[0]:
            out.append(f"the program's DRAM buffers ({_size(d.dram_bytes)}) exceed {self.chip}'s "
                       f"{_size(d.window[1] - d.window[0])} partition: its time is simulated as if they fit (it "
                       "could not run for values)")
        return out

    def _spans(self, times) -> list[EngineSpan]:
        """Each engine's busy intervals (the same intervals `busy` sums), adjacent ones of one op
        merged: per core the DMA queues, matrix and vector units, and the shared DRAM channel."""
        raw: dict[str, list[tuple[int, int, int]]] = {}
        lists: dict[tuple[int, str], list] = {}  # (core, engine) -> its list in raw
        dram: list[tuple[int, int, int]] = []
        for ins, t in zip(self.data.instrs, times):
            if ins.opcode == isa.BARRIER:
                continue
            key = (ins.core, ins.engine)
            out = lists.get(key)
            if out is None:
                out = lists[key] = raw.setdefault(f"core{key[0]}.{key[1]}", [])
            out.append((t.start, t.end, ins.op))
            if t.dram_cycles:
                if not dram:
                    raw.setdefault("dram", dram)
                dram.append((t.dram_start, t.dram_start + t.dram_cycles, ins.op))
        clock = self.spec.clock_hz
        names = self.data.ops
        spans = []
        for engine in sorted(raw):
            merged: list[list[int]] = []
            last = None
            for a, b, op in sorted(raw[engine]):
                if last is not None and last[2] == op and last[1] == a:
                    last[1] = b
                else:
                    last = [a, b, op]
                    merged.append(last)
            spans.extend(EngineSpan(engine, a / clock, b / clock, names[op][0] if op < len(names) else str(op))
                         for a, b, op in merged)
        return spans

    # ---- text and binary ---------------------------------------------------------------
    def asm(self) -> str:
        d = self.data
        lines = [f"; NPU program for {self.chip} ({self.spec.cores} core(s), {self.spec.array.rows}x"
                 f"{self.spec.array.cols} {self.spec.array.dataflow}, {self.spec.sram_bytes} B scratchpad per core)",
                 f"; {len(d.instrs)} instructions; DRAM buffers"
                 + (f" (partition window [0x{d.window[0]:x}, 0x{d.window[1]:x})):" if d.window else ":")]
        for i, b in enumerate(d.buffers):
            lines.append(f";   buf {i}: {b.name} @0x{b.addr:x} ({b.nbytes} bytes, {b.role})")
        for b in d.inputs:
            lines.append(f";   input {b.name}: buf {b.buf}+{b.off} {b.dtype}{list(b.shape)} strides {list(b.strides)}")
        for b in d.outputs:
            lines.append(f";   output {b.name}: buf {b.buf}+{b.off} {b.dtype}{list(b.shape)} strides "
                         f"{list(b.strides)}")
        for i, (name, op_type) in enumerate(d.ops):
            if i < len(self.kinds) and self.kinds[i] != "const":
                lines.append(f";   op {i}: {op_type} {name}")
        lines.append(isa.disassemble(d.instrs))
        return "\n".join(lines)

    def to_bytes(self) -> bytes:
        return isa.encode_program(self.data.instrs)

    # ---- artifacts: the instruction stream plus the tables the simulator reads ---------------
    def save(self, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        d = self.data
        init = []
        if weights is not None and self.functional:
            for buf, off, data in d.init:
                raw = np.ascontiguousarray(data, np.uint8).tobytes()
                init.append([int(buf), int(off), int(weights.add(raw)), len(raw)])
        meta = {"encoding": ENCODING, "chip": self.chip, "cores": d.cores, "sram_bytes": d.sram_bytes,
                "functional": bool(self.functional and weights is not None),
                "buffers": [[b.name, b.addr, b.nbytes, b.role] for b in d.buffers],
                "inputs": [_binding_json(b) for b in d.inputs], "outputs": [_binding_json(b) for b in d.outputs],
                "ops": [[n, t, k] for (n, t), k in zip(d.ops, self.kinds)], "init": init}
        if d.window is not None:
            meta["window"] = list(d.window)
        return self.to_bytes(), meta

    @classmethod
    def load(cls, device: str, spec: NpuSpec, blob: bytes, meta: Mapping[str, Any], weights: Any,
             functional: bool) -> "NpuProgram":
        if int(meta.get("encoding", 0)) != ENCODING:
            raise ArtifactError(f"NPU program stored in encoding {meta.get('encoding')}, this kcompiler reads "
                                f"{ENCODING}", hint="recompile the model")
        instrs = isa.decode_program(blob)
        try:
            buffers = [Buffer(str(n), int(a), int(b), str(r)) for n, a, b, r in meta["buffers"]]
            inputs = [_binding(x) for x in meta["inputs"]]
            outputs = [_binding(x) for x in meta["outputs"]]
            ops = [(str(n), str(t)) for n, t, _ in meta["ops"]]
            kinds = [str(k) for _, _, k in meta["ops"]]
            cores, sram = int(meta["cores"]), int(meta["sram_bytes"])
            window = meta.get("window")
            window = (int(window[0]), int(window[1])) if window is not None else None
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"NPU program: its table is malformed ({type(exc).__name__}: {exc})",
                                hint="recompile the model") from None
        if cores != spec.cores or sram != spec.sram_bytes:
            raise ArtifactError("NPU program: compiled for another core count or scratchpad size than its chip's "
                                "description says", hint="recompile the model")
        functional = functional and bool(meta.get("functional"))
        init = []
        if functional:
            for buf, off, woff, n in meta.get("init", ()):
                if not 0 <= int(buf) < len(buffers):
                    raise ArtifactError("NPU program: an initial image segment names a buffer the table lacks")
                init.append((int(buf), int(off), weights.map(int(woff), int(n))))
        data = ProgramData(instrs, buffers, inputs, outputs, init, cores, sram, ops, window)
        return cls(device, str(meta.get("chip", "")), spec, data, functional, kinds)


#: bump when the meaning of a stored instruction or table changes
ENCODING = 2


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _binding_json(b: Binding) -> list:
    return [b.name, b.buf, b.off, b.dtype, list(b.shape), list(b.strides)]


def _binding(x) -> Binding:
    name, buf, off, dtype, shape, strides = x
    if dtype not in isa.DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return Binding(str(name), int(buf), int(off), str(dtype), tuple(int(v) for v in shape),
                   tuple(int(v) for v in strides))
