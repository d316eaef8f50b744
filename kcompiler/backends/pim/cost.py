"""What PIM work costs: a kernel's time from its channel streams (timing.py), its MACs and bank
bytes counted from the commands themselves, its energy from those counts; and a single node's
estimate, from lowering it alone in timing mode (no values read)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.pim.claims import OpPlan
from kcompiler.backends.pim.kernels.emitter import Emitter
from kcompiler.backends.pim.kernels.figures import Kernel
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
    em = Emitter(spec, packed=True)
    env = {v.name: Buf(0, 0, opinfo.shape_of(v)) for v in node.inputs
           if v is not None and not opinfo.is_const(v)}
    lower_node(Lowering(spec, em, env, timing_only=True), node, p)
    return Kernel(node.name, node.op_type, em.cmds, em.rows)
