"""Masks, indices and integers on the vector unit, exactly: comparisons, boolean logic, Where, Cast
between any two dtypes the NPU holds, integer arithmetic and shifts, ArgMax / ArgMin and Trilu.

Exported models build attention masks, position ids and causal triangles from these ops on int64
and bool tensors. Computed in float32 an int64 id beyond 2^24 would change, so each lowers to one
of the vector unit's exact functions (sim/maskvec.py), which compute in the operands' own dtype.
A bool lives in memory as one byte, 0 or 1.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.npu.isa import DTYPE_BYTES
from kcompiler.backends.npu.kernels.attrs import IR_DTYPE, a_int, a_str, shape
from kcompiler.backends.npu.kernels.common import broadcast_operand, reduced_operand
from kcompiler.backends.npu.kernels.vector import VectorKernel

BOOL = ir.DataType.BOOL
FP8 = ("f8e4m3", "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz")
#: op -> exact vector function
COMPARE = {"Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le", "GreaterOrEqual": "ge"}
LOGIC = {"And": "and", "Or": "or", "Xor": "xor", "Not": "not"}
INT_OPS = {"Add": "int_add", "Sub": "int_sub", "Mul": "int_mul", "Div": "int_div", "Max": "int_max",
           "Min": "int_min", "Neg": "int_neg", "Abs": "int_abs", "Mod": "mod"}


class ExactKernel(VectorKernel):
    """An op of the exact functions: it streams every input whatever its dtype, and its estimate charges
    the chip's rate for the dtype class it computes in (npu.vector.dtypes: an int64 op may cost more)."""

    def __init__(self, node, spec):
        self.work_per_elem = spec.vector.dtypes.get(dtype_class(node), 1.0)
        super().__init__(node, spec)

    def stream_inputs(self):
        return [v for v in self.node.inputs if v is not None]

    def dram_bytes(self) -> int:
        """The bytes it moves, each value at its own dtype's size (a bool is one byte)."""
        vals = [v for v in (*self.node.inputs, *self.node.outputs) if v is not None and IR_DTYPE.get(v.dtype)]
        return int(sum(opinfo.numel(v) * DTYPE_BYTES[IR_DTYPE[v.dtype]] for v in vals))


class CompareKernel(ExactKernel):
    def __init__(self, node, spec):
        self.fn = COMPARE[node.op_type]
        super().__init__(node, spec)


class LogicKernel(ExactKernel):
    def __init__(self, node, spec):
        self.fn = LOGIC[node.op_type]
        super().__init__(node, spec)


class WhereKernel(ExactKernel):
    fn = "where"


class IntKernel(ExactKernel):
    """Integer Add/Sub/Mul/Div/Max/Min/Neg/Abs, Mod (integer or float, ONNX's fmod in arg) and BitShift."""

    def __init__(self, node, spec):
        if node.op_type == "BitShift":
            self.fn = "shl" if _direction(node) == "LEFT" else "shr"
        else:
            self.fn = INT_OPS[node.op_type]
        super().__init__(node, spec)

    def body(self, t):
        arg = a_int(self.node, "fmod", 0) if self.fn == "mod" else 0
        return [t.vec(self.fn, t.dst, t.src, arg=arg)]


def _direction(node) -> str:
    """BitShift's direction attribute, upper case."""
    return a_str(node, "direction", "").upper()


class ExactCastKernel(ExactKernel):
    """Cast / CastLike with an integer, bool or FP8 side: the exact conversion (saturating to FP8 by
    the saturate attribute; to bool, nonzero)."""

    fn = "cast"

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def body(self, t):
        out = self.out
        sat = 1.0 if IR_DTYPE.get(out.dtype) in FP8 and a_int(self.node, "saturate", 1) else 0.0
        return [t.vec("cast", t.dst, t.src[:1], (sat, 0.0, 0.0), arg=int(out.dtype == BOOL))]


class ArgKernel(ExactKernel):
    """ArgMax / ArgMin along one axis: int64 indices (the first of equal values, or the last with
    select_last_index)."""

    def __init__(self, node, spec):
        self.fn = "argmax" if node.op_type == "ArgMax" else "argmin"
        super().__init__(node, spec)

    def iteration_space(self):
        return shape(self.node.inputs[0])

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def reduced_axes(self):
        return {a_int(self.node, "axis", 0) % len(self.space)}

    def result(self, cg):
        return reduced_operand(cg, self.out, self.reduced_axes(), bool(a_int(self.node, "keepdims", 1)), len(self.space))

    def body(self, t):
        return [t.vec(self.fn, t.dst, t.src[:1], arg=a_int(self.node, "select_last_index", 0))]


class TriluKernel(ExactKernel):
    """Trilu: the input kept on one side of the k-th diagonal of its last two dims, zero elsewhere. The
    offset k (an int64 input, or 0) is read by the vector unit, so a runtime k needs no recompile; each
    tile's first row and column are the instruction's immediates."""

    fn = "trilu"

    def separate_dims(self):
        r = len(self.space)
        return {r - 2, r - 1}

    def pick_axis(self):
        for ax, d in enumerate(self.space[:-1]):  # (never the columns while rows remain)
            if d > 1:
                return ax
        return -1

    def operands(self, cg):
        n = self.node
        x = broadcast_operand(cg.layout(n.inputs[0]), self.space)
        if len(n.inputs) > 1 and n.inputs[1] is not None:
            k = cg.layout(n.inputs[1])
        else:
            k = cg.const(f"{n.name}/k", "i64", (1,), lambda: np.zeros(1, np.int64))
        return [x, broadcast_operand(k, self.space)]

    def stream_inputs(self):
        return [v for v in self.node.inputs[:2] if v is not None]

    def body(self, t):
        r = len(self.space)
        row0, col0 = (t.origin[r - 2], t.origin[r - 1]) if t.origin else (0, 0)
        return [t.vec("trilu", t.dst, t.src[:2], (float(row0), float(col0), 0.0), arg=a_int(self.node, "upper", 1))]


def exact_dtypes_ok(node: ir.Node, vector_dtypes) -> str | None:
    """Why the exact kernels cannot run `node` (None: they can): every value's dtype held in NPU memory,
    and the chip's vector unit computing the dtype class the op needs (npu.vector.dtypes)."""
    vals = [v for v in (*node.inputs, *node.outputs[:1]) if v is not None]
    for v in vals:
        if IR_DTYPE.get(v.dtype) is None:
            return f"'{v.name}' has dtype {v.dtype}, which the NPU does not hold"
        if shape(v) is None:
            return f"'{v.name}' has no static shape"
        if math.prod(shape(v)) == 0:
            return f"'{v.name}' is empty"
    need = dtype_class(node)
    if need not in vector_dtypes:
        return f"the chip's vector unit does not compute {need} (npu.vector.dtypes lists {sorted(vector_dtypes)})"
    return None


def dtype_class(node: ir.Node) -> str:
    """The dtype class ('i64', 'f32' or 'i32') the exact function of `node` computes in: int64 if any of
    its values is 64-bit, else float32 if any is a float, else int32 (integers and bools), as
    sim/maskvec.compute_dtype says of the instruction."""
    vals = [v for v in (*node.inputs, *node.outputs[:1]) if v is not None]
    if any(v.dtype in (ir.DataType.INT64, ir.DataType.UINT64) for v in vals):
        return "i64"
    return "f32" if any(IR_DTYPE.get(v.dtype, "f")[0] == "f" for v in vals) else "i32"
