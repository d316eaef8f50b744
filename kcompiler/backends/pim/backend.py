"""The PIM backend: claims memory-bound products and element-wise ops, lowers them to
command streams, computes them bank by bank and times them command by command."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline, no
from kcompiler.backends.pim import kernels
from kcompiler.backends.pim.isa import ENCODED_SIZE, Command
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError, LoweringError

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _is_const(v: ir.Value | None) -> bool:
    """Known at compile time — decided without reading the data."""
    if v is None:
        return False
    if v.const_value is not None:
        return True
    p = v.producer()
    return p is not None and p.op_type in ("Constant", "ConstantOfShape") and p.domain in ("", "ai.onnx")


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    if a is None:
        return default
    return {int: a.as_int, float: a.as_float, str: a.as_string}[type(default)]()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gelu(node):
    from scipy.special import erf

    if _attr(node, "approximate", "none") == "tanh":
        return lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _erf(node):
    from scipy.special import erf

    return erf


#: activation-function unit: ONNX op -> (node -> elementwise function in float32)
AF_TABLE: dict[str, Callable[[ir.Node], Callable[[np.ndarray], np.ndarray]]] = {
    "Relu": lambda n: lambda x: np.maximum(x, 0),
    "LeakyRelu": lambda n: (lambda a: lambda x: np.where(x >= 0, x, a * x))(_attr(n, "alpha", 0.01)),
    "Sigmoid": lambda n: _sigmoid,
    "Tanh": lambda n: np.tanh,
    "Gelu": _gelu,
    "Erf": _erf,
}
EW_TABLE = {"Add": np.add, "Mul": np.multiply}


@dataclass
class Plan:
    """What a node is on the PIM: a matrix-vector product or an element-wise op."""

    kind: str  # "matvec" | "elementwise"
    G: int = 1
    M: int = 1
    N: int = 1
    K: int = 1
    numel: int = 0
    streamed: int = 0
    const_weight: bool = False


class PimBackend(Backend):
    kind = "pim"
    spec_class = PimSpec

    def __init__(self, device, system):
        super().__init__(device, system)
        self._cache: dict[tuple, Cost] = {}

    # ---- what the device claims --------------------------------------------------------
    def plan(self, node: ir.Node) -> Plan | Support:
        s: PimSpec = self.spec
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return no(f"custom-domain op {node.domain}::{op}")
        ins = [v for v in node.inputs]
        if any(v is not None and v.dtype not in FLOAT_TYPES for v in ins) or not node.outputs:
            return no("PIM units compute floating point only")
        shapes = [opinfo.shape_of(v) if v is not None else None for v in ins]
        out = opinfo.shape_of(node.outputs[0])
        if out is None or any(v is not None and sh is None for v, sh in zip(ins, shapes)):
            return no("shapes unknown")
        if op in ("MatMul", "Gemm"):
            a, b = shapes[0], shapes[1]
            if op == "Gemm":
                if _attr(node, "transA", 0):
                    return no("Gemm with transA")
                if len(ins) > 2 and ins[2] is not None and not _is_const(ins[2]):
                    return no("Gemm bias is not a constant")
                if not _is_const(ins[1]):
                    return no("Gemm with a non-constant B")
                M, K = a
                N = b[0] if _attr(node, "transB", 0) else b[1]
                return self._check_rows(Plan("matvec", 1, M, N, K, const_weight=True))
            if len(a) < 1 or len(b) < 2:
                return no("MatMul with a vector right operand")
            K, N = b[-2], b[-1]
            if _is_const(ins[1]):
                if len(b) != 2:
                    return no("batched constant weights")
                M = math.prod(a[:-1]) if len(a) > 1 else 1
                return self._check_rows(Plan("matvec", 1, M, N, K, const_weight=True))
            if _is_const(ins[0]):
                return no("constant left operand")
            if len(a) < 2:
                return no("vector left operand over an activation matrix")
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
            return self._check_rows(Plan("matvec", math.prod(batch), a[-2], N, K))
        if op in EW_TABLE:
            numel = math.prod(out)
            if numel == 0:
                return no("empty tensor")
            return Plan("elementwise", numel=numel, streamed=sum(1 for v in ins if v is not None and not _is_const(v)))
        if op in AF_TABLE:
            if op not in s.activation_functions:
                return no(f"the activation-function unit has no {op} (it has {', '.join(s.activation_functions)})")
            if op == "Gelu" and _attr(node, "approximate", "none") not in ("none", "tanh"):
                return no("unknown Gelu approximation")
            return Plan("elementwise", numel=math.prod(out), streamed=1)
        return no(f"{op} is not a PIM operation (GEMV-like MatMul/Gemm, Add, Mul, activation functions)")

    def _check_rows(self, p: Plan) -> Plan | Support:
        if p.M > self.spec.max_gemv_rows:
            return no(f"{p.M} activation rows > max_gemv_rows {self.spec.max_gemv_rows}: compute-bound GEMM")
        if min(p.N, p.K) < 1:
            return no("empty product")
        rows = self._kernel(p, "probe", "MatMul").rows_used
        if rows > self.spec.rows_per_bank:
            return no(f"its operand needs {rows} DRAM rows per bank; the device has {self.spec.rows_per_bank}")
        return p

    def supports(self, node: ir.Node) -> Support:
        p = self.plan(node)
        return YES if isinstance(p, Plan) else p

    def _kernel(self, p: Plan, name: str, op_type: str, fn_index: int = 0) -> kernels.Kernel:
        if p.kind == "matvec":
            return kernels.build_matvec(self.spec, name, op_type, p.G, p.M, p.N, p.K)
        return kernels.build_elementwise(self.spec, name, op_type, p.numel, p.streamed, fn_index)

    # ---- cost ----------------------------------------------------------------------------
    def kernel_cost(self, k: kernels.Kernel) -> Cost:
        s: PimSpec = self.spec
        seconds, acts, cols, io = k.time(s)
        e = s.energy
        energy = (acts * s.banks_per_channel * e.act_j + cols * s.banks_per_channel * e.column_j
                  + k.macs * e.mac_j + io * e.io_byte_j)
        return Cost(seconds=seconds, cycles=int(round(seconds * s.clock_hz)), macs=k.macs,
                    dram_bytes=k.weight_bytes, sram_bytes=io, energy_j=energy, bound="memory")

    def estimate(self, node: ir.Node) -> Cost:
        p = self.plan(node)
        if not isinstance(p, Plan):
            return Cost(seconds=float("inf"), bound="overhead")
        key = (node.op_type, p.kind, p.G, p.M, p.N, p.K, p.numel, p.streamed)
        if key not in self._cache:
            self._cache[key] = self.kernel_cost(self._kernel(p, node.name, node.op_type))
        c = self._cache[key]
        return Cost(c.seconds, c.cycles, c.macs, c.dram_bytes, c.sram_bytes, c.energy_j, c.bound)

    # ---- lowering ------------------------------------------------------------------------
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        timing_only = (options or {}).get("mode") == "timing"
        steps, base_row = [], 0
        for node in subgraph.nodes:
            p = self.plan(node)
            if not isinstance(p, Plan):
                raise LoweringError(f"node '{node.name}' ({node.op_type}) was placed on {self.name}, "
                                    f"which cannot run it: {p.reason}")
            fn_index = list(AF_TABLE).index(node.op_type) if node.op_type in AF_TABLE else 0
            k = self._kernel(p, node.name, node.op_type, fn_index)
            if p.kind == "matvec":
                # place this node's operand after the previous ones in every bank
                k.streams = [[Command(c.op, c.channel, c.row + base_row, c.col, c.count, c.arg)
                              if c.op == "MAC_ABK" else c for c in st] for st in k.streams]
            base_row += k.rows_used
            if not timing_only:
                k.compute = self._compute_fn(node, p)
            steps.append((node, k))
        if base_row > self.spec.rows_per_bank:
            raise LoweringError(f"the operands placed on {self.name} need {base_row} DRAM rows per bank, but it has "
                                f"{self.spec.rows_per_bank}", hint="use a target with more PIM chips")
        return PimProgram(self, subgraph, steps, timing_only)

    def _compute_fn(self, node: ir.Node, p: Plan) -> Callable[[list[np.ndarray]], np.ndarray]:
        s: PimSpec = self.spec
        dt = kernels.device_dtype(s)
        out_shape = opinfo.shape_of(node.outputs[0])
        op = node.op_type
        if p.kind == "elementwise":
            if op in EW_TABLE:
                f = EW_TABLE[op]
                return lambda xs: f(*[np.asarray(x).astype(dt).astype(np.float32) for x in xs]).astype(dt)
            g = AF_TABLE[op](node)
            return lambda xs: g(np.asarray(xs[0]).astype(dt).astype(np.float32)).astype(dt)
        mv = kernels.matvec_compute(s, p.G, p.M, p.N, p.K)
        if op == "Gemm":
            # the weight is laid out in the banks once, at compile time
            b = opinfo.const_value(node.inputs[1])
            w = (b if _attr(node, "transB", 0) else b.T)[None]
            bias = opinfo.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)

            def gemm(xs):
                y = alpha * mv(xs[0][None], w)[0]
                return y + beta * bias if bias is not None else y

            return gemm
        if p.const_weight:
            w = opinfo.const_value(node.inputs[1]).T[None]
            return lambda xs: mv(np.asarray(xs[0]).reshape(1, p.M, p.K), w).reshape(out_shape)

        def batched(xs):
            a, b = np.asarray(xs[0]), np.asarray(xs[1])
            batch = out_shape[:-2]
            x = np.broadcast_to(a, batch + a.shape[-2:]).reshape(p.G, p.M, p.K)
            w = np.swapaxes(np.broadcast_to(b, batch + b.shape[-2:]), -1, -2).reshape(p.G, p.N, p.K)
            return mv(x, w).reshape(out_shape)

        return batched


class PimProgram(Program):
    def __init__(self, backend: PimBackend, sub: Subgraph, steps, timing_only: bool):
        self.device = sub.device
        self.backend = backend
        self.spec: PimSpec = backend.spec
        self.steps = steps
        self.timing_only = timing_only
        self.output_names = [v.name for v in sub.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.timing_only:
            raise ExecutionError("this PIM program was compiled in timing mode and holds no weights",
                                 hint="compile with mode='functional'")
        env: dict[str, np.ndarray] = dict(inputs)
        for node, k in self.steps:
            xs = []
            for v in node.inputs:
                if v is None:
                    continue
                if v.name in env:
                    xs.append(env[v.name])
                else:
                    c = opinfo.const_value(v)
                    if c is None:
                        raise ExecutionError(f"PIM node '{node.name}': input '{v.name}' was never computed")
                    xs.append(c)
            out = node.outputs[0]
            y = np.asarray(k.compute(xs))
            np_dtype = out.dtype.numpy() if out.dtype is not None else np.float32
            env[out.name] = np.ascontiguousarray(y.astype(np_dtype).reshape(opinfo.shape_of(out)))
        return {n: env[n] for n in self.output_names}

    def simulate(self) -> Timeline:
        t, ops, busy = 0.0, [], 0.0
        for node, k in self.steps:
            c = self.backend.kernel_cost(k)
            ops.append(OpEvent(node.name, node.op_type, t, t + c.seconds, cycles=c.cycles, macs=c.macs,
                               dram_bytes=c.dram_bytes, sram_bytes=c.sram_bytes, energy_j=c.energy_j,
                               bound=c.bound, engine="banks"))
            t += c.seconds
            busy += c.seconds
        return Timeline(seconds=t, cycles=int(round(t * self.spec.clock_hz)), ops=ops,
                        engine_busy_s={"banks": busy})

    def asm(self) -> str:
        lines = []
        for node, k in self.steps:
            chans = sum(1 for s in k.streams if s)
            lines.append(f"; {node.name} ({node.op_type}): {chans} channel(s) in lock step; channel 0 shown")
            lines.extend(c.text() for c in (k.streams[0] if k.streams else []))
        return "\n".join(lines)

    def to_bytes(self) -> bytes:
        out = bytearray()
        for _, k in self.steps:
            for st in k.streams:
                for c in st:
                    out += c.encode()
        assert len(out) % ENCODED_SIZE == 0
        return bytes(out)
