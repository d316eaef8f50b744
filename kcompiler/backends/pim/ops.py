"""The ops the PIM runs: op type -> how it is claimed and how it is lowered.

A table, not an if/elif chain over op types (like kcompiler/targets/kinds.py for chip kinds):
adding an op is one row, its claim and lowering living with their family (products.py,
elementwise.py, views.py, kvcache.py). A claim returns the node's OpPlan or why the PIM does
not run it; the lowering turns the planned node into commands through a Lowering context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_ir as ir

from kcompiler.backends.base import Support, no
from kcompiler.backends.pim.claims import Claim, Operands, OpPlan, computing
from kcompiler.backends.pim.elementwise import (AF_TABLE, EW_TABLE, claim_activation, claim_binary, lower_activation,
                                                lower_binary)
from kcompiler.backends.pim.kvcache import claim_append, lower_append
from kcompiler.backends.pim.lowering import Lowering
from kcompiler.backends.pim.products import claim_gemm, claim_matmul, lower_matvec
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.backends.pim.views import LAYOUT_VIEWS, claim_view, lower_view


@dataclass(frozen=True)
class PimOp:
    """How the PIM runs one op type."""

    claim: Claim
    lower: Callable[[Lowering, ir.Node, OpPlan], None]


OPS: dict[str, PimOp] = {
    **{op: PimOp(claim_view, lower_view) for op in LAYOUT_VIEWS},
    "Concat": PimOp(claim_append, lower_append),  # only the in-place append to a resident KV cache
    "MatMul": PimOp(computing(claim_matmul), lower_matvec),
    "Gemm": PimOp(computing(claim_gemm), lower_matvec),
    **{op: PimOp(computing(claim_binary), lower_binary) for op in EW_TABLE},
    **{op: PimOp(computing(claim_activation), lower_activation) for op in AF_TABLE},
}


def _not_a_pim_op(spec: PimSpec, node: ir.Node, ops: Operands) -> Support:
    return no(f"{node.op_type} is not a PIM operation (GEMV-like MatMul/Gemm, Add, Mul, activation functions)")


def plan(spec: PimSpec, node: ir.Node) -> OpPlan | Support:
    """What `node` is on the PIM, or why the PIM does not run it."""
    if node.domain not in ("", "ai.onnx"):
        return no(f"custom-domain op {node.domain}::{node.op_type}")
    entry = OPS.get(node.op_type)
    # an op outside the table is refused after the operand checks, which say why first when they fail
    return entry.claim(spec, node) if entry is not None else computing(_not_a_pim_op)(spec, node)


def lower_node(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """Emit a planned node's commands."""
    OPS[node.op_type].lower(low, node, p)
