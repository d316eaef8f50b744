"""What PIM work costs: a kernel's time from its channel streams (timing.py), its MACs and bank
bytes counted from the commands themselves, its energy from those counts; and a single node's
estimate, from lowering it alone in timing mode (no values read)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.pim.claims import OpPlan
from kcompiler.backends.pim.isa import Command
from kcompiler.backends.pim.kernels.emitter import Emitter, Packed
from kcompiler.backends.pim.kernels.figures import Kernel
from kcompiler.backends.pim.kernels.matvec import matvec_layout, partial_slots
from kcompiler.backends.pim.kvcache import is_resident
from kcompiler.backends.pim.lowering import Buf, Lowering
from kcompiler.backends.pim.ops import lower_node
from kcompiler.backends.pim.spec import PimSpec


def kernel_cost(s: PimSpec, k: Kernel) -> Cost:
    """Time from the channel streams (timing.py); MACs, bank bytes and energy counted from the
    commands themselves (Kernel.counts), not from the node's formula."""
    seconds, acts, cols, io = k.time(s)
    macs, bank_bytes = k.counts(s)
    e = s.energy
    energy = (acts * s.banks_per_channel * e.act_j + cols * s.banks_per_channel * e.column_j
              + macs * e.mac_j + io * e.io_byte_j)
    return Cost(seconds=seconds, cycles=int(round(seconds * s.clock_hz)), macs=macs,
                dram_bytes=bank_bytes, sram_bytes=io, energy_j=energy, bound="memory")


def estimate_key(node: ir.Node, p: OpPlan) -> tuple:
    """What a node's estimate depends on: nodes with equal keys cost the same."""
    resident = p.kind == "matvec" and not p.const_weight and is_resident(node.inputs[1])
    return (node.op_type, p.kind, p.G, p.M, p.N, p.K, p.numel, p.streamed, resident,
            tuple(opinfo.shape_of(v) if v is not None else None for v in node.inputs))


def lone_kernel(spec: PimSpec, node: ir.Node, p: OpPlan) -> Kernel:
    """The node's kernel lowered alone in timing mode, its blocks packed, its inputs at address 0."""
    return _lone(spec, node, p)[0]


def _lone(spec: PimSpec, node: ir.Node, p: OpPlan) -> tuple[Kernel, Emitter]:
    em = Emitter(spec, packed=True)
    env = {v.name: Buf(0, 0, opinfo.shape_of(v)) for v in node.inputs
           if v is not None and not opinfo.is_const(v)}
    lower_node(Lowering(spec, em, env, timing_only=True), node, p)
    return Kernel(node.name, node.op_type, em.cmds, em.rows), em


def lone_cost(spec: PimSpec, node: ir.Node, p: OpPlan) -> Cost:
    """A single node's estimate (placement): its kernel's cost plus the conversions of its values
    between float32 and the device dtype at the boundary (conversions), as the program charges them."""
    k, em = _lone(spec, node, p)
    c = kernel_cost(spec, k)
    for by in conversions(spec, em.cmds, em.descs).values():
        for label, n in by.items():
            x = conversion_cost(spec, label, n)
            c = Cost(c.seconds + x.seconds, c.cycles + x.cycles, c.macs, c.dram_bytes, c.sram_bytes + x.sram_bytes,
                     c.energy_j, c.bound)
    return c

#: staging dtype codes (sim.NP_DTYPES) of the float formats, as the reports name them
_FLOAT_NAMES = {0: "fp32", 1: "bf16", 2: "fp16"}


def conversions(spec: PimSpec, commands, descs) -> dict[int, dict[str, int]]:
    """Per step, the elements converted between float formats at the device's boundary, by direction
    ("fp32->bf16": values arriving from the NPU or host, in float32, staged into the device dtype;
    "fp16->fp32": FP16 partial sums read back): the host copies (HCOPY) and partial-sum additions
    (HADD, or a packed "partials" block) whose source and destination dtypes differ. `descs`: the
    program's descriptor table (rows of 4 dims, source and destination strides)."""
    out: dict[int, dict[str, int]] = {}
    for c in commands:
        if isinstance(c, Packed):
            if c.kind == "partials" and c.args[4] in _FLOAT_NAMES and c.args[4] != 0:
                G, M, N, K, acc = c.args
                n = sum(n1 - n0 for _s, _g, _m, n0, n1 in partial_slots(spec, matvec_layout(spec, G, N, K), M, 0))
                _tally(out, c.step, acc, 0, n)
            continue
        if not isinstance(c, Command) or c.op not in ("HCOPY", "HADD"):
            continue
        src, dst = (c.dtype2, c.dtype if c.op == "HCOPY" else 0)
        if src == dst or src not in _FLOAT_NAMES or dst not in _FLOAT_NAMES or c.desc >= len(descs):
            continue
        d = descs[c.desc]
        _tally(out, c.step, src, dst, int(d[0]) * int(d[1]) * int(d[2]) * int(d[3]))
    return out


def _tally(out: dict, step: int, src: int, dst: int, n: int) -> None:
    key = f"{_FLOAT_NAMES[src]}->{_FLOAT_NAMES[dst]}"
    by = out.setdefault(step, {})
    by[key] = by.get(key, 0) + n


def conversion_cost(s: PimSpec, label: str, elements: int) -> Cost:
    """A boundary conversion: the host reads each element in one format and writes it in the other
    while streaming it through the staging area, at the device's external bandwidth (an assumption:
    AiM's and HBM-PIM's papers do not say who converts, or how fast). Its energy is not modelled."""
    a, b = label.split("->")
    nbytes = elements * (_BYTES[a] + _BYTES[b])
    seconds = nbytes / s.external_bandwidth
    return Cost(seconds=seconds, cycles=int(round(seconds * s.clock_hz)), sram_bytes=nbytes, bound="memory")


_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def device_dtype(s: PimSpec) -> str:
    """The dtype the device's multipliers compute at, as the reports name it ("bf16", "fp16")."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(s.dtype, s.dtype)
