"""How the ranks of a device group hold a value (its *layout*), and which values are constants.

  replicated   every rank holds all of it;
  shard(a)     rank i holds the i-th of t equal slices along axis a;
  partial      every rank holds a summand (the output of a row-split MatMul).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from kcompiler import opinfo


@dataclass(frozen=True)
class Layout:
    axis: int | None = None
    partial: bool = False

    @property
    def sharded(self) -> bool:
        return self.axis is not None

    def __str__(self) -> str:
        return "partial" if self.partial else ("replicated" if self.axis is None else f"shard({self.axis})")


REPL = Layout()
PARTIAL = Layout(partial=True)


def shard(axis: int) -> Layout:
    return Layout(axis=axis)


def local_shape(shape, layout: Layout, t: int) -> tuple[int, ...]:
    """The shape one rank of `t` holds of a value of `shape` in `layout`."""
    s = list(shape)
    if layout.sharded:
        s[layout.axis] //= t
    return tuple(s)


def is_const(v: ir.Value | None) -> bool:
    """Known at compile time, judged without reading weight data (it may be external); an
    absent optional input counts as constant."""
    return v is None or opinfo.is_const(v)


def is_const_producer(node: ir.Node) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Constant", "ConstantOfShape"):
        return False
    return node.op_type == "Constant" or all(v is not None and v.const_value is not None for v in node.inputs)
