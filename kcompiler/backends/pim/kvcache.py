"""The device-resident KV cache (kcompiler.frontend.state): a state input stays in the banks between
decode steps, the new rows are appended in place (Concat(past, new) -> present), and a product
reading the cache as its matrix operand, through layout views, reads it where it is."""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Support, no
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.claims import FLOAT_TYPES, OpPlan, attr
from kcompiler.backends.pim.isa import RESIDENT
from kcompiler.backends.pim.kernels.stream import stream_layout
from kcompiler.backends.pim.lowering import Lowering
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.backends.pim.views import LAYOUT_VIEWS
from kcompiler.frontend.state import STATE_KEY


def is_resident(v: ir.Value | None, depth: int = 0) -> bool:
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
        return is_resident(n.inputs[0], depth + 1)
    return False


def claim_append(spec: PimSpec, node: ir.Node) -> OpPlan | Support:
    """KV-cache append: Concat(past, new) -> present, where past/present are device-resident state
    (frontend/state.py): the new rows are written into the banks in place."""
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
    return OpPlan("append", numel=new, streamed=len(node.inputs) - 1)


def lower_append(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """KV-cache append Concat(past, new) -> present: the host concatenates (the resident past is
    where it was); the new elements go into the banks (the timed in-place write) and the present
    value hands back what the banks hold (a resident read: no bus time)."""
    em = low.em
    out = node.outputs[0]
    osh = tuple(opinfo.shape_of(out))
    axis = attr(node, "axis", 0) % len(osh)
    # present keeps the resident past's format (a bf16 model's cache stays bf16 in staging): only the appended
    # rows, read back from the banks as float32, are converted
    past = next(low.buf(v) for v in node.inputs if v.is_graph_input() and v.metadata_props.get(STATE_KEY) == out.name)
    y = low.new(osh, past.dtype if past.dtype in (1, 2) else 0)
    size = sim.NP_DTYPES[y.dtype].itemsize
    inner = math.prod(osh[axis + 1:])
    outer = math.prod(osh[:axis])
    off = 0
    for v in node.inputs:
        b = low.buf(v)
        span = b.shape[axis] * inner
        state = v.is_graph_input() and v.metadata_props.get(STATE_KEY) == out.name
        src = b
        if not state:  # through the banks
            sl = stream_layout(low.s, b.numel)
            st = low.stream_buf(sl, b.numel)
            low.to_stream(b, sl, st)
            r = em.reserve_rows(sl.rows)
            em.block("stream", ("WR_BK", b.numel, 0, 0), (st,), (r,))
            back = em.alloc(2 * sl.channels * sl.block)
            em.block("stream", ("RD_BK", b.numel, RESIDENT, 0), (back,), (r,))
            src = low.new(b.shape)
            low.from_stream(back, sl, src)
        low.hcopy(y.addr + off * size, y.dtype, src.addr, src.dtype, [outer, span], [span, 1], [osh[axis] * inner, 1])
        off += span
    low.env[out.name] = y

