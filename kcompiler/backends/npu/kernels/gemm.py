"""GEMM-like ops on the systolic array: the ``GemmKernel`` base every one of them shares (the
work split over cores, the tiling, the fused epilogue, the ``emit.GemmDesc`` it emits from) and
the plain GEMMs, batched MatMul and ONNX Gemm. Convolutions subclass it in conv.py (implicit
GEMM) and depthwise.py (on the vector unit).

``GemmKernel(node, spec)`` builds the subclass that lowers the node (``lowering_of``), so the
backend's op table and the epilogue fusion check (passes/fusion/epilogue.py) need not know the
subclasses; each registers itself with ``lowers=``."""

from __future__ import annotations

import abc
import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import GemmDesc, emit_gemm, split_range
from kcompiler.backends.npu.kernels.attrs import IR_DTYPE, a_float, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout, contiguous
from kcompiler.backends.npu.kernels.common import Kernel, broadcast_operand
from kcompiler.backends.npu.tiler import ConvGeom, tile_gemm
from kcompiler.errors import LoweringError
from kcompiler.fused.epilogue import BASE_ARITY

#: epilogue step (passes/fusion/epilogue.py) -> vector function
EPILOGUE = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu", "gelu": "gelu",
            "gelu_tanh": "gelu_tanh", "hardswish": "hardswish", "leakyrelu": "leakyrelu",
            "hardsigmoid": "hardsigmoid", "clip": "clip", "add": "add", "mul": "mul"}
_TRANSCENDENTAL = {"sigmoid", "tanh", "silu", "gelu", "gelu_tanh"}


def _epilogue_work(steps: list[str]) -> float:
    """Vector-unit passes over the tile an epilogue costs (one for the bare store)."""
    return float(max(1, len(steps)))


def parse_epilogue_step(step: str) -> tuple[str, tuple[float, float, float]]:
    """(vector function, immediates) of one epilogue step 'name[:arg[:arg...]]'."""
    name, *args = step.split(":")
    vals = [float(a) for a in args] + [0.0] * (3 - len(args))
    return EPILOGUE[name], (vals[0], vals[1], vals[2])


# ---- which kernel lowers a GEMM-like node ----------------------------------------------------
def base_op(node: ir.Node) -> str:
    """The ONNX op a GEMM-like node computes: Conv, MatMul or Gemm (a fused node's base op)."""
    return node.op_type.removeprefix("Fused") if node.domain == "kcompiler" else node.op_type


#: inputs of the integer GEMMs (kernels/qgemm.py), all of them the base op's
QUANT_ARITY = {"QLinearConv": 9, "QLinearMatMul": 8, "QGemm": 9, "MatMulInteger": 4, "ConvInteger": 4}


def base_arity(op: str) -> int:
    """How many inputs of a GEMM-like node belong to its base op `op`; a fused node's further
    inputs are its epilogue's operands."""
    return BASE_ARITY[op] if op in BASE_ARITY else QUANT_ARITY[op]


def lowering_of(node: ir.Node) -> str:
    """The lowering a GEMM-like node gets: its base op, or DepthwiseConv for a conv of one input
    channel per group (more than one group), which runs on the vector unit."""
    op = base_op(node)
    if op == "Conv" and shape(node.inputs[1])[1] == 1 and a_int(node, "group", 1) > 1:
        return "DepthwiseConv"
    return op


#: lowering_of's answer -> the GemmKernel subclass registered for it (class ...(GemmKernel, lowers=...))
_LOWERINGS: dict[str, type[GemmKernel]] = {}


# ---- the shared base ----------------------------------------------------------------------------
class GemmKernel(Kernel, metaclass=abc.ABCMeta):
    """Conv (implicit GEMM), MatMul (batched) and Gemm on the systolic array (emit.GemmDesc).

    Subclasses say what the GEMM is (`_init_dims`: groups g, sizes m, k, n), how A, B and the
    output are read (`_views`), what the base op adds before a fused epilogue (`_base_steps`:
    a bias, Gemm's alpha and beta) and how an epilogue operand is read in the output's
    coordinates (`_operand_in_output`): the abstract methods every registered lowering defines."""

    kind = "gemm"
    #: a depthwise conv (depthwise.py) runs on the vector unit, not the array
    depthwise = False
    #: the input holding B (the weights): 1, or 3 for the QLinear ops (x, x_scale, x_zero_point, w, ...)
    w_index = 1

    def __new__(cls, node: ir.Node | None = None, spec=None):
        if cls is GemmKernel and node is not None:
            cls = _LOWERINGS[lowering_of(node)]
        return super().__new__(cls)

    def __init_subclass__(cls, lowers: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if lowers is not None:
            _LOWERINGS[lowers] = cls

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.conv: ConvGeom | None = None
        self.base = op = base_op(node)
        arity = base_arity(op)
        a = node.attributes.get("epilogue")
        self.steps: list[str] = [str(x) for x in a.value] if a is not None else []
        self.operands: list[ir.Value] = list(node.inputs[arity:]) if node.domain == "kcompiler" else []
        self.base_inputs = list(node.inputs[:arity])
        self._init_dims()
        self.per_core = self._split()
        out_shape = shape(self.out)
        #: epilogue operands of the output's size are streamed per output tile; smaller ones
        #: (biases) too, at their own size
        self.full_operands = [v for v in self.operands if opinfo.numel(v) == math.prod(out_shape)]

    @abc.abstractmethod
    def _init_dims(self) -> None:
        """Set g, m, k, n: the GEMM's groups and sizes."""

    # ---- work split and tiling ----
    def _split(self):
        """Per core: (g range, m range, n range)."""
        cores = self.spec.cores
        a = self.spec.array
        full = ((0, self.g), (0, self.m), (0, self.n))
        if cores == 1:
            return [full]
        split_m, split_n = self.m >= cores * a.rows, self.n >= cores * a.cols
        if split_m and split_n and self.m * self.k < self.k * self.n:
            # each core streams all of the operand the split does not cut: cut the larger
            # one (the weights of a GEMM with few rows) so it crosses DRAM once
            split_m = False
        if split_m:
            return [((0, self.g), r, (0, self.n)) for r in split_range(self.m, cores, a.rows)]
        if split_n:
            return [((0, self.g), (0, self.m), r) for r in split_range(self.n, cores, a.cols)]
        if self.g >= cores:
            return [(r, (0, self.m), (0, self.n)) for r in split_range(self.g, cores)]
        if self.m >= self.n:
            return [((0, self.g), r, (0, self.n)) for r in split_range(self.m, cores, 8)]
        return [((0, self.g), (0, self.m), r) for r in split_range(self.n, cores, 8)]

    def tiling(self, gr, mr, nr):
        out_b = opinfo.itemsize(self.out)
        return tile_gemm(self.spec, gr[1] - gr[0], mr[1] - mr[0], self.k, nr[1] - nr[0], self.conv,
                         True, len(self.full_operands), _epilogue_work(self.steps),
                         out_b if out_b != self.spec.elem_bytes else None)

    def _core_cycles(self, gr, mr, nr) -> int:
        """Estimated cycles of one core's share."""
        return self.tiling(gr, mr, nr).cycles

    def cost(self) -> Cost:
        cyc = 0
        for gr, mr, nr in self.per_core:
            cyc = max(cyc, self._core_cycles(gr, mr, nr))
        return Cost(cycles=cyc + self.spec.issue_cycles, macs=self.macs)

    # ---- emission ----
    def _base_steps(self, cg: Codegen) -> list[tuple[str, tuple, ir.Value | Layout | None]]:
        """The vector steps the base op itself adds before a fused epilogue (none for MatMul)."""
        return []

    def _step_list(self, cg: Codegen) -> list[tuple[str, tuple, ir.Value | Layout | None]]:
        """(vector function, immediates, operand) of the epilogue, the base op's own bias first."""
        out = self._base_steps(cg)
        operands = iter(self.operands)
        for s in self.steps:
            fn, imms = parse_epilogue_step(s)
            out.append((fn, imms, next(operands) if fn in ("add", "mul") else None))
        return out

    def emit(self, cg: Codegen, op: int) -> None:
        desc = self.desc(cg)
        cg.extend(emit_gemm(desc, op, self.spec.sram_bytes))

    def desc(self, cg: Codegen) -> GemmDesc:
        node = self.node
        a_v, b_v = node.inputs[0], node.inputs[self.w_index]
        A, B, Y = cg.layout(a_v), cg.layout(b_v), cg.layout(self.out)
        if A.dtype != B.dtype and not (A.dtype in isa.INT_DTYPES and B.dtype in isa.INT_DTYPES):
            raise LoweringError(f"'{node.name}': A is {A.dtype} and B {B.dtype}")
        a, b, out, conv = self._views(A, B, Y)
        steps = []
        for fn, imms, operand in self._step_list(cg):
            if isinstance(operand, list):  # a step reading several operands (requant's tables)
                view = tuple(self._operand_view(cg, o, Y) for o in operand)
            else:
                view = None if operand is None else self._operand_view(cg, operand, Y)
            steps.append((fn, float(imms[0]), float(imms[1]), float(imms[2]), view))
        cores = []
        for gr, mr, nr in self.per_core:
            t = self.tiling(gr, mr, nr)
            tk = t.tk
            if conv is not None and tk % (conv[0] * conv[1]) and tk != self.k:
                raise LoweringError(f"'{node.name}': a K tile of {tk} is not whole channels")
            cores.append((gr[0], gr[1], mr[0], mr[1], nr[0], nr[1], t.tm, t.tn, tk, 0 if t.order == "mnk" else 1))
        return GemmDesc(A.dtype, Y.dtype, self.g, self.m, self.n, self.k, a, b, out, conv, tuple(cores), tuple(steps),
                        *self._int_fields(B))

    def _int_fields(self, B: Layout) -> tuple:
        """(b_dtype, pad) of the desc: those of an integer GEMM (qgemm.py); a float one has none."""
        return ()

    @abc.abstractmethod
    def _views(self, A: Layout, B: Layout, Y: Layout):
        """(A view, B view, output view, conv window or None) of the desc."""

    def _operand_view(self, cg: Codegen, v, Y: Layout):
        """An epilogue operand read in the output's (g, m, n) coordinates: (buf, per-group offsets,
        dtype, s_m, s_n, s_img)."""
        lay = v if isinstance(v, Layout) else cg.layout(v)
        y_sh = Y.shape
        if isinstance(v, ir.Value) and opinfo.numel(v) == math.prod(y_sh) and tuple(lay.shape) != tuple(y_sh):
            if not lay.is_contiguous():
                raise LoweringError(f"'{self.node.name}': a reshaped epilogue operand must be contiguous")
            lay = Layout(lay.buf, lay.off, lay.dtype, y_sh, contiguous(y_sh))
        st = broadcast_operand(lay, y_sh).strides
        return self._operand_in_output(lay, st, y_sh)

    @abc.abstractmethod
    def _operand_in_output(self, lay: Layout, st: tuple[int, ...], y_sh: tuple[int, ...]):
        """`_operand_view` of `lay`, broadcast to the output with element strides `st`."""

    def _rows_operand(self, lay: Layout, st: tuple[int, ...], y_sh: tuple[int, ...]):
        """An epilogue operand of a GEMM whose output's leading dims are its M rows."""
        lead = st[:-1]
        rows = y_sh[:-1]
        # the folded M dims must read the operand as one strided dim: row m = sum(i_d * prod(rows[d+1:]))
        # is at m * s_m, so every dim longer than 1 has stride s_m * prod(rows[d+1:]) (dims of length
        # 1 never move, whatever their stride)
        live = [d for d in range(len(lead)) if rows[d] > 1]
        s_m = lead[live[-1]] if live else 0
        for d in live:
            if lead[d] != s_m * math.prod(rows[d + 1:]):
                raise LoweringError(f"'{self.node.name}': an epilogue operand's rows are not one strided dim")
        return (lay.buf, (lay.off,), lay.dtype, s_m, st[-1], 0)


def epilogue_fits(k: GemmKernel, full_operands: int) -> bool:
    """Whether every core's share of the GEMM `k` still has a tiling that fits the scratchpad
    with `full_operands` output-sized epilogue operands streamed alongside."""
    if k.depthwise:
        return True
    return all(tile_gemm(k.spec, gr[1] - gr[0], mr[1] - mr[0], k.k, nr[1] - nr[0], k.conv, True,
                         full_operands).fits for gr, mr, nr in k.per_core)


# ---- the plain GEMMs ----------------------------------------------------------------------------
class MatMulKernel(GemmKernel, lowers="MatMul"):
    """MatMul: batched over the output's leading dims, or, with a 2-D B, A's leading dims folded
    into M (one GEMM)."""

    def _init_dims(self):
        node = self.node
        self.fold_m = False
        a, b = shape(node.inputs[0]), shape(node.inputs[self.w_index])
        self.m, self.k, self.n = a[-2], a[-1], b[-1]
        if len(b) == 2:
            self.g = 1
            self.m = math.prod(a[:-1])
            self.fold_m = True
        else:
            self.g = math.prod(shape(self.out)[:-2])

    def _views(self, A: Layout, B: Layout, Y: Layout):
        a, b, out = self._matmul_views(A, B, Y)
        return a, b, out, None

    def _matmul_views(self, A: Layout, B: Layout, Y: Layout):
        a_sh, b_sh, y_sh = A.shape, B.shape, Y.shape
        if self.fold_m:
            # A's leading dims fold into M when its layout (and the output's) allow it
            lead_ok = all(A.strides[d] == A.strides[d + 1] * a_sh[d + 1] for d in range(len(a_sh) - 2)) and all(
                Y.strides[d] == Y.strides[d + 1] * y_sh[d + 1] for d in range(len(y_sh) - 2))
            if lead_ok:
                return ((A.buf, (A.off,), A.strides[-2], A.strides[-1]), (B.buf, (B.off,), B.strides[0], B.strides[1]),
                        (Y.buf, (Y.off,), Y.strides[-2], Y.strides[-1], 0))
            raise LoweringError(f"'{self.node.name}': A's leading dims are not stored as one")
        batch = y_sh[:-2]
        a_b = broadcast_operand(Layout(A.buf, A.off, A.dtype, a_sh[:-2], A.strides[:-2]), batch).strides \
            if len(a_sh) > 2 else (0,) * len(batch)
        b_b = broadcast_operand(Layout(B.buf, B.off, B.dtype, b_sh[:-2], B.strides[:-2]), batch).strides \
            if len(b_sh) > 2 else (0,) * len(batch)
        offs_a, offs_b, offs_y = [], [], []
        for idx in np.ndindex(*batch):
            offs_a.append(A.off + sum(i * s for i, s in zip(idx, a_b)) * A.esize)
            offs_b.append(B.off + sum(i * s for i, s in zip(idx, b_b)) * B.esize)
            offs_y.append(Y.off + sum(i * s for i, s in zip(idx, Y.strides[:-2])) * Y.esize)
        return ((A.buf, tuple(offs_a), A.strides[-2], A.strides[-1]), (B.buf, tuple(offs_b), B.strides[-2],
                                                                       B.strides[-1]),
                (Y.buf, tuple(offs_y), Y.strides[-2], Y.strides[-1], 0))

    def _operand_in_output(self, lay, st, y_sh):
        if self.fold_m:
            return self._rows_operand(lay, st, y_sh)
        batch = y_sh[:-2]
        e = lay.esize
        offs = tuple(lay.off + sum(i * s for i, s in zip(idx, st[:-2])) * e for idx in np.ndindex(*batch))
        return (lay.buf, offs, lay.dtype, st[-2], st[-1], 0)


class GemmOpKernel(GemmKernel, lowers="Gemm"):
    """ONNX Gemm: alpha * A' B' + beta * C, A and B read transposed as transA / transB say; alpha
    and beta * C are vector steps ahead of a fused epilogue."""

    def _init_dims(self):
        node = self.node
        a, b = shape(node.inputs[0]), shape(node.inputs[self.w_index])
        ta, tb = a_int(node, "transA", 0), a_int(node, "transB", 0)
        self.g = 1
        self.m, self.k = (a[1], a[0]) if ta else (a[0], a[1])
        self.n = b[0] if tb else b[1]

    def _views(self, A: Layout, B: Layout, Y: Layout):
        node = self.node
        ta, tb = a_int(node, "transA", 0), a_int(node, "transB", 0)
        sa, sb = A.strides, B.strides
        a = (A.buf, (A.off,), sa[1] if ta else sa[0], sa[0] if ta else sa[1])
        b = (B.buf, (B.off,), sb[1] if tb else sb[0], sb[0] if tb else sb[1])
        out = (Y.buf, (Y.off,), Y.strides[0], Y.strides[1], 0)
        return a, b, out, None

    def _base_steps(self, cg):
        node = self.node
        out = []
        alpha, beta = a_float(node, "alpha", 1.0), a_float(node, "beta", 1.0)
        c = self.base_inputs[2] if len(self.base_inputs) > 2 else None
        if alpha != 1.0:
            out.append(("scale", (alpha, 0.0, 0.0), None))
        if c is not None and beta != 0.0:
            if beta == 1.0:
                out.append(("add", (0.0, 0.0, 0.0), c))
            elif opinfo.is_const(c):
                lay = cg.const(f"{node.name}/beta_c", IR_DTYPE[c.dtype], shape(c),
                               lambda: np.asarray(opinfo.const_value(c), np.float64) * beta)
                out.append(("add", (0.0, 0.0, 0.0), lay))
            else:
                out.append(("axpy", (beta, 0.0, 0.0), c))
        return out

    def _operand_in_output(self, lay, st, y_sh):
        return self._rows_operand(lay, st, y_sh)
