"""A PIM device's compiled program: its commands (emitted lazily from a timing-mode program's packed
blocks), bank image and staging I/O table; run by the simulator (sim/), timed per node."""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
import onnx_ir as ir

from kcompiler.backends.base import Cost, OpEvent, Program, Subgraph, Timeline
from kcompiler.backends.pim import cost, sim
from kcompiler.backends.pim.isa import Command, encode_all
from kcompiler.backends.pim.kernels.emitter import unpack
from kcompiler.backends.pim.kernels.figures import Kernel
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError


class ProgramBackend(Protocol):
    """What a program uses of the backend that made it (kcompiler.backends.pim.backend.PimBackend): its
    device's spec, and the cost of a node's kernel (to time the program)."""

    spec: PimSpec

    def kernel_cost(self, k: Kernel) -> Cost: ...


class PimProgram(Program):
    """A PIM device's program: the command list, the bank image and the staging I/O table (sim.Code).

    ``commands`` and ``image`` are the live objects the simulator reads on every ``run`` (mutate them
    in place, then call ``invalidate`` to drop the fast path's cached grouping)."""

    def __init__(self, backend: ProgramBackend, sub: Subgraph, code: sim.Code, rows: list[int],
                 packed: list | None = None):
        self.device = sub.device
        self.backend = backend
        self.spec: PimSpec = backend.spec
        self._code = code
        #: a timing-mode program's commands with its products' blocks packed (kernels.Packed); emitted
        #: into `code.commands` the first time they are read
        self._packed = packed
        self.nodes = list(sub.nodes)
        self.rows = rows
        self.output_names = [v.name for v in sub.outputs]
        self.fast = True
        self.last_counts: dict = {}

    @property
    def code(self) -> sim.Code:
        if self._packed is not None:
            self._code.commands = unpack(self._packed, self.spec, self._code.descs.tolist())
            self._packed = None
        return self._code

    @property
    def timing_only(self) -> bool:
        return self._code.image is None

    @property
    def commands(self) -> list[Command]:
        return self.code.commands

    @property
    def image(self) -> np.ndarray | None:
        return self._code.image

    def invalidate(self) -> None:
        self.code.invalidate()

    @property
    def steps(self) -> list[tuple[ir.Node, Kernel]]:
        """Each node with the commands it owns (a fresh view of the command list)."""
        by: list[list[Command]] = [[] for _ in self.nodes]
        for c in self._packed if self._packed is not None else self.code.commands:
            if c.step < len(by):
                by[c.step].append(c)
        return [(n, Kernel(n.name, n.op_type, cs, r)) for n, cs, r in zip(self.nodes, by, self.rows)]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.timing_only:
            raise ExecutionError("this PIM program was compiled in timing mode and holds no bank image",
                                 hint="compile with mode='functional'")
        outs, self.last_counts = sim.execute(self.spec, self.code, dict(inputs), fast=self.fast)
        return {n: outs[n] for n in self.output_names}

    def conversions(self) -> dict[int, dict[str, int]]:
        """Per step, the elements converted between float32 and the device dtype at its boundary
        (cost.conversions: values arriving in float32 staged into bf16/fp16, partial sums read back)."""
        cmds = self._packed if self._packed is not None else self.code.commands
        return cost.conversions(self.spec, cmds, self._code.descs)

    def simulate(self) -> Timeline:
        """Each node's kernel in turn, each preceded by its boundary conversions as an explicit op
        ("DtypeConvert", engine "convert", dtype "fp32->bf16"), charged (cost.conversion_cost)."""
        t, ops, busy, conv_busy = 0.0, [], 0.0, 0.0
        dtype = cost.device_dtype(self.spec)
        conv = self.conversions()
        for i, (node, k) in enumerate(self.steps):
            for label, n in conv.get(i, {}).items():
                x = cost.conversion_cost(self.spec, label, n)
                ops.append(OpEvent(f"{node.name}/convert {label}", "DtypeConvert", t, t + x.seconds, cycles=x.cycles,
                                   sram_bytes=x.sram_bytes, bound=x.bound, engine="convert", dtype=label))
                t += x.seconds
                conv_busy += x.seconds
            c = self.backend.kernel_cost(k)
            ops.append(OpEvent(node.name, node.op_type, t, t + c.seconds, cycles=c.cycles, macs=c.macs,
                               dram_bytes=c.dram_bytes, sram_bytes=c.sram_bytes, energy_j=c.energy_j,
                               bound=c.bound, engine="banks", dtype=dtype if c.macs or c.dram_bytes else ""))
            t += c.seconds
            busy += c.seconds
        return Timeline(seconds=t, cycles=int(round(t * self.spec.clock_hz)), ops=ops,
                        engine_busy_s={"banks": busy, **({"convert": conv_busy} if conv_busy else {})})

    def asm(self) -> str:
        lines = []
        step = -1
        for c in self.code.commands:
            if c.step != step:
                step = c.step
                n = self.nodes[step] if step < len(self.nodes) else None
                lines.append(f"; {n.name} ({n.op_type})" if n is not None else f"; step {step}")
            lines.append(c.text())
        return "\n".join(lines)

    def to_bytes(self) -> bytes:
        return encode_all(self.code.commands)
