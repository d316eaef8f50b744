"""NpuBackend: which ops the NPU claims (a table), their cost, and lowering to a Program."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import (YES, Backend, Cost, EngineSpan, OpEvent, Program, Subgraph, Support,
                                     Timeline, no)
from kcompiler.backends.npu import isa, kernels as K
from kcompiler.backends.npu.blas import blas_threads
from kcompiler.backends.npu.chain import FusedElementwiseKernel
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.backends.npu.timing import dma_bytes, sram_bytes, simulate
from kcompiler.errors import ArtifactError, ExecutionError

FLOAT = ir.DataType.FLOAT


# ---- the table of ops the NPU claims, each with its check -----------------------------------
def _static_float(node: ir.Node, data_inputs: int | None = None) -> Support:
    for v in node.outputs:
        if opinfo.shape_of(v) is None and v.uses():
            return no(f"output '{v.name}' has no static shape")
    for v in node.outputs[:1]:
        if v.dtype not in K.FLOATS:
            return no(f"dtype {v.dtype} (the NPU claims float32, float16 and bfloat16 ops)")
    ins = node.inputs if data_inputs is None else node.inputs[:data_inputs]
    for v in ins:
        if v is None:
            continue
        if opinfo.shape_of(v) is None:
            return no(f"input '{v.name}' has no static shape")
        if v.dtype not in K.FLOATS:
            return no(f"input '{v.name}' has dtype {v.dtype}")
    return YES


def _consts(node: ir.Node, first: int) -> Support:
    for v in node.inputs[first:]:
        if v is not None and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    return YES


def _only_first_output(node: ir.Node) -> Support:
    for v in node.outputs[1:]:
        if v is not None and v.name and v.uses():
            return no(f"its extra output '{v.name}' is used")
    return YES


def _all(*checks: Callable[[ir.Node], Support]) -> Callable[[ir.Node], Support]:
    def check(node):
        for c in checks:
            r = c(node)
            if not r:
                return r
        return YES
    return check


def _rank(i: int, ranks: tuple[int, ...]):
    def check(node):
        s = opinfo.shape_of(node.inputs[i])
        return YES if s is not None and len(s) in ranks else no(f"input {i} must have rank {ranks}")
    return check


def _min_rank(i: int, r: int):
    def check(node):
        s = opinfo.shape_of(node.inputs[i])
        return YES if s is not None and len(s) >= r else no(f"input {i} must have rank >= {r}")
    return check


def _attr_in(name: str, allowed, default):
    def check(node):
        v = K.a_str(node, name, default) if isinstance(default, str) else K.a_int(node, name, default)
        return YES if v in allowed else no(f"attribute {name}={v!r} is not supported (only {list(allowed)})")
    return check


def _const_producer(node):
    return YES if all(opinfo.is_const(v) for v in node.outputs) else no("not a constant")


def _gather_data_const(node):
    """A DMA gather: rows of a constant table (embeddings), or constant rows of a runtime tensor
    (a pooler's first token); runtime indices into runtime data stay on the host."""
    if opinfo.is_const(node.inputs[0]) or opinfo.is_const(node.inputs[1]):
        return YES
    return no("Gather runs on the NPU only on constant data or with constant indices")


def _view_check(node):
    s = opinfo.shape_of(node.outputs[0])
    if s is None:
        return no("output has no static shape")
    if node.inputs[0] is None or node.inputs[0].dtype not in K.FLOATS:
        return no("only float views")
    return YES


_elementwise = _all(lambda n: _static_float(n))
_x_only = lambda n: _static_float(n, 1)  # noqa: E731

#: op -> (kernel class, check)
OPS: dict[str, tuple[type, Callable[[ir.Node], Support]]] = {
    "Conv": (K.GemmKernel, _all(_x_only, _rank(0, (4,)), _rank(1, (4,)),
                               lambda n: YES if len(n.inputs) < 3 or n.inputs[2] is None or
                               n.inputs[2].dtype in K.FLOATS else no("bias must be a float"))),
    "MatMul": (K.GemmKernel, _all(_elementwise, _min_rank(0, 2), _min_rank(1, 2))),
    "Gemm": (K.GemmKernel, _elementwise),
    **{op: (K.ElementwiseKernel, _elementwise) for op in K.ELEMENTWISE},
    "Clip": (K.ClipKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "BatchNormalization": (K.BatchNormKernel, _all(_x_only, lambda n: _consts(n, 1), _only_first_output,
                                                   _attr_in("training_mode", (0,), 0), _min_rank(0, 2))),
    "LayerNormalization": (K.LayerNormKernel, _all(_elementwise, _only_first_output)),
    "RMSNormalization": (K.RmsNormKernel, _elementwise),
    "Attention": (K.AttentionKernel, _all(_elementwise, _only_first_output, lambda n: _attention_check(n))),
    "Softmax": (K.SoftmaxKernel, _elementwise),
    "ReduceMean": (K.ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "ReduceSum": (K.ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "ReduceMax": (K.ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "MaxPool": (K.PoolKernel, _all(_x_only, _only_first_output, _rank(0, (3, 4, 5)))),
    "AveragePool": (K.PoolKernel, _all(_x_only, _rank(0, (3, 4, 5)))),
    "GlobalAveragePool": (K.PoolKernel, _all(_x_only, _min_rank(0, 3))),
    "GlobalMaxPool": (K.PoolKernel, _all(_x_only, _min_rank(0, 3))),
    "LRN": (K.LrnKernel, _all(_x_only, _rank(0, (4,)))),
    "Concat": (K.CopyKernel, _elementwise),
    "Transpose": (K.CopyKernel, _x_only),
    "Slice": (K.CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Split": (K.CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Pad": (K.CopyKernel, _all(_x_only, lambda n: _consts(n, 1),
                               _attr_in("mode", ("constant", "reflect", "edge"), "constant"))),
    "Gather": (K.CopyKernel, _all(lambda n: _static_float(n, 0), _gather_data_const)),
    "Expand": (K.CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Reshape": (K.ViewKernel, _view_check),
    "Flatten": (K.ViewKernel, _view_check),
    "Squeeze": (K.ViewKernel, _view_check),
    "Unsqueeze": (K.ViewKernel, _view_check),
    "Identity": (K.ViewKernel, _view_check),
    "Dropout": (K.ViewKernel, _all(_view_check, _only_first_output)),
    "Constant": (K.ConstKernel, _const_producer),
    "ConstantOfShape": (K.ConstKernel, _const_producer),
}


def _attention_check(node: ir.Node) -> Support:
    if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
        return no("Attention with a past KV cache input runs on the host")
    if K.a_int(node, "is_causal", 0) or K.a_float(node, "softcap", 0.0):
        return no("is_causal and softcap are not lowered (the fusion passes an explicit mask)")
    ranks = {len(opinfo.shape_of(v)) for v in node.inputs[:3]}
    if ranks not in ({3}, {4}):
        return no("Q, K and V must all be 3-D or all 4-D")
    k = K.AttentionKernel(node, _spec_of_node(node))
    if any(k.tiling(hi - lo) is None for lo, hi in k.per_core):
        return no("no attention tiling fits the scratchpad")
    return YES


def _gemm_epilogue_check(node: ir.Node) -> Support:
    base = node.op_type.removeprefix("Fused")
    bad = [s for s in K.a_strs(node, "epilogue") if s.split(":")[0] not in (*K.EPILOGUE, "add", "mul")]
    if bad:
        return no(f"epilogue steps {bad} are not lowered")
    return OPS[base][1](node)


#: ops of the kcompiler domain (passes/fusion): a fused GEMM is its base op's kernel plus an epilogue
KC_OPS: dict[str, tuple[type, Callable[[ir.Node], Support]]] = {
    f"Fused{b}": (K.GemmKernel, _gemm_epilogue_check) for b in ("Conv", "MatMul", "Gemm")}


def _chain_check(node: ir.Node) -> Support:
    from kcompiler.backends.npu.chain import parse_step

    for s in K.a_strs(node, "steps"):
        op = parse_step(s)[0]
        if op not in K.ELEMENTWISE and op != "Clip":
            return no(f"elementwise step {op} is not lowered")
    r = _elementwise(node)
    if not r:
        return r
    k = FusedElementwiseKernel(node, _spec_of_node(node))
    row = max(opinfo.numel(k.out) // max(k.extent, 1), k.in_inner())
    if 2 * row * k.spec.elem_bytes * (len(k.streams) + 1) > k.spec.sram_bytes:
        return no(f"one row of its {len(k.streams)} inputs does not fit the scratchpad double-buffered")
    return YES


KC_OPS["FusedElementwise"] = (FusedElementwiseKernel, _chain_check)

_SPEC_FOR_CHECKS: list = []


def _spec_of_node(node):
    """The spec the table checks run against (set by NpuBackend.supports)."""
    return _SPEC_FOR_CHECKS[-1]


class NpuProgram(Program):
    """One subgraph's instruction stream, buffer plan and per-op kernels."""

    def __init__(self, device: str, chip: str, spec: NpuSpec, kernels: list[K.Kernel], instrs: list[isa.Instr],
                 buffers, input_names, output_names, functional: bool, last_use: dict[str, int]):
        self.device = device
        self.chip = chip
        self.spec = spec
        self.kernels = kernels
        self.instrs = instrs
        self.buffers = buffers
        self.input_names = input_names
        self.output_names = output_names
        self.functional = functional
        self.last_use = last_use
        self.op_instrs: list[list[isa.Instr]] = [[] for _ in kernels]
        for ins in instrs:
            if ins.opcode != isa.BARRIER:
                self.op_instrs[ins.op].append(ins)
        self._consts: dict[str, np.ndarray] = {}
        self._prepared = False
        self._timeline: Timeline | None = None
        self._frees = [[] for _ in kernels]
        keep = set(output_names)
        for name, i in last_use.items():
            if name not in keep:
                self._frees[i].append(name)

    # ---- values ------------------------------------------------------------------------
    def _get_const(self, v: ir.Value):
        c = self._consts.get(v.name)
        if c is None:
            raw = opinfo.const_value(v)
            if raw is None:
                return None
            c = np.asarray(raw)
            self._consts[v.name] = c
        return c

    def prepare(self) -> None:
        """Pack the weights into the kernels (at compile time, or on the first run of a program
        loaded from an artifact, whose weights stay memory-mapped until then)."""
        for k in self.kernels:
            k.prepare(self._get_const)
        # packed weights live in the kernels; drop the raw constants read while packing
        self._consts.clear()
        self._prepared = True

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.functional:
            raise ExecutionError("this NPU program was compiled in timing mode and has no weights",
                                 hint="compile with mode='functional'")
        if not self._prepared:
            self.prepare()
        with blas_threads():
            return self._run(dict(inputs))

    def _run(self, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        def get(v: ir.Value) -> np.ndarray:
            x = env.get(v.name)
            if x is None:
                x = self._get_const(v)
                if x is None:
                    raise ExecutionError(f"value '{v.name}' was never computed")
            return K.to_compute(x)

        for i, kernel in enumerate(self.kernels):
            if kernel.kind == "const":
                continue
            try:
                kernel.begin(env, get)
                prefetch = getattr(kernel, "prefetch", None)
                if prefetch is not None:
                    prefetch(self.op_instrs[i])
                for ins in self.op_instrs[i]:
                    oc = ins.opcode
                    if oc == isa.MATMUL:
                        kernel.mm(ins)
                    elif oc == isa.VECTOR:
                        kernel.vec(ins)
                    elif oc == isa.STORE:
                        kernel.st(ins)
                    elif oc == isa.COPY:
                        kernel.copy(ins)
                kernel.end(env)
                K.round_outputs(kernel.node, env)
            except ExecutionError:
                raise
            except Exception as exc:
                n = kernel.node
                raise ExecutionError(f"NPU op {i} '{n.name}' ({n.op_type}) failed: {type(exc).__name__}: {exc}",
                                     hint="this is a bug in the NPU backend's kernel for this op") from exc
            for name in self._frees[i]:
                env.pop(name, None)
        out = {}
        for name, v in self.output_names.items():
            out[name] = env[name] if name in env else np.array(self._get_const(v))
        return out

    # ---- time --------------------------------------------------------------------------
    def simulate(self) -> Timeline:
        if self._timeline is None:
            self._timeline = self._simulate()
        return self._timeline

    def _simulate(self) -> Timeline:
        spec = self.spec
        clock = spec.clock_hz
        times, total, busy = simulate(self.instrs, spec, [k.spec for k in self.kernels])
        self._times_by_id = {id(ins): t for ins, t in zip(self.instrs, times)}
        e = spec.energy
        ops: list[OpEvent] = []
        t_prev = 0
        for i, kernel in enumerate(self.kernels):
            if kernel.kind == "const":
                continue
            node = kernel.node
            ins_list = self.op_instrs[i]
            if not ins_list:
                ops.append(OpEvent(node.name, node.op_type, t_prev / clock, t_prev / clock, bound="overhead",
                                   engine="view"))
                continue
            start = min(self._t[id(x)].start for x in ins_list)
            end = max(self._t[id(x)].end for x in ins_list)
            t_prev = end
            dram = sum(dma_bytes(x) for x in ins_list)
            sram = sum(sram_bytes(x, kernel.spec) for x in ins_list)
            vec_elems = sum(x.args[2] for x in ins_list if x.opcode == isa.VECTOR)
            compute = {}
            for x in ins_list:
                if x.opcode in (isa.MATMUL, isa.VECTOR):
                    tt = self._t[id(x)]
                    compute[x.core] = compute.get(x.core, 0) + tt.end - tt.start
            mem = sum(self._t[id(x)].dram_cycles for x in ins_list)
            bound = "compute" if max(compute.values(), default=0) >= mem else "memory"
            engine = {"gemm": "matrix", "copy": "dma"}.get(kernel.kind, "vector")
            if kernel.kind == "gemm" and getattr(kernel, "depthwise", False):
                engine = "vector"
            energy = (kernel.macs * kernel.spec.energy.per_mac_j + vec_elems * e.per_vector_op_j
                      + sram * e.per_sram_byte_j + dram * e.per_dram_byte_j)
            ops.append(OpEvent(node.name, node.op_type, start / clock, end / clock, cycles=end - start,
                               macs=kernel.macs, dram_bytes=dram, sram_bytes=sram, energy_j=energy, bound=bound,
                               engine=engine))
        notes = list(dict.fromkeys(k.spec.charge_note(self.chip) for k in self.kernels if k.kind != "const")
                     or [spec.charge_note(self.chip)])
        return Timeline(seconds=total / clock, cycles=total, ops=ops,
                        engine_busy_s={k: v / clock for k, v in sorted(busy.items())}, notes=notes,
                        spans=self._spans(times))

    def _spans(self, times) -> list[EngineSpan]:
        """Each engine's busy intervals (the same intervals `busy` sums), adjacent ones of one op
        merged: per core the DMA queues, matrix and vector units, and the shared DRAM channel."""
        raw: dict[str, list[tuple[int, int, int]]] = {}
        for ins, t in zip(self.instrs, times):
            if ins.opcode == isa.BARRIER:
                continue
            raw.setdefault(f"core{ins.core}.{ins.engine}", []).append((t.start, t.end, ins.op))
            if t.dram_cycles:
                raw.setdefault("dram", []).append((t.dram_start, t.dram_start + t.dram_cycles, ins.op))
        clock = self.spec.clock_hz
        spans = []
        for engine in sorted(raw):
            merged: list[list[int]] = []
            for a, b, op in sorted(raw[engine]):
                if merged and merged[-1][2] == op and merged[-1][1] == a:
                    merged[-1][1] = b
                else:
                    merged.append([a, b, op])
            spans.extend(EngineSpan(engine, a / clock, b / clock, self.kernels[op].node.name) for a, b, op in merged)
        return spans

    @property
    def _t(self):
        return self._times_by_id

    # ---- text and binary ---------------------------------------------------------------
    def asm(self) -> str:
        lines = [f"; NPU program for {self.chip} ({self.spec.cores} core(s), {self.spec.array.rows}x"
                 f"{self.spec.array.cols} {self.spec.array.dataflow}, charged at {self.spec.dtype})",
                 f"; {len(self.instrs)} instructions; DRAM buffers:"]
        for i, (name, addr, nbytes) in enumerate(self.buffers):
            lines.append(f";   buf {i}: {name} @0x{addr:x} ({nbytes} bytes)")
        for i, k in enumerate(self.kernels):
            if k.kind != "const":
                lines.append(f";   op {i}: {k.node.op_type} {k.node.name}")
        lines.append(isa.disassemble(self.instrs))
        return "\n".join(lines)

    def to_bytes(self) -> bytes:
        return isa.encode_program(self.instrs)


class NpuBackend(Backend):
    kind = "npu"
    spec_class = NpuSpec

    @staticmethod
    def _table(node: ir.Node):
        if node.domain == "kcompiler":
            return KC_OPS
        return OPS if node.domain in ("", "ai.onnx") else {}

    def supports(self, node: ir.Node) -> Support:
        table = self._table(node)
        if not table:
            return no(f"domain '{node.domain}' ops run on the host")
        entry = table.get(node.op_type)
        if entry is None:
            return no(f"{node.op_type} is not in the NPU's op table")
        _SPEC_FOR_CHECKS.append(self.spec.for_values(K.value_dtype(node)))
        try:
            return entry[1](node)
        except Exception as exc:  # a malformed node: let the host (ONNX Runtime) judge it
            return no(f"cannot analyse the node: {type(exc).__name__}: {exc}")
        finally:
            _SPEC_FOR_CHECKS.pop()

    def kernel(self, node: ir.Node) -> K.Kernel:
        return self._table(node)[node.op_type][0](node, self.spec.for_values(K.value_dtype(node)))

    def estimate(self, node: ir.Node) -> Cost:
        s: NpuSpec = self.spec
        k = self.kernel(node)
        c = k.cost()
        eb = k.spec.elem_bytes
        if k.kind in ("view", "const"):
            return Cost(bound="overhead")
        dram = int(sum(opinfo.numel(v) for v in node.inputs if v is not None) * eb
                   + sum(opinfo.numel(v) for v in node.outputs) * eb)
        cycles = c.cycles + s.issue_cycles
        mem_cycles = dram / s.dram_bytes_per_cycle
        e = s.energy
        return Cost(seconds=cycles / s.clock_hz, cycles=cycles, macs=c.macs, dram_bytes=dram, sram_bytes=2 * dram,
                    energy_j=c.macs * k.spec.energy.per_mac_j + dram * (e.per_dram_byte_j + 2 * e.per_sram_byte_j),
                    bound="compute" if cycles > 1.5 * mem_cycles else "memory")

    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        functional = (options or {}).get("mode", "functional") != "timing"
        s: NpuSpec = self.spec
        # fused ops arrive from the fusion rules (passes/fusion); the backend groups nothing
        # itself, so `--disable-pass fusion` compares against truly unfused programs
        kernels = [self.kernel(n) for n in subgraph.nodes]
        cg = K.Codegen(s)
        for v in subgraph.inputs:
            cg.buf(v)
        for i, k in enumerate(kernels):
            before = len(cg.instrs)
            if cg.instrs and k.kind not in ("view", "const"):
                cg.emit(isa.BARRIER, isa.ALL_CORES, i, ())
            k.emit(cg, i)
            if len(cg.instrs) == before + 1 and cg.instrs[-1].opcode == isa.BARRIER:
                cg.instrs.pop()
        outputs = {v.name: v for v in subgraph.outputs}
        prog = NpuProgram(self.name, self.device.chip.name, s, kernels, cg.instrs, cg.buffers,
                          [v.name for v in subgraph.inputs], outputs, functional, _last_use(subgraph))
        if functional:
            prog.prepare()
        return prog

    # ---- artifacts: the instruction stream plus the tables the simulators read -------------
    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        # fused ops are ordinary nodes (passes/fusion), so each node's kernel is rebuilt from the
        # stored graph; the kinds are kept to catch a kcompiler that would lower them differently
        ks = program.kernels
        meta = {"chip": program.chip, "ops": len(ks), "kinds": [k.kind for k in ks],
                "buffers": [[n, a, b] for n, a, b in program.buffers]}
        return program.to_bytes(), meta

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        functional = (options or {}).get("mode", "functional") != "timing"
        instrs = isa.decode_program(blob)
        kinds = list(meta.get("kinds", ()))
        if len(kinds) != len(subgraph.nodes):
            raise ArtifactError(f"NPU program of {len(kinds)} ops for a subgraph of {len(subgraph.nodes)} nodes")
        s: NpuSpec = self.spec
        kernels = [self.kernel(n) for n in subgraph.nodes]
        for k, kind in zip(kernels, kinds):
            if k.kind != kind:
                raise ArtifactError(f"NPU op '{k.node.name}' was a '{kind}' kernel when compiled and is a "
                                    f"'{k.kind}' kernel in this kcompiler", hint="recompile the model")
        n_ops = len(kernels)
        if any(ins.op >= n_ops for ins in instrs if ins.opcode != isa.BARRIER):
            raise ArtifactError("NPU program: an instruction names an op outside the subgraph")
        buffers = [(str(n), int(a), int(b)) for n, a, b in meta.get("buffers", ())]
        return NpuProgram(self.name, meta.get("chip", self.device.chip.name), s, kernels, instrs, buffers,
                          [v.name for v in subgraph.inputs], {v.name: v for v in subgraph.outputs}, functional,
                          _last_use(subgraph))


def _last_use(subgraph: Subgraph) -> dict[str, int]:
    last_use: dict[str, int] = {}
    for i, n in enumerate(subgraph.nodes):
        for v in n.inputs:
            if v is not None:
                last_use[v.name] = i
    return last_use
