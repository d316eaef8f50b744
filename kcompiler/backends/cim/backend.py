"""The CIM backend: claims GEMM-like nodes with constant weights (MatMul, Gemm, Conv and their
fused forms with an epilogue the digital periphery runs), estimates them from a lone timing-only
program, and lowers placed subgraphs to crossbar programs. Weights are programmed once and stay
(weight-stationary); when a model's weights need more crossbars than the chip has, every program
of the device is marked to reprogram its crossbars each inference (PROG every=1), which time and
energy then charge."""

from __future__ import annotations

import heapq
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, Program, Subgraph, Support, no
from kcompiler.backends.cim import artifact, isa, mapping
from kcompiler.backends.cim.conditions import OPTIONS, Conditions
from kcompiler.backends.cim.lowering import Lowering, broadcast_strides, gemm_dims, parse_step
from kcompiler.backends.cim.program import CimProgram
from kcompiler.backends.cim.sim import Binding, Code, Images
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import KCError, LoweringError
from kcompiler.fused.epilogue import FUSED, base_of, epilogue_of, split_inputs


def _f32(v: ir.Value | None) -> bool:
    return v is not None and v.dtype == ir.DataType.FLOAT


#: the replication plan's entry that says the graph's weights exceed the chip's crossbars
OVERFLOW = -1


class CimBackend(Backend):
    kind = "cim"
    spec_class = CimSpec
    fusions = {"epilogue": tuple(FUSED)}
    #: how the programmed chip is read (--cim-time, --cim-noise, --cim-seed, --cim-compensation), not
    #: what is programmed: a loaded artifact takes them too (CimProgram.configure)
    options = OPTIONS

    def __init__(self, device, system):
        super().__init__(device, system)
        self._cache: dict[tuple, Cost] = {}
        self._images = 0
        self._programs: list[CimProgram] = []
        self._plans: dict[tuple[int, int], dict[int, tuple[ir.Node, int]]] = {}

    def check_options(self, options: Mapping[str, Any]) -> None:
        Conditions.from_options(options)

    # ---- what the chip claims ----------------------------------------------------------
    def supports(self, node: ir.Node) -> Support:
        base = base_of(node)
        if base is None:
            return no(f"{node.op_type} is not a matrix product: crossbars only multiply by programmed weights")
        ins, extra = split_inputs(node)
        if len(ins) < 2 or not opinfo.is_const(ins[1]):
            return no("its weights are not constant: crossbars hold programmed weights, so a product of two "
                      "activations runs on a digital device")
        values = [v for v in ins + extra if v is not None] + list(node.outputs)
        if not all(_f32(v) for v in values):
            return no("the CIM chip takes float32 tensors (quantised to its DAC and cell bits inside)")
        shapes = [opinfo.shape_of(v) for v in values]
        if any(s is None for s in shapes):
            return no("no static shape")
        ws, xs = shapes[1], shapes[0]
        if base == "MatMul" and (len(ws) not in (1, 2) or len(xs) < 1):
            return no(f"a MatMul with a {len(ws)}-D weight is not one matrix")
        if base == "Gemm" and len(xs) != 2:
            return no("Gemm needs a 2-D input")
        if base == "Conv":
            group = node.attributes.get("group")
            if len(ws) not in (3, 4):
                return no("only 1-D and 2-D convolutions unroll onto crossbars")
            if group is not None and group.value != 1:
                return no("grouped and depthwise convolutions use one column per channel group: they run on "
                          "a digital device")
        out = tuple(shapes[-1])
        for step in epilogue_of(node):
            try:
                fn, _, _ = parse_step(step)
            except (KCError, ValueError):
                return no(f"epilogue step '{step}' has no CIM digital function")
            if fn in isa.BINARY:
                if not extra or broadcast_strides(out, tuple(opinfo.shape_of(extra.pop(0)))) is None:
                    return no("an epilogue operand does not broadcast to the output in four dims")
        return YES

    def check_fusion(self, pattern: str, node: ir.Node, **facts: Any) -> Support:
        """epilogue: the digital periphery applies every step of kcompiler's fused GEMMs; it takes
        a node it could run unfused."""
        return self.supports(node)

    # ---- weight replication ---------------------------------------------------------------
    def _plan_of(self, node: ir.Node) -> dict[int, tuple[ir.Node, int]]:
        g = node.graph
        if g is None:
            return {}
        key = (id(g), len(g))
        if key not in self._plans:
            self._plans = {key: self.replication_plan(g)}
        return self._plans[key]

    def copies(self, node: ir.Node) -> int:
        """How many copies of `node`'s weights the chip holds (replication_plan of its graph)."""
        return self._plan_of(node).get(id(node), (node, 1))[1]

    def overflows(self, node: ir.Node) -> bool:
        """Whether the weights of every node of `node`'s graph the chip can run exceed its crossbars:
        then estimates charge reprogramming, as a program would (conservative when placement puts some
        of those nodes elsewhere)."""
        return self._plan_of(node).get(OVERFLOW, (None, 0))[1] > 0

    def replication_plan(self, graph: ir.Graph) -> dict[int, tuple[ir.Node, int]]:
        """Spare crossbars go to copies of the weights of the layers that stream the most vectors.

        Every node of the graph the chip can run is counted as if it ran here (placement has not
        chosen yet, and estimates and lowering must agree), so the copies never take the crossbars
        another node needs: with B crossbars of base weights and P on the chip, P - B are handed
        out, one copy of one node at a time, to the node whose time per crossbar falls most
        (vectors x (1/r - 1/(r+1)) / tiles). A model that does not fit gets no copies."""
        nodes = []
        for n in graph:
            if self.supports(n):
                k, n_out, vecs = gemm_dims(n)
                nodes.append((n, mapping.crossbars_needed(self.spec, k, n_out), vecs))
        spare = self.spec.crossbars - sum(t for _, t, _ in nodes)
        copies = {id(n): 1 for n, _, _ in nodes}
        heap = [(-vecs / 2 / tiles, i) for i, (n, tiles, vecs) in enumerate(nodes) if vecs > 1 and tiles <= spare]
        heapq.heapify(heap)
        while heap and spare > 0:
            _, i = heapq.heappop(heap)
            n, tiles, vecs = nodes[i]
            if tiles > spare:
                continue
            r = copies[id(n)] = copies[id(n)] + 1
            spare -= tiles
            if r < vecs:
                heapq.heappush(heap, (-vecs * (1 / r - 1 / (r + 1)) / tiles, i))
        plan = {id(n): (n, copies[id(n)]) for n, _, _ in nodes}
        plan[OVERFLOW] = (None, int(spare < 0))
        return plan

    # ---- cost ---------------------------------------------------------------------------
    def estimate(self, node: ir.Node) -> Cost:
        if not self.supports(node):
            return Cost(seconds=float("inf"), bound="overhead")
        copies = self.copies(node), self.overflows(node)
        key = (node.op_type, node.domain, tuple(tuple(opinfo.shape_of(v) or ()) for v in node.inputs if v),
               tuple((k, repr(a.value)) for k, a in sorted(node.attributes.items())), copies)
        if key not in self._cache:
            prog = self._lower(list(node.inputs), [node], list(node.outputs), timing_only=True, first_image=0)
            if self.overflows(node):
                prog.code.instrs[prog.code.instrs[:, 0] == isa.PROG, 4] = 1
            tl = prog.simulate()
            parts = tl.ops
            self._cache[key] = Cost(seconds=tl.seconds, cycles=tl.cycles, macs=sum(e.macs for e in parts),
                                    sram_bytes=sum(e.sram_bytes for e in parts),
                                    energy_j=sum(e.energy_j for e in parts),
                                    bound=parts[0].bound if parts else "compute")
        c = self._cache[key]
        return Cost(c.seconds, c.cycles, c.macs, c.dram_bytes, c.sram_bytes, c.energy_j, c.bound)

    # ---- lowering -----------------------------------------------------------------------
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        timing_only = (options or {}).get("mode") == "timing"
        prog = self._lower(subgraph.inputs, subgraph.nodes, subgraph.outputs, timing_only, self._images,
                           Conditions.from_options(options))
        self._images += len(prog.code.image_rows)
        self._programs.append(prog)
        if self._images > self.spec.crossbars:  # the device's weights do not fit: reprogram every inference
            for p in self._programs:
                p.code.instrs[p.code.instrs[:, 0] == isa.PROG, 4] = 1
        return prog

    # ---- artifacts (artifact.py, kcompiler/artifact) -------------------------------------
    ARTIFACT_ENCODING = artifact.ENCODING

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        return artifact.save_program(self.name, self.device.chip.name, program, subgraph, weights)

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        prog = artifact.load_program(self.name, self.spec, subgraph, blob, meta, weights, options)
        self._images += len(prog.code.image_rows)
        self._programs.append(prog)
        return prog

    def _lower(self, inputs, nodes, outputs, timing_only: bool, first_image: int,
               conditions: Conditions | None = None) -> CimProgram:
        s: CimSpec = self.spec
        low = Lowering(s, first_image, timing_only, self.copies)
        bindings = []
        for v in inputs:
            if v is None or v.name in low.env or opinfo.is_const(v):
                continue
            sh = opinfo.shape_of(v)
            if sh is None:
                raise LoweringError(f"input '{v.name}' of the CIM subgraph on {self.name} has no static shape")
            low.env[v.name] = b = low.alloc(sh)
            bindings.append(Binding(v.name, b.addr, tuple(sh)))
        for i, node in enumerate(nodes):
            low.em.step = i
            if node.op_type in ("Constant", "ConstantOfShape") and node.domain in ("", "ai.onnx") and all(
                    opinfo.is_const(v) for v in node.outputs):
                continue  # placed with its consumer: its value is constant data in the memory image
            ok = self.supports(node)
            if not ok:
                raise LoweringError(f"node '{node.name}' ({node.op_type}) was placed on {self.name}, which cannot "
                                    f"run it: {ok.reason}")
            low.node(node)
        outs = []
        for v in outputs:
            b = low.env.get(v.name)
            if b is None:
                raise LoweringError(f"CIM subgraph output '{v.name}' is computed by no node of it")
            outs.append(Binding(v.name, b.addr, tuple(opinfo.shape_of(v) or b.shape)))
        code = Code(low.em.code(), None if timing_only else Images.stack(low.images, s),
                    _ints(low.image_rows), _ints(low.image_outs), max(low.mem, 1), low.consts, bindings, outs,
                    [(n.name, n.op_type) for n in nodes], first_image)
        return CimProgram(self.name, s, code, conditions or Conditions())


def _ints(xs) -> np.ndarray:
    return np.asarray(xs, np.int32).reshape(-1)
