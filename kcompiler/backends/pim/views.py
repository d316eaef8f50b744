"""Layout views: ops that only reinterpret a tensor (a reshape), or that are free as the layout in
which a product's matrix operand (a resident KV cache) is stored and read (a transpose of the last
two axes, a broadcast). Their claim and their lowering (host copies into the view's layout)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Support, no
from kcompiler.backends.pim.claims import FLOAT_TYPES, OpPlan
from kcompiler.backends.pim.geometry import broadcast_strides, merge_dims, row_major_strides
from kcompiler.backends.pim.lowering import Buf, Lowering
from kcompiler.backends.pim.spec import PimSpec

#: ops that only reinterpret a tensor's shape: free wherever its data sits (bank layout or read-back buffer)
RESHAPES = opinfo.RESHAPES + ("Identity",)
#: what may sit between a resident KV cache and the product reading it as its matrix operand
LAYOUT_VIEWS = RESHAPES + ("Transpose", "Expand")


def feeds_matrix_operand(v: ir.Value, depth: int = 0) -> tuple[bool, int]:
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
            ok, f = feeds_matrix_operand(n.outputs[0], depth + 1)
            if not ok:
                return False, 0
            flips.add(f ^ (1 if n.op_type == "Transpose" and swaps_last_two(n) else 0))
        else:
            return False, 0
    if len(flips) != 1:
        return False, 0
    return True, flips.pop()


def perm(node: ir.Node, rank: int) -> list[int]:
    """A Transpose's permutation (reversed axes when it has none)."""
    a = node.attributes.get("perm")
    return list(a.as_ints()) if a is not None else list(range(rank))[::-1]


def swaps_last_two(node: ir.Node) -> bool:
    sh = opinfo.shape_of(node.inputs[0])
    if sh is None or len(sh) < 2:
        return False
    r = len(sh)
    return perm(node, r) == list(range(r - 2)) + [r - 1, r - 2]


def moves_only_unit_axes(node: ir.Node) -> bool:
    """A transpose that keeps the order of the axes longer than one is a reshape."""
    sh = opinfo.shape_of(node.inputs[0])
    if sh is None:
        return False
    kept = [a for a in perm(node, len(sh)) if sh[a] != 1]
    return kept == sorted(kept)


def claim_view(spec: PimSpec, node: ir.Node) -> OpPlan | Support:
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
        return OpPlan("view")
    if op == "Transpose" and moves_only_unit_axes(node):
        return OpPlan("view")
    ok, _ = feeds_matrix_operand(node.outputs[0])
    if ok and (op == "Expand" or swaps_last_two(node)):
        xs, ys = tuple(opinfo.shape_of(x)), tuple(opinfo.shape_of(node.outputs[0]))
        src = broadcast_strides(xs, ys) if op == "Expand" else [row_major_strides(xs)[a] for a in perm(node, len(xs))]
        if merge_dims(list(ys), src, row_major_strides(ys)) is None:
            return no(f"{op} of more than 4 strided dimensions (the host copy takes 4)")
        return OpPlan("view")
    return no(f"{op} moves data; PIM only reads a product's matrix operand in a transposed or broadcast layout")


def lower_view(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """A transpose or broadcast is a host copy into the view's layout; a reshape the same bytes."""
    x = low.buf(node.inputs[0])
    out = node.outputs[0]
    osh = tuple(opinfo.shape_of(out))
    op = node.op_type
    if op == "Transpose":
        axes = perm(node, len(x.shape))
        st = row_major_strides(x.shape)
        y = low.new(osh, x.dtype)
        low.hcopy(y.addr, y.dtype, x.addr, x.dtype, osh, [st[a] for a in axes], row_major_strides(osh))
    elif op == "Expand":
        y = low.new(osh, x.dtype)
        low.hcopy(y.addr, y.dtype, x.addr, x.dtype, osh, broadcast_strides(x.shape, osh), row_major_strides(osh))
    else:  # a reshape: the same bytes under another shape
        y = Buf(x.addr, x.dtype, osh)
    low.env[out.name] = y
