"""The PIM backend: claims memory-bound products and element-wise ops (the op table, ops.py),
estimates their cost (cost.py), lowers a placed subgraph to a command stream (lowering.py and the
op families), and saves and loads programs in artifacts (artifact.py). The program is computed bank
by bank by sim.py and timed command by command by timing.py."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, Program, Subgraph, Support
from kcompiler.backends.pim import artifact, cost, ops, sim
from kcompiler.backends.pim.claims import OpPlan
from kcompiler.backends.pim.kernels.emitter import Emitter, Packed
from kcompiler.backends.pim.kernels.figures import Kernel
from kcompiler.backends.pim.lowering import Buf, Lowering, dtype_code
from kcompiler.backends.pim.program import PimProgram
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import LoweringError

__all__ = ["PimBackend", "PimProgram"]


class PimBackend(Backend):
    kind = "pim"
    spec_class = PimSpec
    check_tolerance = (2e-2, 2e-2)  # bf16/fp16 multipliers: sums drift to ~2% of an output's scale (kc run --check)
    #: timing mode keeps a product's command blocks packed (kernels.Packed): its program is timed from
    #: one emitted representative per block shape, and emitted in full only when its commands are read
    #: (saving, assembly); False emits every command while lowering (tests compare the two)
    pack_timing = True

    def __init__(self, device, system):
        super().__init__(device, system)
        self._cache: dict[tuple, Cost] = {}

    # ---- what the device claims (ops.py) --------------------------------------------------
    def plan(self, node: ir.Node) -> OpPlan | Support:
        """What `node` is on this device, or why it does not run it."""
        return ops.plan(self.spec, node)

    def supports(self, node: ir.Node) -> Support:
        p = self.plan(node)
        return YES if isinstance(p, OpPlan) else p

    def compute_dtype(self, node: ir.Node) -> str | None:
        """The banks' dtype (aim.toml / hbm-pim.toml `dtype`) for what the units compute: element-wise operands
        and activation inputs are stored in it; a product multiplies in it and accumulates at
        `accumulate_dtype` (placement does not judge products: kcompiler.passes.precision). None for views
        and the KV-cache append, which move data without arithmetic."""
        p = self.plan(node)
        return self.spec.dtype if isinstance(p, OpPlan) and p.kind in ("elementwise", "matvec") else None

    # ---- cost (cost.py) -------------------------------------------------------------------
    def kernel_cost(self, k: Kernel) -> Cost:
        """A kernel's cost from its commands (cost.kernel_cost)."""
        return cost.kernel_cost(self.spec, k)

    def estimate(self, node: ir.Node) -> Cost:
        p = self.plan(node)
        if not isinstance(p, OpPlan):
            return Cost(seconds=float("inf"), bound="overhead")
        key = cost.estimate_key(node, p)
        if key not in self._cache:
            self._cache[key] = cost.lone_cost(self.spec, node, p)
        c = self._cache[key]
        return Cost(c.seconds, c.cycles, c.macs, c.dram_bytes, c.sram_bytes, c.energy_j, c.bound)

    # ---- lowering ------------------------------------------------------------------------
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        timing_only = (options or {}).get("mode") == "timing"
        s: PimSpec = self.spec
        em = Emitter(s, packed=timing_only and self.pack_timing)
        env: dict[str, Buf] = {}
        inputs = []
        for v in subgraph.inputs:
            sh = opinfo.shape_of(v)
            if sh is None:
                raise LoweringError(f"input '{v.name}' of the PIM subgraph on {self.name} has no static shape")
            # a 16-bit float input (a bf16 model's KV cache) is staged in its own format: moving it into the
            # banks is then a copy, not a float32 -> bf16 conversion of 4-byte elements
            code = dtype_code(v.dtype)
            code = code if code in (1, 2) else 0
            b = Buf(em.alloc(sim.NP_DTYPES[code].itemsize * math.prod(sh)), code, sh)
            env[v.name] = b
            inputs.append(sim.Binding(v.name, b.addr, code, tuple(sh)))
        low = Lowering(s, em, env, timing_only)
        rows = []
        for i, node in enumerate(subgraph.nodes):
            em.step = i
            r0 = em.rows
            if node.op_type in ("Constant", "ConstantOfShape") and node.domain in ("", "ai.onnx") and all(
                    opinfo.const_value(v) is not None for v in node.outputs):
                # placed with its consumer: known at compile time, its value is constant data in staging
                for v in node.outputs:
                    env[v.name] = low.const(v)
            else:
                p = self.plan(node)
                if not isinstance(p, OpPlan):
                    raise LoweringError(f"node '{node.name}' ({node.op_type}) was placed on {self.name}, "
                                        f"which cannot run it: {p.reason}")
                ops.lower_node(low, node, p)
            rows.append(em.rows - r0)
        if em.rows > s.rows_per_bank:
            raise LoweringError(f"the operands placed on {self.name} need {em.rows} DRAM rows per bank, but it has "
                                f"{s.rows_per_bank}", hint="use a target with more PIM chips")
        outputs = []
        em.step = max(len(subgraph.nodes) - 1, 0)
        for v in subgraph.outputs:
            b = env.get(v.name)
            if b is None:
                raise LoweringError(f"PIM subgraph output '{v.name}' is computed by no node of it")
            code = dtype_code(v.dtype)
            if code < 0:
                raise LoweringError(f"PIM subgraph output '{v.name}' has dtype {v.dtype}, which the staging area "
                                    "does not hold")
            if code != b.dtype:  # the graph's dtype: converted on the host on the way out
                b = low.copy(b, code)
            outputs.append(sim.Binding(v.name, b.addr, code, tuple(opinfo.shape_of(v) or b.shape)))
        packed = em.cmds if any(isinstance(c, Packed) for c in em.cmds) else None
        code = sim.Code(em.cmds if packed is None else [], np.array(em.descs, np.int64).reshape(-1, 12), None, None,
                        em.rows, em.staging, [(a, np.frombuffer(r, np.uint8)) for a, r in em.consts], inputs,
                        outputs, [sim.Step(n.name, n.op_type) for n in subgraph.nodes], low.fns,
                        np.array(em.regions, np.int64).reshape(-1, 2))
        if not timing_only:
            code.image, code.image_valid = low.image()
        return PimProgram(self, subgraph, code, rows, packed)

    # ---- artifacts (artifact.py, kcompiler/artifact) -------------------------------------
    #: bump artifact.ENCODING when the meaning of a stored command, table or image changes
    ARTIFACT_ENCODING = artifact.ENCODING

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        return artifact.save_program(self, program, subgraph, weights)

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        return artifact.load_program(self, subgraph, blob, meta, weights, options)
