"""What a claimed node is on the PIM (an OpPlan), and the checks every computing op shares.

A claim answers `supports`: an OpPlan when the device runs the node (what the lowering and the cost
estimate then build from), else a Support saying why not (shown by `kc inspect`). Which op is
claimed how is the table in ops.py; the claims themselves sit with their op family (products.py,
elementwise.py, views.py, kvcache.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Support, no
from kcompiler.backends.pim.spec import PimSpec

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def attr(node: ir.Node, name: str, default):
    """The node's attribute `name` as the type of `default`, or `default` when it is absent."""
    a = node.attributes.get(name)
    if a is None:
        return default
    return {int: a.as_int, float: a.as_float, str: a.as_string}[type(default)]()


@dataclass
class OpPlan:
    """What a node is on the PIM: a matrix-vector product or an element-wise op."""

    kind: str  # "matvec" | "elementwise" | "view" | "append"
    G: int = 1
    M: int = 1
    N: int = 1
    K: int = 1
    numel: int = 0
    streamed: int = 0
    const_weight: bool = False


@dataclass
class Operands:
    """A computing node's inputs (None for an omitted optional one), their static shapes and its
    output's shape: what its claim decides from."""

    values: list[ir.Value | None]
    shapes: list[tuple[int, ...] | None]
    out: tuple[int, ...]


#: a claim: the node's OpPlan on the device, or why the device does not run it
Claim = Callable[[PimSpec, ir.Node], OpPlan | Support]


def operands(node: ir.Node) -> Operands | Support:
    """The operands of an op the PIM units compute, or why they cannot: floating point with static shapes."""
    ins = [v for v in node.inputs]
    if any(v is not None and v.dtype not in FLOAT_TYPES for v in ins) or not node.outputs:
        return no("PIM units compute floating point only")
    shapes = [opinfo.shape_of(v) if v is not None else None for v in ins]
    out = opinfo.shape_of(node.outputs[0])
    if out is None or any(v is not None and sh is None for v, sh in zip(ins, shapes)):
        return no("shapes unknown")
    return Operands(ins, shapes, out)


def computing(claim: Callable[[PimSpec, ir.Node, Operands], OpPlan | Support]) -> Claim:
    """The claim of an op the PIM units compute: the shared operand checks, then `claim` itself."""

    def check(spec: PimSpec, node: ir.Node) -> OpPlan | Support:
        ops = operands(node)
        return ops if isinstance(ops, Support) else claim(spec, node, ops)

    return check
