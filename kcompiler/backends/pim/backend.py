"""The PIM backend: claims memory-bound products and element-wise ops, lowers them to
command streams, computes them bank by bank and times them command by command."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline, no
from kcompiler.backends.pim import kernels, sim
from kcompiler.backends.pim.isa import ENCODED_SIZE, HOST, PAIR, RESIDENT, UP, Command, decode_all, encode_all
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ArtifactError, ExecutionError, LoweringError

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    if a is None:
        return default
    return {int: a.as_int, float: a.as_float, str: a.as_string}[type(default)]()


#: activation functions with f(c x) = c f(x) for c > 0: exact under a power-of-two operand scale
HOMOGENEOUS = ("Relu", "LeakyRelu")
#: the activation-function unit: ONNX op -> its parameter (index into sim.AF_FUNCS by name)
AF_TABLE = tuple(sim.AF_FUNCS)
EW_TABLE = {"Add": "EWADD", "Mul": "EWMUL"}
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
            ws = _broadcast_strides(tuple(b), batch + (K, N))
            if _merge(list(batch) + [a[-2], K], _broadcast_strides(tuple(a), batch + (a[-2], K)),
                      _strides(batch + (a[-2], K))) is None or \
                    _merge(list(batch) + [N, K], ws[:-2] + [ws[-1], ws[-2]], _strides(batch + (N, K))) is None:
                return no("operands broadcast over more than 4 strided dimensions (the host copy takes 4)")
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
            for sh in shapes:
                if sh is not None and math.prod(sh) != numel and _merge(
                        list(out), _broadcast_strides(tuple(sh), tuple(out)), _strides(out)) is None:
                    return no("an operand broadcasts over more than 4 strided dimensions (the host copy takes 4)")
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
            xs, ys = tuple(opinfo.shape_of(x)), tuple(opinfo.shape_of(node.outputs[0]))
            src = _broadcast_strides(xs, ys) if op == "Expand" else [_strides(xs)[a] for a in _perm(node, len(xs))]
            if _merge(list(ys), src, _strides(ys)) is None:
                return no(f"{op} of more than 4 strided dimensions (the host copy takes 4)")
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
        return Plan("append", numel=new, streamed=len(node.inputs) - 1)

    def _check_rows(self, p: Plan) -> Plan | Support:
        if p.M > self.spec.max_gemv_rows:
            return no(f"{p.M} activation rows > max_gemv_rows {self.spec.max_gemv_rows}: compute-bound GEMM")
        if min(p.N, p.K) < 1:
            return no("empty product")
        rows = kernels.matvec_layout(self.spec, p.G, p.N, p.K).rows
        if rows > self.spec.rows_per_bank:
            return no(f"its operand needs {rows} DRAM rows per bank; the device has {self.spec.rows_per_bank}")
        return p

    def supports(self, node: ir.Node) -> Support:
        p = self.plan(node)
        return YES if isinstance(p, Plan) else p

    # ---- cost ----------------------------------------------------------------------------
    def kernel_cost(self, k: kernels.Kernel) -> Cost:
        """Time from the channel streams (timing.py); MACs, bank bytes and energy counted from the
        commands themselves (Kernel.counts), not from the node's formula."""
        s: PimSpec = self.spec
        seconds, acts, cols, io = k.time(s)
        macs, bank_bytes = k.counts(s)
        e = s.energy
        energy = (acts * s.banks_per_channel * e.act_j + cols * s.banks_per_channel * e.column_j
                  + macs * e.mac_j + io * e.io_byte_j)
        return Cost(seconds=seconds, cycles=int(round(seconds * s.clock_hz)), macs=macs,
                    dram_bytes=bank_bytes, sram_bytes=io, energy_j=energy, bound="memory")

    def estimate(self, node: ir.Node) -> Cost:
        p = self.plan(node)
        if not isinstance(p, Plan):
            return Cost(seconds=float("inf"), bound="overhead")
        resident = p.kind == "matvec" and not p.const_weight and _resident(node.inputs[1])
        key = (node.op_type, p.kind, p.G, p.M, p.N, p.K, p.numel, p.streamed, resident,
               tuple(opinfo.shape_of(v) if v is not None else None for v in node.inputs))
        if key not in self._cache:
            em = kernels.Emitter(self.spec, packed=True)
            env = {v.name: _Buf(0, 0, opinfo.shape_of(v)) for v in node.inputs
                   if v is not None and not opinfo.is_const(v)}
            _Lowering(self, em, env, timing_only=True).node(node, p)
            self._cache[key] = self.kernel_cost(kernels.Kernel(node.name, node.op_type, em.cmds, em.rows))
        c = self._cache[key]
        return Cost(c.seconds, c.cycles, c.macs, c.dram_bytes, c.sram_bytes, c.energy_j, c.bound)

    # ---- lowering ------------------------------------------------------------------------
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        timing_only = (options or {}).get("mode") == "timing"
        s: PimSpec = self.spec
        em = kernels.Emitter(s, packed=timing_only and self.pack_timing)
        env: dict[str, _Buf] = {}
        inputs = []
        for v in subgraph.inputs:
            sh = opinfo.shape_of(v)
            if sh is None:
                raise LoweringError(f"input '{v.name}' of the PIM subgraph on {self.name} has no static shape")
            b = _Buf(em.alloc(4 * math.prod(sh)), 0, sh)
            env[v.name] = b
            inputs.append(sim.Binding(v.name, b.addr, 0, tuple(sh)))
        low = _Lowering(self, em, env, timing_only)
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
                if not isinstance(p, Plan):
                    raise LoweringError(f"node '{node.name}' ({node.op_type}) was placed on {self.name}, "
                                        f"which cannot run it: {p.reason}")
                low.node(node, p)
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
            code = _dtype_code(v.dtype)
            if code < 0:
                raise LoweringError(f"PIM subgraph output '{v.name}' has dtype {v.dtype}, which the staging area "
                                    "does not hold")
            if code != b.dtype:  # the graph's dtype: converted on the host on the way out
                b = low.copy(b, code)
            outputs.append(sim.Binding(v.name, b.addr, code, tuple(opinfo.shape_of(v) or b.shape)))
        packed = em.cmds if any(isinstance(c, kernels.Packed) for c in em.cmds) else None
        code = sim.Code(em.cmds if packed is None else [], np.array(em.descs, np.int64).reshape(-1, 12), None, None,
                        em.rows, em.staging, [(a, np.frombuffer(r, np.uint8)) for a, r in em.consts], inputs,
                        outputs, [sim.Step(n.name, n.op_type) for n in subgraph.nodes], low.fns,
                        np.array(em.regions, np.int64).reshape(-1, 2))
        if not timing_only:
            code.image, code.image_valid = low.image()
        return PimProgram(self, subgraph, code, rows, packed)

    # ---- artifacts (runtime/artifact.py) -------------------------------------------------
    #: bump when the meaning of a stored command, table or image changes
    ARTIFACT_ENCODING = 2

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        """The command list (64-byte records) in the blob; descriptors, I/O table, function table and
        per-step rows in the table; the bank image rows that hold data, the validity of their
        columns and the staging constants in the weight section (deduplicated by content)."""
        code: sim.Code = program.code
        meta: dict[str, Any] = {
            "encoding": self.ARTIFACT_ENCODING, "chip": self.device.chip.name, "timing": code.image is None,
            "ops": [n.op_type for n in subgraph.nodes], "rows": code.rows, "staging": code.staging_bytes,
            "descs": code.descs.tolist(), "fns": [[n, p] for n, p in code.fns], "step_rows": list(program.rows),
            "regions": code.regions.tolist(),
            "inputs": [[b.name, b.addr, b.dtype, list(b.shape)] for b in code.inputs],
            "outputs": [[b.name, b.addr, b.dtype, list(b.shape)] for b in code.outputs]}
        if code.image is not None:
            if weights is None:
                raise ArtifactError(f"PIM program on {self.name}: saving a bank image needs the artifact's weight "
                                    "writer")
            used = [r for r in range(code.rows) if code.image_valid[:, :, r].any()]
            meta["image"] = [[r, weights.add(np.ascontiguousarray(code.image[:, :, r]).tobytes()),
                              weights.add(np.packbits(code.image_valid[:, :, r]).tobytes())] for r in used]
            meta["consts"] = [[a, weights.add(bytes(raw)), len(raw)] for a, raw in code.consts]
        else:
            meta["consts"] = []
        return program.to_bytes(), meta

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        """Rebuild the program from the artifact alone: no planning, no layout, no graph values."""
        s: PimSpec = self.spec
        where = f"PIM program on {self.name}"
        if int(meta.get("encoding", 0)) != self.ARTIFACT_ENCODING:
            raise ArtifactError(f"{where}: stored in PIM encoding {meta.get('encoding')}, this kcompiler reads "
                                f"{self.ARTIFACT_ENCODING}", hint="recompile the model")
        ops = list(meta.get("ops", ()))
        if ops != [n.op_type for n in subgraph.nodes]:
            raise ArtifactError(f"{where}: its step table ({len(ops)} steps) does not match the subgraph's "
                                f"{len(subgraph.nodes)} nodes")
        if len(blob) % ENCODED_SIZE:
            raise ArtifactError(f"{where}: {len(blob)} bytes of commands is not a whole number of commands")
        try:
            cmds = decode_all(blob)
        except KeyError:
            raise ArtifactError(f"{where}: a command has an unknown opcode") from None
        if any(c.channel != HOST and c.channel >= s.channels for c in cmds) or any(
                c.step >= max(len(ops), 1) for c in cmds):
            raise ArtifactError(f"{where}: a command names a channel or step the program does not have")
        try:
            descs = np.array(meta["descs"], np.int64).reshape(-1, 12)
            bind = lambda t: [sim.Binding(str(n), int(a), int(d), tuple(int(x) for x in sh)) for n, a, d, sh in t]  # noqa: E731
            inputs, outputs = bind(meta["inputs"]), bind(meta["outputs"])
            rows, staging = int(meta["rows"]), int(meta["staging"])
            fns = [(str(n), float(p)) for n, p in meta["fns"]]
            regions = np.array(meta["regions"], np.int64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed program table ({exc})") from None
        timing_only = (options or {}).get("mode") == "timing" or bool(meta.get("timing"))
        image = valid = None
        consts = []
        if not timing_only:
            shape = (s.channels, s.banks_per_channel, rows, s.columns_per_row, s.simd_lanes)
            image = np.zeros(shape, np.uint16)
            valid = np.zeros(shape[:4], bool)
            per_row = s.channels * s.banks_per_channel * s.row_bytes
            vbits = s.channels * s.banks_per_channel * s.columns_per_row
            for r, off, voff in meta.get("image", ()):
                if not 0 <= r < rows:
                    raise ArtifactError(f"{where}: image row {r} outside the program's {rows} rows")
                image[:, :, r] = weights.map(off, per_row).view(np.uint16).reshape(shape[:2] + shape[3:])
                valid[:, :, r] = np.unpackbits(weights.map(voff, -(-vbits // 8)))[:vbits].reshape(
                    shape[:2] + shape[3:4]).astype(bool)
            consts = [(int(a), np.array(weights.map(off, n))) for a, off, n in meta.get("consts", ())]
        code = sim.Code(cmds, descs, image, valid, rows, staging, consts, inputs, outputs,
                        [sim.Step(n.name, n.op_type) for n in subgraph.nodes], fns, regions)
        return PimProgram(self, subgraph, code, [int(r) for r in meta.get("step_rows", [0] * len(ops))])


def _dtype_code(dt) -> int:
    return {ir.DataType.FLOAT: 0, ir.DataType.BFLOAT16: 1, ir.DataType.FLOAT16: 2,
            ir.DataType.INT64: 3, ir.DataType.INT32: 4}.get(dt, -1)


@dataclass
class _Buf:
    """A value in the staging area."""

    addr: int
    dtype: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def _broadcast_strides(src: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    st = _strides(src)
    pad = len(out) - len(src)
    return [0 if i < pad or src[i - pad] == 1 else st[i - pad] for i in range(len(out))]


def _merge(dims, *strides) -> tuple[list[int], list[list[int]]] | None:
    """Drop unit dims and merge neighbours that are contiguous in every stride list; None beyond 4 dims."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    d = [dims[i] for i in keep]
    ss = [[s[i] for i in keep] for s in strides]
    i = len(d) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * d[i + 1] for s in ss):
            d[i] *= d[i + 1]
            del d[i + 1]
            for s in ss:
                s[i] = s[i + 1]
                del s[i + 1]
        i -= 1
    if len(d) > 4:
        return None
    pad = 4 - len(d)
    return [1] * pad + d, [[0] * pad + s for s in ss]


def _resident(v: ir.Value | None, depth: int = 0) -> bool:
    """Whether a product's matrix operand is a device-resident KV cache (through layout views): the
    in-place append output of a Concat, or a state input."""
    if v is None or depth > 8:
        return False
    if v.is_graph_input() and v.metadata_props.get(STATE_KEY):
        return True
    n = v.producer()
    if n is None:
        return False
    if n.op_type == "Concat" and v.is_graph_output() and v.metadata_props.get(STATE_KEY) is not None:
        return True
    if n.op_type in LAYOUT_VIEWS and n.inputs:
        return _resident(n.inputs[0], depth + 1)
    return False


class _Lowering:
    """Turns placed nodes into commands over staging buffers (the planning side: may read the graph)."""

    def __init__(self, backend: PimBackend, em: kernels.Emitter, env: dict[str, _Buf], timing_only: bool):
        self.be = backend
        self.s: PimSpec = backend.spec
        self.em = em
        self.env = env
        self.timing_only = timing_only
        self.fns: list[tuple[str, float]] = []
        self.writes: list[tuple[np.ndarray, list[Command]]] = []  # constant matrices for the bank image
        self.dev = 1 if self.s.dtype == "bfloat16" else 2
        self.fp16 = self.s.dtype == "float16"

    # ---- buffers -------------------------------------------------------------------------
    def const(self, v: ir.Value) -> _Buf:
        # timing mode reads no tensor data: the constant's place is reserved from its shape
        c = None if self.timing_only else opinfo.const_value(v)
        code = _dtype_code(v.dtype) if v.dtype is not None else 0
        if code not in (0, 3, 4):
            code = 0  # other float constants are held as float32, as the host hands them over
        dt = sim.NP_DTYPES[code]
        shape = tuple(np.shape(c)) if c is not None else tuple(opinfo.shape_of(v) or ())
        if c is None:
            return _Buf(self.em.alloc(dt.itemsize * math.prod(shape)), code, shape)
        return _Buf(self.em.const(np.ascontiguousarray(np.asarray(c).astype(dt)).tobytes()), code, shape)

    def buf(self, v: ir.Value) -> _Buf:
        b = self.env.get(v.name)
        if b is None:
            if not opinfo.is_const(v):
                raise LoweringError(f"PIM: value '{v.name}' is used before it is computed")
            b = self.env[v.name] = self.const(v)
        return b

    def new(self, shape, dtype: int = 0) -> _Buf:
        return _Buf(self.em.alloc(sim.NP_DTYPES[dtype].itemsize * math.prod(shape)), dtype, tuple(shape))

    def hcopy(self, dst_addr: int, dst_dtype: int, src_addr: int, src_dtype: int, dims, sstr, dstr,
              reg: int = 0, flags: int = 0) -> None:
        m = _merge(list(dims), list(sstr), list(dstr))
        if m is None:
            raise LoweringError(f"PIM: a host copy of shape {list(dims)} has more than 4 strided dimensions")
        d, (ss, ds) = m
        self.em.emit("HCOPY", addr=dst_addr, dtype=dst_dtype, addr2=src_addr, dtype2=src_dtype,
                     desc=self.em.desc(*d, *ss, *ds), reg=reg, flags=flags)

    def copy(self, b: _Buf, dtype: int) -> _Buf:
        out = self.new(b.shape, dtype)
        self.hcopy(out.addr, dtype, b.addr, b.dtype, [b.numel], [1], [1])
        return out

    def zero(self, addr: int, n: int, dtype: int) -> None:
        self.em.emit("HZERO", addr=addr, length=n * sim.NP_DTYPES[dtype].itemsize)

    # ---- nodes ---------------------------------------------------------------------------
    def node(self, node: ir.Node, p: Plan) -> None:
        getattr(self, p.kind)(node, p)

    def view(self, node: ir.Node, p: Plan) -> None:
        x = self.buf(node.inputs[0])
        out = node.outputs[0]
        osh = tuple(opinfo.shape_of(out))
        op = node.op_type
        if op == "Transpose":
            perm = _perm(node, len(x.shape))
            st = _strides(x.shape)
            y = self.new(osh, x.dtype)
            self.hcopy(y.addr, y.dtype, x.addr, x.dtype, osh, [st[a] for a in perm], _strides(osh))
        elif op == "Expand":
            y = self.new(osh, x.dtype)
            self.hcopy(y.addr, y.dtype, x.addr, x.dtype, osh, _broadcast_strides(x.shape, osh), _strides(osh))
        else:  # a reshape: the same bytes under another shape
            y = _Buf(x.addr, x.dtype, osh)
        self.env[out.name] = y

    def _to_stream(self, src: _Buf, sl: kernels.StreamLayout, dst: int, reg: int = 0) -> None:
        """Row-major float32 -> per-channel padded blocks of the device dtype (scaled by 2**-sreg[reg])."""
        nf, rest = divmod(src.numel, sl.share)
        if nf:
            self.hcopy(dst, self.dev, src.addr, src.dtype, [nf, sl.share], [sl.share, 1], [sl.block, 1], reg=reg)
        if rest:
            self.hcopy(dst + nf * sl.block * 2, self.dev, src.addr + nf * sl.share * 4, src.dtype, [rest], [1], [1],
                       reg=reg)

    def _from_stream(self, src: int, sl: kernels.StreamLayout, dst: _Buf, reg: int = 0, flags: int = 0) -> None:
        nf, rest = divmod(dst.numel, sl.share)
        if nf:
            self.hcopy(dst.addr, 0, src, self.dev, [nf, sl.share], [sl.block, 1], [sl.share, 1], reg=reg,
                       flags=flags)
        if rest:
            self.hcopy(dst.addr + nf * sl.share * 4, 0, src + nf * sl.block * 2, self.dev, [rest], [1], [1], reg=reg,
                       flags=flags)

    def _stream_buf(self, sl: kernels.StreamLayout, numel: int) -> int:
        n = sl.channels * sl.block
        addr = self.em.alloc(2 * n)
        if n != numel:
            self.zero(addr, n, self.dev)  # the padding of the last columns
        return addr

    def elementwise(self, node: ir.Node, p: Plan) -> None:
        em, s = self.em, self.s
        out = node.outputs[0]
        osh = tuple(opinfo.shape_of(out))
        numel = math.prod(osh)
        sl = kernels.stream_layout(s, numel)
        op = node.op_type
        ins = [self.buf(v) for v in node.inputs if v is not None]
        # FP16 devices (HBM-PIM): per-tensor power-of-two scaling, as explicit host commands. HRANGE
        # takes the operands' largest magnitudes and sets shift registers so that operands, products
        # and FP16 partial sums stay below 2**15; HCOPY scales each operand by 2**-s on its way into
        # the banks and the result by 2**s on the way back. Scaling by 2**-s is exact in FP16 (only
        # values pushed below 2**-14 lose bits), unlike clamping, and needs no range known at
        # compile time, which activations do not have.
        regs, back, back_flags = [0] * len(ins), 0, 0
        if self.fp16 and op in EW_TABLE:
            rule = "add" if op == "Add" else "mul"
            em.emit("HRANGE", fn=sim.RANGE_RULES.index(rule), addr=ins[0].addr, length=ins[0].numel,
                    addr2=ins[1].addr, count=ins[1].numel, reg=1)
            regs, back, back_flags = [1, 2], 1, UP | (PAIR if op == "Mul" else 0)
        elif self.fp16 and op in HOMOGENEOUS:
            em.emit("HRANGE", fn=sim.RANGE_RULES.index("one"), addr=ins[0].addr, length=ins[0].numel, reg=1)
            regs, back, back_flags = [1], 1, UP
        rows = []
        for b, reg in zip(ins, regs):
            if b.numel != numel:  # broadcast on the host into a full-size operand first
                full = self.new(osh)
                self.hcopy(full.addr, 0, b.addr, b.dtype, osh, _broadcast_strides(b.shape, osh), _strides(osh))
                b = full
            st = self._stream_buf(sl, b.numel)
            self._to_stream(b, sl, st, reg)
            r = em.reserve_rows(sl.rows)
            em.block("stream", ("WR_BK", numel, 0, 0), (st,), (r,))
            rows.append(r)
        ry = em.reserve_rows(sl.rows)
        if op in EW_TABLE:
            em.block("stream", (EW_TABLE[op], numel, 0, 0), (), (rows[0], rows[1], ry))
        else:
            param = 0.0
            if op == "LeakyRelu":
                param = float(np.float32(_attr(node, "alpha", 0.01)))
            elif op == "Gelu":
                param = 1.0 if _attr(node, "approximate", "none") == "tanh" else 0.0
            fn = (op, param)
            if fn not in self.fns:
                self.fns.append(fn)
            em.block("stream", ("AF", numel, 0, self.fns.index(fn)), (), (rows[0], ry))
        yst = em.alloc(2 * sl.channels * sl.block)
        em.block("stream", ("RD_BK", numel, 0, 0), (yst,), (ry,))
        y = self.new(osh)
        self._from_stream(yst, sl, y, reg=back, flags=back_flags if back else 0)
        self.env[out.name] = y

    def append(self, node: ir.Node, p: Plan) -> None:
        """KV-cache append Concat(past, new) -> present: the host concatenates (the resident past is
        where it was); the new elements go into the banks (the timed in-place write) and the present
        value hands back what the banks hold (a resident read: no bus time)."""
        em = self.em
        out = node.outputs[0]
        osh = tuple(opinfo.shape_of(out))
        axis = _attr(node, "axis", 0) % len(osh)
        y = self.new(osh)
        inner = math.prod(osh[axis + 1:])
        outer = math.prod(osh[:axis])
        off = 0
        for v in node.inputs:
            b = self.buf(v)
            span = b.shape[axis] * inner
            state = v.is_graph_input() and v.metadata_props.get(STATE_KEY) == out.name
            src = b
            if not state:  # through the banks
                sl = kernels.stream_layout(self.s, b.numel)
                st = self._stream_buf(sl, b.numel)
                self._to_stream(b, sl, st)
                r = em.reserve_rows(sl.rows)
                em.block("stream", ("WR_BK", b.numel, 0, 0), (st,), (r,))
                back = em.alloc(2 * sl.channels * sl.block)
                em.block("stream", ("RD_BK", b.numel, RESIDENT, 0), (back,), (r,))
                src = self.new(b.shape)
                self._from_stream(back, sl, src)
            self.hcopy(y.addr + off * 4, 0, src.addr, src.dtype, [outer, span], [span, 1], [osh[axis] * inner, 1])
            off += span
        self.env[out.name] = y

    def matvec(self, node: ir.Node, p: Plan) -> None:
        em, s = self.em, self.s
        G, M, N, K = p.G, p.M, p.N, p.K
        out = node.outputs[0]
        osh = tuple(opinfo.shape_of(out))
        lay = kernels.matvec_layout(s, G, N, K)
        Kp, Np = lay.Kp, lay.Np
        a = self.buf(node.inputs[0])
        dot = s.mac_dataflow == "dot"
        x_dev = em.alloc(2 * G * M * Kp)
        base = em.reserve_rows(lay.rows)
        xreg = wreg = 0
        if p.const_weight:
            trans_b = node.op_type == "Gemm" and _attr(node, "transB", 0)
            sw, l1 = 0, 0.0
            if not self.timing_only:
                b = np.asarray(opinfo.const_value(node.inputs[1]), np.float32)
                w = b if trans_b else b.T  # [N, K]
                if self.fp16:
                    # the weight's shift is fixed with its bank image; the partial-sum bound it leaves
                    # (max_n sum_k |w| at that scale) goes into HRANGE, which shifts x at run time
                    sw = sim.shift_for(sim.amax(w))
                    l1 = float(np.max(np.sum(np.abs(w), axis=-1))) if w.size else 0.0
                    w = np.ldexp(w, -sw)
                self._const_matrix(w[None], lay, G, N, K, base)
            if self.fp16:
                em.emit("HRANGE", fn=sim.RANGE_RULES.index("matvec_const"), addr=a.addr, length=a.numel,
                        imm=float(np.float32(l1 * 2.0 ** -sw)), gb=sw, reg=1)
                xreg = 1
            if Kp != K:
                self.zero(x_dev, G * M * Kp, self.dev)
            self.hcopy(x_dev, self.dev, a.addr, a.dtype, [M, K], [K, 1], [Kp, 1], reg=xreg)
        else:
            bsrc = self.buf(node.inputs[1])
            batch = osh[:-2]
            xs = _broadcast_strides(a.shape, batch + (M, K))
            ws = _broadcast_strides(bsrc.shape, batch + (K, N))
            bstr = _strides(batch)
            w_dev = em.alloc(2 * G * (N * Kp if dot else K * Np))
            if (Kp if dot else Np) != (K if dot else N):
                self.zero(w_dev, G * (N * Kp if dot else K * Np), self.dev)
            wsrc, wsrc_dims, wsrc_str = bsrc, list(batch) + [N, K], ws[:-2] + [ws[-1], ws[-2]]
            if self.fp16:
                wf = self.new((G, N, K))
                self.hcopy(wf.addr, 0, bsrc.addr, bsrc.dtype, wsrc_dims, wsrc_str,
                           [b_ * N * K for b_ in bstr] + [K, 1])
                em.emit("HRANGE", fn=sim.RANGE_RULES.index("matvec"), addr=a.addr, length=a.numel, addr2=wf.addr,
                        count=wf.numel, col=K, reg=1)
                xreg, wreg = 1, 2
                wsrc, wsrc_dims, wsrc_str = wf, [G, N, K], [N * K, K, 1]
                bstr_w = [1]
            else:
                bstr_w = bstr
            if dot:  # [G, N, Kp]
                dstr = [b_ * N * Kp for b_ in bstr_w] + [Kp, 1]
            else:  # [G, K, Np]
                dstr = [b_ * K * Np for b_ in bstr_w] + [1, Np]
            self.hcopy(w_dev, self.dev, wsrc.addr, wsrc.dtype, wsrc_dims, wsrc_str, dstr, reg=wreg)
            resident = RESIDENT if _resident(node.inputs[1]) else 0
            em.block("weights", (G, N, K, resident), (w_dev,), (base,))
            if Kp != K:
                self.zero(x_dev, G * M * Kp, self.dev)
            self.hcopy(x_dev, self.dev, a.addr, a.dtype, list(batch) + [M, K], xs,
                       [b_ * M * Kp for b_ in bstr] + [Kp, 1], reg=xreg)
        part = em.alloc(kernels.partial_bytes(s, lay, M))
        em.block("matvec", (G, M, N, K), (x_dev, part), (base,))
        y = self.new((G, M, N))
        self.zero(y.addr, y.numel, 0)
        # the host adds the read-back partial sums in FP32
        em.block("partials", (G, M, N, K, 0 if s.accumulate_dtype == "float32" else 2), (part, y.addr))
        if xreg or wreg:
            self.hcopy(y.addr, 0, y.addr, 0, [y.numel], [1], [1], reg=1, flags=UP | PAIR)
        if node.op_type == "Gemm":
            alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
            if alpha != 1.0:
                em.emit("HMUL", addr=y.addr, length=y.numel, imm=float(np.float32(alpha)))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bsh = tuple(opinfo.shape_of(node.inputs[2]))
                cb = None if self.timing_only else (
                    beta * np.asarray(opinfo.const_value(node.inputs[2]), np.float32)).astype(np.float32)
                caddr = em.alloc(4 * math.prod(bsh)) if cb is None else em.const(np.ascontiguousarray(cb).tobytes())
                self.em.emit("HADD", addr=y.addr, addr2=caddr, dtype2=0,
                             desc=self._desc2((M, N), _broadcast_strides(bsh, (M, N)), [N, 1]))
        self.env[out.name] = _Buf(y.addr, 0, osh)

    def _desc2(self, dims, sstr, dstr) -> int:
        m = _merge(list(dims), list(sstr), list(dstr))
        d, (ss, ds) = m
        return self.em.desc(*d, *ss, *ds)

    def _const_matrix(self, w: np.ndarray, lay, G, N, K, base) -> None:
        """Lay a constant matrix [G, N, K] out in staging order and keep the WR_BK commands that put it
        into its bank columns: the compiler runs them into the image (they are not part of the program)."""
        s = self.s
        dt = sim.NP_DTYPES[self.dev]
        if s.mac_dataflow == "dot":
            buf = np.zeros((G, N, lay.Kp), dt)
            buf[:, :, :K] = w.astype(dt)
        else:
            buf = np.zeros((G, K, lay.Np), dt)
            buf[:, :, :N] = np.swapaxes(w, 1, 2).astype(dt)
        # the compiler's own descriptor table: these writes are not part of the program
        scratch = kernels.Emitter(s)
        cmds = kernels.emit_weight_writes(scratch, lay, G, N, K, 0, base)
        self.writes.append((buf.reshape(-1).view(np.uint16), cmds, np.array(scratch.descs, np.int64).reshape(-1, 12)))

    def image(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.s
        shape = (s.channels, s.banks_per_channel, self.em.rows, s.columns_per_row, s.simd_lanes)
        image = np.zeros(shape, np.uint16)
        valid = np.zeros(shape[:4], bool)
        for data, cmds, descs in self.writes:
            sim.write_image(s, image, valid, descs, cmds, data)
        return image, valid


class PimProgram(Program):
    """A PIM device's program: the command list, the bank image and the staging I/O table (sim.Code).

    ``commands`` and ``image`` are the live objects the simulator reads on every ``run`` (mutate them
    in place, then call ``invalidate`` to drop the fast path's cached grouping)."""

    def __init__(self, backend: PimBackend, sub: Subgraph, code: sim.Code, rows: list[int],
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
            self._code.commands = kernels.unpack(self._packed, self.spec, self._code.descs.tolist())
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
    def steps(self) -> list[tuple[ir.Node, kernels.Kernel]]:
        """Each node with the commands it owns (a fresh view of the command list)."""
        by: list[list[Command]] = [[] for _ in self.nodes]
        for c in self._packed if self._packed is not None else self.code.commands:
            if c.step < len(by):
                by[c.step].append(c)
        return [(n, kernels.Kernel(n.name, n.op_type, cs, r)) for n, cs, r in zip(self.nodes, by, self.rows)]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.timing_only:
            raise ExecutionError("this PIM program was compiled in timing mode and holds no bank image",
                                 hint="compile with mode='functional'")
        outs, self.last_counts = sim.execute(self.spec, self.code, dict(inputs), fast=self.fast)
        return {n: outs[n] for n in self.output_names}

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
