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


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    if a is None:
        return default
    return {int: a.as_int, float: a.as_float, str: a.as_string}[type(default)]()


#: activation functions with f(c x) = c f(x) for c > 0: exact under a power-of-two operand scale
HOMOGENEOUS = ("Relu", "LeakyRelu")
#: largest magnitude a scaled FP16 operand or partial sum may reach (half of FP16's 65504: headroom)
FP16_LIMIT = 2.0 ** 15


def _shift(bound: float, limit: float = FP16_LIMIT) -> int:
    """Smallest s >= 0 with bound * 2**-s <= limit (0 for a zero or non-finite bound)."""
    if not math.isfinite(bound) or bound <= limit:
        return 0
    return int(math.ceil(math.log2(bound / limit)))


def _amax(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def _split_shift(s: int, ea: float, eb: float, sa: int, sb: int) -> tuple[int, int]:
    """Share an extra shift s between two operands, larger scaled magnitude first (keeps both away from
    FP16's subnormal range)."""
    for _ in range(s):
        if ea * 2.0 ** -sa >= eb * 2.0 ** -sb:
            sa += 1
        else:
            sb += 1
    return sa, sb


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf_np(x):
    """erf in float64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: far below BF16/FP16 resolution)."""
    x = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(
        -x * x)
    return (np.sign(x) * y).astype(np.float32)


def _gelu(node):
    erf = _erf_np
    if _attr(node, "approximate", "none") == "tanh":
        return lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _erf(node):
    return _erf_np


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
#: ops that only reinterpret a tensor's shape: free wherever its data sits (bank layout or read-back buffer)
RESHAPES = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")
#: what may sit between a resident KV cache and the product reading it as its matrix operand
LAYOUT_VIEWS = RESHAPES + ("Transpose", "Expand")
STATE_KEY = "kcompiler.state"


def _feeds_matrix_operand(v: ir.Value, depth: int = 0) -> tuple[bool, int]:
    """Whether every use of `v` is, through layout views, the matrix (second) operand of a MatMul;
    and how many last-two-axes transposes lie on the way (0 or 1 when consistent)."""
    if depth > 8 or v.is_graph_output():
        return False, 0
    uses = list(v.uses())
    if not uses:
        return False, 0
    flips = set()
    for u in uses:
        n = u.node
        if n.op_type == "MatMul" and u.idx == 1 and n.domain in ("", "ai.onnx"):
            flips.add(0)
        elif n.op_type in LAYOUT_VIEWS and u.idx == 0 and n.domain in ("", "ai.onnx"):
            ok, f = _feeds_matrix_operand(n.outputs[0], depth + 1)
            if not ok:
                return False, 0
            flips.add(f ^ (1 if n.op_type == "Transpose" and _swaps_last_two(n) else 0))
        else:
            return False, 0
    if len(flips) != 1:
        return False, 0
    return True, flips.pop()


def _perm(node: ir.Node, rank: int) -> list[int]:
    a = node.attributes.get("perm")
    return list(a.as_ints()) if a is not None else list(range(rank))[::-1]


def _swaps_last_two(node: ir.Node) -> bool:
    sh = opinfo.shape_of(node.inputs[0])
    if sh is None or len(sh) < 2:
        return False
    r = len(sh)
    return _perm(node, r) == list(range(r - 2)) + [r - 1, r - 2]


def _moves_only_unit_axes(node: ir.Node) -> bool:
    """A transpose that keeps the order of the axes longer than one is a reshape."""
    sh = opinfo.shape_of(node.inputs[0])
    if sh is None:
        return False
    kept = [a for a in _perm(node, len(sh)) if sh[a] != 1]
    return kept == sorted(kept)


@dataclass
class Plan:
    """What a node is on the PIM: a matrix-vector product or an element-wise op."""

    kind: str  # "matvec" | "elementwise" | "view" | "append"
    G: int = 1
    M: int = 1
    N: int = 1
    K: int = 1
    numel: int = 0
    streamed: int = 0
    const_weight: bool = False
    scattered: bool = False  # append: each new element lands in its own column (see kernels.build_append)


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
        if op in LAYOUT_VIEWS:
            return self._plan_view(node)
        if op == "Concat":
            return self._plan_append(node)
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
                if len(ins) > 2 and ins[2] is not None and not opinfo.is_const(ins[2]):
                    return no("Gemm bias is not a constant")
                if not opinfo.is_const(ins[1]):
                    return no("Gemm with a non-constant B")
                M, K = a
                N = b[0] if _attr(node, "transB", 0) else b[1]
                return self._check_rows(Plan("matvec", 1, M, N, K, const_weight=True))
            if len(a) < 1 or len(b) < 2:
                return no("MatMul with a vector right operand")
            K, N = b[-2], b[-1]
            if opinfo.is_const(ins[1]):
                if len(b) != 2:
                    return no("batched constant weights")
                M = math.prod(a[:-1]) if len(a) > 1 else 1
                return self._check_rows(Plan("matvec", 1, M, N, K, const_weight=True))
            if opinfo.is_const(ins[0]):
                return no("constant left operand")
            if len(a) < 2:
                return no("vector left operand over an activation matrix")
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
            return self._check_rows(Plan("matvec", math.prod(batch), a[-2], N, K))
        if op in EW_TABLE:
            numel = math.prod(out)
            if numel == 0:
                return no("empty tensor")
            if s.dtype == "float16":
                # a constant operand is scaled by one power of two with the streamed one; beyond FP16's
                # range (an additive mask of -3.4e38) it would flush the other operand to zero
                for v, sh in zip(ins, shapes):
                    if opinfo.is_const(v) and sh is not None and math.prod(sh) <= 1 << 20:
                        c = opinfo.const_value(v)
                        if c is not None and c.size and not np.all(np.abs(c.astype(np.float64)) <= 65504.0):
                            return no(f"constant operand '{v.name}' exceeds the FP16 range (e.g. a -inf mask)")
            return Plan("elementwise", numel=numel, streamed=sum(1 for v in ins if v is not None and not opinfo.is_const(v)))
        if op in AF_TABLE:
            if op not in s.activation_functions:
                return no(f"the activation-function unit has no {op} (it has {', '.join(s.activation_functions)})")
            if op == "Gelu" and _attr(node, "approximate", "none") not in ("none", "tanh"):
                return no("unknown Gelu approximation")
            return Plan("elementwise", numel=math.prod(out), streamed=1)
        return no(f"{op} is not a PIM operation (GEMV-like MatMul/Gemm, Add, Mul, activation functions)")

    def _plan_view(self, node: ir.Node) -> Plan | Support:
        """Shape-only ops cost nothing; a transpose or broadcast is free only as the layout in which a
        product's matrix operand (a resident KV cache) is stored and read."""
        op = node.op_type
        x = node.inputs[0] if node.inputs else None
        if x is None or x.dtype not in FLOAT_TYPES or len(node.outputs) != 1:
            return no("PIM units hold floating-point data only")
        if any(v is not None and not opinfo.is_const(v) for v in node.inputs[1:]):
            return no(f"{op} with a computed shape")
        if opinfo.shape_of(x) is None or opinfo.shape_of(node.outputs[0]) is None:
            return no("shapes unknown")
        if op in RESHAPES:
            return Plan("view")
        if op == "Transpose" and _moves_only_unit_axes(node):
            return Plan("view")
        ok, _ = _feeds_matrix_operand(node.outputs[0])
        if ok and (op == "Expand" or _swaps_last_two(node)):
            return Plan("view")
        return no(f"{op} moves data; PIM only reads a product's matrix operand in a transposed or broadcast layout")

    def _plan_append(self, node: ir.Node) -> Plan | Support:
        """KV-cache append: Concat(past, new) -> present, where past/present are device-resident state
        (runtime/state.py): the new rows are written into the banks in place."""
        out = node.outputs[0]
        state = [v for v in node.inputs if v is not None and v.is_graph_input() and
                 v.metadata_props.get(STATE_KEY) == out.name]
        if len(state) != 1 or not out.is_graph_output() or out.metadata_props.get(STATE_KEY) != state[0].name:
            return no("Concat is not a PIM operation (only the in-place append to a resident KV cache is)")
        if any(v is None or v.dtype not in FLOAT_TYPES for v in node.inputs):
            return no("PIM units hold floating-point data only")
        shapes = [opinfo.shape_of(v) for v in node.inputs]
        osh = opinfo.shape_of(out)
        if osh is None or any(sh is None for sh in shapes):
            return no("shapes unknown")
        new = math.prod(osh) - math.prod(opinfo.shape_of(state[0]))
        if new <= 0:
            return no("nothing appended")
        ok, flip = _feeds_matrix_operand(out)
        # the cache is stored as its reader's matrix w[n, k]: untransposed, a new token is a new k (one
        # element per output row on a dot device); read through a transpose it is a new row n (a simd
        # device stores n along the lanes, so there it is the other way round)
        dot = self.spec.mac_dataflow == "dot"
        scattered = (dot and not flip) or (not dot and flip) if ok else True
        return Plan("append", numel=new, streamed=len(node.inputs) - 1, scattered=scattered)

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
        if p.kind == "view":
            return kernels.Kernel(name, op_type, [], macs=0, weight_bytes=0, rows_used=0)
        if p.kind == "append":
            return kernels.build_append(self.spec, name, op_type, p.numel, p.scattered)
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
        key = (node.op_type, p.kind, p.G, p.M, p.N, p.K, p.numel, p.streamed, p.scattered)
        if key not in self._cache:
            self._cache[key] = self.kernel_cost(self._kernel(p, node.name, node.op_type))
        c = self._cache[key]
        return Cost(c.seconds, c.cycles, c.macs, c.dram_bytes, c.sram_bytes, c.energy_j, c.bound)

    # ---- lowering ------------------------------------------------------------------------
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        timing_only = (options or {}).get("mode") == "timing"
        steps, base_row = [], 0
        for node in subgraph.nodes:
            if node.op_type in ("Constant", "ConstantOfShape") and node.domain in ("", "ai.onnx") and all(
                    opinfo.const_value(v) is not None for v in node.outputs):
                # placed with its consumer: known at compile time, nothing runs on the device
                k = kernels.Kernel(node.name, node.op_type, [], macs=0, weight_bytes=0, rows_used=0)
                if not timing_only:
                    k.compute = (lambda v: lambda xs: opinfo.const_value(v))(node.outputs[0])
                steps.append((node, k))
                continue
            p = self.plan(node)
            if not isinstance(p, Plan):
                raise LoweringError(f"node '{node.name}' ({node.op_type}) was placed on {self.name}, "
                                    f"which cannot run it: {p.reason}")
            fn_index = list(AF_TABLE).index(node.op_type) if node.op_type in AF_TABLE else 0
            k = self._kernel(p, node.name, node.op_type, fn_index)
            k.plan, k.fn_index = p, fn_index  # kept for save_program
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
        if p.kind == "view":
            if op == "Transpose":
                perm = _perm(node, len(opinfo.shape_of(node.inputs[0])))
                return lambda xs: np.transpose(np.asarray(xs[0]), perm)
            if op == "Expand":
                return lambda xs: np.broadcast_to(np.asarray(xs[0]), out_shape)
            return lambda xs: np.reshape(np.asarray(xs[0]), out_shape)
        if p.kind == "append":
            axis = _attr(node, "axis", 0)
            # (the products reading the cache round it to the device's type, as they would the stored rows)
            return lambda xs: np.concatenate([np.asarray(x) for x in xs], axis=axis)
        # FP16 devices (HBM-PIM): per-tensor power-of-two scaling. The host converts every operand to
        # FP16 on its way into the banks; it also takes the operand's largest exponent there and
        # shifts it (and, at compile time, a weight) so that operands, products and FP16 partial
        # sums stay below 2**15, then shifts the FP32 result back on readback. Scaling by 2**-s is
        # exact in FP16 (only values pushed below 2**-14 lose bits), unlike clamping, and needs no
        # range known at compile time, which activations do not have. No command is added.
        fp16 = s.dtype == "float16"
        if p.kind == "elementwise":
            if op in EW_TABLE:
                f = EW_TABLE[op]

                def ew(xs):
                    a = [np.asarray(x, np.float32) for x in xs]
                    m = [_amax(x) for x in a]
                    if not fp16:
                        sh, out = [0] * len(a), 0
                    elif op == "Add":
                        out = _shift(sum(m))
                        sh = [out] * len(a)
                    else:
                        sa, sb = _shift(m[0]), _shift(m[1])
                        sa, sb = _split_shift(_shift(m[0] * 2.0 ** -sa * m[1] * 2.0 ** -sb), m[0], m[1], sa, sb)
                        sh, out = [sa, sb], sa + sb
                    q = [np.ldexp(x, -e).astype(dt).astype(np.float32) for x, e in zip(a, sh)]
                    return np.ldexp(f(*q).astype(dt).astype(np.float32), out)

                return ew
            g = AF_TABLE[op](node)
            homogeneous = fp16 and op in HOMOGENEOUS

            def af(xs):
                x = np.asarray(xs[0], np.float32)
                e = _shift(_amax(x)) if homogeneous else 0
                return np.ldexp(g(np.ldexp(x, -e).astype(dt).astype(np.float32)).astype(dt).astype(np.float32), e)

            return af
        mv0 = kernels.matvec_compute(s, p.G, p.M, p.N, p.K)

        def mv(x, w):
            if not fp16:
                return mv0(x, w)
            x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
            ex, ew_ = _amax(x), _amax(w)
            sx, sw = _shift(ex), _shift(ew_)
            # every FP16 partial sum of a unit is at most max|x| * max_n sum_k |w[n, k]|
            l1 = float(np.max(np.sum(np.abs(w), axis=-1))) if w.size else 0.0
            sx, sw = _split_shift(_shift(ex * 2.0 ** -sx * l1 * 2.0 ** -sw), ex, ew_, sx, sw)
            return np.ldexp(mv0(np.ldexp(x, -sx), np.ldexp(w, -sw)), sx + sw)

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

    # ---- artifacts (runtime/artifact.py) -------------------------------------------------
    #: bump when the meaning of a stored step table or command changes
    ARTIFACT_ENCODING = 1

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        """The command streams (``to_bytes``: steps in order, channels in order) plus, per step, the
        plan its numerics need and the length of each channel's stream; nothing that depends on
        weight values (the products read their matrices from the graph, i.e. the weight section)."""
        steps = []
        for node, k in program.steps:
            p = getattr(k, "plan", None)
            plan = [p.kind, p.G, p.M, p.N, p.K, p.numel, p.streamed, int(p.scattered), int(p.const_weight)] \
                if p is not None else ["const", 1, 1, 1, 1, 0, 0, 0, 0]
            steps.append({"op": node.op_type, "plan": plan, "fn": int(getattr(k, "fn_index", 0)),
                          "macs": k.macs, "weight_bytes": k.weight_bytes, "rows": k.rows_used,
                          "streams": [len(st) for st in k.streams]})
        meta = {"encoding": self.ARTIFACT_ENCODING, "chip": self.device.chip.name,
                "timing": bool(program.timing_only), "steps": steps}
        return program.to_bytes(), meta

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        """Rebuild the program from its stored command streams and step table: no planning, no bank
        layout, no command generation; a product's weight is the graph's (memory-mapped) tensor."""
        import struct

        from kcompiler.errors import ArtifactError

        where = f"PIM program on {self.name}"
        if int(meta.get("encoding", 0)) != self.ARTIFACT_ENCODING:
            raise ArtifactError(f"{where}: stored in PIM encoding {meta.get('encoding')}, this kcompiler reads "
                                f"{self.ARTIFACT_ENCODING}", hint="recompile the model")
        steps_meta = list(meta.get("steps", ()))
        if len(steps_meta) != len(subgraph.nodes):
            raise ArtifactError(f"{where}: {len(steps_meta)} stored steps for a subgraph of "
                                f"{len(subgraph.nodes)} nodes")
        total = sum(int(n) for st in steps_meta for n in st["streams"])
        if len(blob) != total * ENCODED_SIZE:
            raise ArtifactError(f"{where}: {len(blob)} bytes of commands, the step table says {total} commands")
        timing_only = (options or {}).get("mode") == "timing" or bool(meta.get("timing"))
        try:
            cmds = [Command.decode_fields(*f) for f in struct.iter_unpack(Command.FORMAT, blob)]
        except (KeyError, struct.error):
            raise ArtifactError(f"{where}: a command has an unknown opcode") from None
        nch = self.spec.channels
        steps, pos = [], 0
        for node, st in zip(subgraph.nodes, steps_meta):
            if st["op"] != node.op_type:
                raise ArtifactError(f"{where}: step for node '{node.name}' was a {st['op']} when compiled")
            streams = []
            for n in st["streams"]:
                streams.append(cmds[pos:pos + int(n)])
                pos += int(n)
            if any(c.channel >= nch for s in streams for c in s):
                raise ArtifactError(f"{where}: a command names a channel the device does not have")
            kind, G, M, N, K, numel, streamed, scattered, const_weight = st["plan"]
            k = kernels.Kernel(node.name, node.op_type, streams, macs=int(st["macs"]),
                               weight_bytes=int(st["weight_bytes"]), rows_used=int(st["rows"]))
            if kind == "const":
                if not timing_only:
                    k.compute = (lambda v: lambda xs: opinfo.const_value(v))(node.outputs[0])
            else:
                p = Plan(str(kind), int(G), int(M), int(N), int(K), int(numel), int(streamed), bool(const_weight),
                         bool(scattered))
                k.plan, k.fn_index = p, int(st.get("fn", 0))
                if not timing_only:
                    k.compute = self._compute_fn(node, p)
            steps.append((node, k))
        return PimProgram(self, subgraph, steps, timing_only)


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
