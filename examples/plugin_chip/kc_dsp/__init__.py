"""A vector-only DSP backend for kcompiler, as a third-party package.

It claims elementwise ops, computes them with numpy, and charges each op
ceil(elements / lanes) cycles per pass plus its DRAM traffic at the chip's bandwidth.
Everything else stays on the host. See kcompiler's docs/backends.md.

It also brings a fused op of its own: the DSP's multiply-accumulate instruction computes
``a * b + c`` in one pass, so the backend declares a rewrite pattern (``Backend.patterns``:
Mul then Add -> ``kc_dsp.MulAdd``) that kcompiler's fusion pipeline runs on any target with a
DSP. The rule is made with ``as_function=True``, so the fused node carries the matched Mul and
Add as its model-local function: the host and ONNX Runtime run it by that body.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from importlib import resources

import numpy as np
from onnxscript.rewriter import pattern

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, OpEvent, Program, Timeline, no
from kcompiler.errors import ExecutionError
from kcompiler.targets.schema import field

# op -> (numpy function, vector passes per element); the table is the whole ISA
OPS = {
    "Add": (np.add, 1), "Sub": (np.subtract, 1), "Mul": (np.multiply, 1), "Div": (np.divide, 4),
    "Relu": (lambda x: np.maximum(x, 0), 1), "Neg": (np.negative, 1), "Abs": (np.abs, 1),
    "Exp": (np.exp, 8), "Tanh": (np.tanh, 8), "Sigmoid": (lambda x: 1 / (1 + np.exp(-x)), 10),
    "Sqrt": (np.sqrt, 4),
    # the fused op of the DSP's own pattern (below): one multiply-accumulate pass
    "MulAdd": (lambda a, b, c: a * b + c, 1),
}
#: the domain of the DSP's own ops
DOMAIN = "kc_dsp"
OPCODES = {name: i for i, name in enumerate(sorted(OPS))}


@dataclass(frozen=True)
class DspSpec:
    clock_hz: float = field(min=1e6, max=1e10, unit="Hz")
    lanes: int = field(min=1, max=4096)
    local_bytes: int = field(min=1024, unit="B")
    dram_bandwidth: float = field(min=1e6, unit="B/s")
    energy_per_op_j: float = field(min=0.0, unit="J")
    energy_per_dram_byte_j: float = field(min=0.0, unit="J")

    def headline(self) -> str:
        return f"{self.lanes} FP32 lanes at {self.clock_hz / 1e9:.1f} GHz, {self.dram_bandwidth / 1e9:.1f} GB/s"


class DspProgram(Program):
    def __init__(self, device, nodes, outputs, costs):
        self.device = device
        self.outputs = [v.name for v in outputs]
        self.steps = [(n.op_type, [v.name if v is not None else "" for v in n.inputs],
                       [v.name for v in n.outputs], n.name, c) for n, c in zip(nodes, costs)]
        self.consts = {}
        for n in nodes:
            for v in n.inputs:
                c = opinfo.const_value(v) if v is not None else None
                if c is not None:
                    self.consts[v.name] = np.asarray(c)

    def run(self, inputs):
        env = dict(self.consts)
        env.update(inputs)
        for op, ins, outs, name, _ in self.steps:
            fn, _ = OPS[op]
            try:
                env[outs[0]] = np.asarray(fn(*[env[i] for i in ins])).astype(env[ins[0]].dtype)
            except KeyError as exc:
                raise ExecutionError(f"dsp: node '{name}' ({op}) is missing input {exc}") from None
        return {name: env[name] for name in self.outputs}

    def simulate(self):
        t, ops = 0.0, []
        for op, _, _, name, c in self.steps:
            ops.append(OpEvent(name, op, t, t + c.seconds, cycles=c.cycles, dram_bytes=c.dram_bytes,
                               energy_j=c.energy_j, bound=c.bound, engine="vector"))
            t += c.seconds
        return Timeline(seconds=t, cycles=sum(o.cycles for o in ops), ops=ops, engine_busy_s={"vector": t})

    def asm(self):
        return "\n".join(f"VOP.{op:<8s} {', '.join(outs)} <- {', '.join(ins)}   ; {c.cycles} cycles"
                         for op, ins, outs, _, c in self.steps)

    def to_bytes(self):
        return b"".join(struct.pack("<BI", OPCODES[op], c.cycles) for op, _, _, _, c in self.steps)


def _mul_add(op, a, b, c):
    return op.Add(op.Mul(a, b), c)


def _mul_add_fused(op, a, b, c):
    return op.MulAdd(a, b, c, _domain=DOMAIN)


def _same_shapes(context, a, b, c, **_):
    """Fuse only when a, b and c have one static shape and float32 type (the instruction does
    not broadcast) and the product feeds nothing else."""
    shapes = [v.shape for v in (a, b, c)]
    return all(s is not None and s.is_static() for s in shapes) and len({tuple(s) for s in shapes}) == 1 \
        and all(v.dtype is not None and v.dtype.name == "FLOAT" for v in (a, b, c))


#: Mul then Add -> kc_dsp.MulAdd (onnxscript pattern, check, rewrite); the matched nodes become
#: the fused op's function body
MUL_ADD = pattern.RewriteRule(_mul_add, _mul_add_fused, _same_shapes, as_function=True, name="dsp-muladd")


class DspBackend(Backend):
    kind = "dsp"
    spec_class = DspSpec
    # the DSP's own fusion: kcompiler's `backend-patterns` pass runs it on targets with a DSP
    patterns = (("dsp-muladd", MUL_ADD),)

    def supports(self, node):
        if node.domain not in ("", "ai.onnx", DOMAIN):
            return no(f"domain {node.domain} is not ONNX's")
        if node.domain == DOMAIN and node.op_type != "MulAdd":
            return no(f"{node.op_type} is not an op of this DSP")
        if node.op_type not in OPS:
            return no(f"{node.op_type} is not a vector op of this DSP")
        if any(v is not None and opinfo.shape_of(v) is None for v in (*node.inputs, *node.outputs)):
            return no("shapes must be static")
        if any(v.dtype is not None and v.dtype.name not in ("FLOAT",) for v in node.outputs):
            return no("only float32")
        return YES

    def estimate(self, node):
        s: DspSpec = self.spec
        n = opinfo.numel(node.outputs[0])
        passes = OPS.get(node.op_type, (None, 1))[1]
        cycles = math.ceil(n / s.lanes) * passes
        nbytes = opinfo.bytes_moved(node)
        t_compute, t_mem = cycles / s.clock_hz, nbytes / s.dram_bandwidth
        return Cost(seconds=max(t_compute, t_mem), cycles=int(max(t_compute, t_mem) * s.clock_hz),
                    dram_bytes=nbytes, energy_j=n * passes * s.energy_per_op_j + nbytes * s.energy_per_dram_byte_j,
                    bound="compute" if t_compute >= t_mem else "memory")

    def lower(self, subgraph, options=None):
        return DspProgram(self.name, subgraph.nodes, subgraph.outputs, [self.estimate(n) for n in subgraph.nodes])

    @classmethod
    def target_files(cls):
        return [str(resources.files("kc_dsp") / "dsp.toml")]
