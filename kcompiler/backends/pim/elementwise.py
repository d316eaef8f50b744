"""Element-wise ops on the banks: Add and Mul (EWADD, EWMUL) and the activation-function unit (AF),
each over element streams spread across the channels (kernels/stream.py). Their claims and lowering.

FP16 devices (HBM-PIM) scale operands by powers of two on the host (HRANGE, then HCOPY through
shift registers) so that operands, products and partial sums stay in range."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Support, no
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.claims import Operands, OpPlan, attr
from kcompiler.backends.pim.geometry import broadcast_strides, merge_dims, row_major_strides
from kcompiler.backends.pim.isa import PAIR, UP
from kcompiler.backends.pim.kernels.stream import StreamLayout, stream_layout
from kcompiler.backends.pim.lowering import Buf, Lowering
from kcompiler.backends.pim.spec import PimSpec

#: activation functions with f(c x) = c f(x) for c > 0: exact under a power-of-two operand scale
HOMOGENEOUS = ("Relu", "LeakyRelu")
#: the activation-function unit: ONNX op -> its parameter (index into sim.AF_FUNCS by name)
AF_TABLE = tuple(sim.AF_FUNCS)
#: the two-operand element-wise ops: ONNX op -> the bank command
EW_TABLE = {"Add": "EWADD", "Mul": "EWMUL"}


def claim_binary(spec: PimSpec, node: ir.Node, ops: Operands) -> OpPlan | Support:
    """Add or Mul of operands the host can broadcast, within FP16's range on an FP16 device."""
    ins, shapes, out = ops.values, ops.shapes, ops.out
    numel = math.prod(out)
    if numel == 0:
        return no("empty tensor")
    if spec.dtype == "float16":
        # a constant operand is scaled by one power of two with the streamed one; beyond FP16's
        # range (an additive mask of -3.4e38) it would flush the other operand to zero
        for v, sh in zip(ins, shapes):
            if opinfo.is_const(v) and sh is not None and math.prod(sh) <= 1 << 20:
                c = opinfo.const_value(v)
                if c is not None and c.size and not np.all(np.abs(c.astype(np.float64)) <= 65504.0):
                    return no(f"constant operand '{v.name}' exceeds the FP16 range (e.g. a -inf mask)")
    for sh in shapes:
        if sh is not None and math.prod(sh) != numel and merge_dims(
                list(out), broadcast_strides(tuple(sh), tuple(out)), row_major_strides(out)) is None:
            return no("an operand broadcasts over more than 4 strided dimensions (the host copy takes 4)")
    return OpPlan("elementwise", numel=numel, streamed=sum(1 for v in ins if v is not None and not opinfo.is_const(v)))


def claim_activation(spec: PimSpec, node: ir.Node, ops: Operands) -> OpPlan | Support:
    """An activation function the device's AF unit has."""
    op = node.op_type
    if op not in spec.activation_functions:
        return no(f"the activation-function unit has no {op} (it has {', '.join(spec.activation_functions)})")
    if op == "Gelu" and attr(node, "approximate", "none") not in ("none", "tanh"):
        return no("unknown Gelu approximation")
    return OpPlan("elementwise", numel=math.prod(ops.out), streamed=1)


def lower_binary(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """Add or Mul: both operands written into the banks, EWADD / EWMUL, the result read back."""
    em = low.em
    op = node.op_type
    ins, osh, sl = _operands(low, node)
    regs, back, back_flags = [0] * len(ins), 0, 0
    if low.fp16:  # power-of-two operand scaling: _write_operands says how
        rule = "add" if op == "Add" else "mul"
        em.emit("HRANGE", fn=sim.RANGE_RULES.index(rule), addr=ins[0].addr, length=ins[0].numel,
                addr2=ins[1].addr, count=ins[1].numel, reg=1)
        regs, back, back_flags = [1, 2], 1, UP | (PAIR if op == "Mul" else 0)
    rows = _write_operands(low, ins, regs, osh, sl)
    ry = em.reserve_rows(sl.rows)
    em.block("stream", (EW_TABLE[op], math.prod(osh), 0, 0), (), (rows[0], rows[1], ry))
    _read_result(low, node, osh, sl, ry, back, back_flags)


#: an activation function's parameter (0.0 for those without one)
AF_PARAMS = {
    "LeakyRelu": lambda node: float(np.float32(attr(node, "alpha", 0.01))),
    "Gelu": lambda node: 1.0 if attr(node, "approximate", "none") == "tanh" else 0.0,
}


def lower_activation(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """An activation function: its operand written into the banks, AF, the result read back."""
    em = low.em
    op = node.op_type
    ins, osh, sl = _operands(low, node)
    regs, back, back_flags = [0] * len(ins), 0, 0
    if low.fp16 and op in HOMOGENEOUS:
        em.emit("HRANGE", fn=sim.RANGE_RULES.index("one"), addr=ins[0].addr, length=ins[0].numel, reg=1)
        regs, back, back_flags = [1], 1, UP
    rows = _write_operands(low, ins, regs, osh, sl)
    ry = em.reserve_rows(sl.rows)
    param = AF_PARAMS[op](node) if op in AF_PARAMS else 0.0
    fn = (op, param)
    if fn not in low.fns:
        low.fns.append(fn)
    em.block("stream", ("AF", math.prod(osh), 0, low.fns.index(fn)), (), (rows[0], ry))
    _read_result(low, node, osh, sl, ry, back, back_flags)


def _operands(low: Lowering, node: ir.Node) -> tuple[list[Buf], tuple[int, ...], StreamLayout]:
    """The node's operand buffers, its output shape, and the stream layout of its output."""
    osh = tuple(opinfo.shape_of(node.outputs[0]))
    sl = stream_layout(low.s, math.prod(osh))
    return [low.buf(v) for v in node.inputs if v is not None], osh, sl


def _write_operands(low: Lowering, ins: list[Buf], regs: list[int], osh: tuple[int, ...],
                    sl: StreamLayout) -> list[int]:
    """Each operand broadcast to full size, converted into the stream layout and written into the banks;
    the first rows of each.

    FP16 devices (HBM-PIM): per-tensor power-of-two scaling, as explicit host commands. HRANGE
    takes the operands' largest magnitudes and sets shift registers so that operands, products
    and FP16 partial sums stay below 2**15; HCOPY scales each operand by 2**-s on its way into
    the banks (through `regs`) and the result by 2**s on the way back. Scaling by 2**-s is exact in
    FP16 (only values pushed below 2**-14 lose bits), unlike clamping, and needs no range known at
    compile time, which activations do not have."""
    em = low.em
    numel = math.prod(osh)
    rows = []
    for b, reg in zip(ins, regs):
        if b.numel != numel:  # broadcast on the host into a full-size operand first
            full = low.new(osh)
            low.hcopy(full.addr, 0, b.addr, b.dtype, osh, broadcast_strides(b.shape, osh), row_major_strides(osh))
            b = full
        st = low.stream_buf(sl, b.numel)
        low.to_stream(b, sl, st, reg)
        r = em.reserve_rows(sl.rows)
        em.block("stream", ("WR_BK", numel, 0, 0), (st,), (r,))
        rows.append(r)
    return rows


def _read_result(low: Lowering, node: ir.Node, osh: tuple[int, ...], sl: StreamLayout, ry: int, back: int,
                 back_flags: int) -> None:
    """The result read back from rows `ry` into a float32 buffer (scaled back through register `back`)."""
    em = low.em
    yst = em.alloc(2 * sl.channels * sl.block)
    em.block("stream", ("RD_BK", math.prod(osh), 0, 0), (yst,), (ry,))
    y = low.new(osh)
    low.from_stream(yst, sl, y, reg=back, flags=back_flags if back else 0)
    low.env[node.outputs[0].name] = y
