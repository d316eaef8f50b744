"""What a sharding rule sees of a node's inputs (``In``) and what it decides (``Decision``), with
the helpers the rules share.

A rule is called as ``rule(node, ins, t, rw)``: the node, an ``In`` per input (None: absent),
the number of ranks, and the rewriter, seen as a ``RuleContext`` (``is_seed`` and ``int_const``).
It returns the layout every input must have and the layouts of the outputs, or None when it
cannot split the node that way (the node is then replicated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.parallel.spmd.layout import REPL, Layout


class RuleContext(Protocol):
    """What a rule reads of the rewriter that calls it (kcompiler.parallel.spmd.rewriter.Rewriter)."""

    def is_seed(self, node: ir.Node) -> bool:
        """Whether a rule may start a split at this node."""

    def int_const(self, values, hint: str) -> ir.Value:
        """A new int64 initializer holding `values` (named after `hint`)."""


@dataclass
class In:
    """What a rule sees of one input."""

    layout: Layout
    shape: tuple[int, ...] | None
    const: bool
    value: ir.Value

    @property
    def rank(self) -> int:
        return len(self.shape) if self.shape is not None else -1


@dataclass
class Decision:
    inputs: list[Layout | None]  # the layout each input must have (None: absent input)
    outputs: list[Layout]
    #: input index -> rank -> a replacement constant (e.g. a Reshape's rank-local shape)
    rewrite: dict[int, Callable[[int], ir.Value]] = field(default_factory=dict)
    #: input indices only rank 0 keeps (a bias added after a row split)
    rank0_only: tuple[int, ...] = ()
    #: attributes replaced in every rank's copy (e.g. an Attention's number of heads per rank)
    attrs: dict[str, ir.Attr] = field(default_factory=dict)
    #: ranks other than 0 run the plain base op (a fused GEMM whose epilogue only adds rank 0's terms)
    plain_elsewhere: str = ""


Rule = Callable[[ir.Node, list, int, RuleContext], "Decision | None"]


def out_shape(node: ir.Node, i: int = 0):
    """The static shape of the node's i-th output (None: unknown or absent)."""
    return opinfo.shape_of(node.outputs[i]) if len(node.outputs) > i else None


def replicate(node: ir.Node, ins: list) -> Decision:
    """Every present input and every output replicated: the node runs whole on every rank."""
    return Decision([None if x is None else REPL for x in ins], [REPL] * len(node.outputs))


def sharded_axis(ins: list) -> tuple[int | None, bool]:
    """(the shard axis of the first sharded input, whether any input is partial)"""
    partial = any(x is not None and x.layout.partial for x in ins)
    for x in ins:
        if x is not None and x.layout.sharded:
            return x.layout.axis, partial
    return None, partial


def attr(node: ir.Node, name: str, default):
    """An attribute's value, or `default` when the node does not set it."""
    a = node.attributes.get(name)
    return a.value if a is not None else default


def norm_axis(a: int, rank: int) -> int:
    """A possibly negative axis counted from the front."""
    return a + rank if a < 0 else a


def const_ints(v: ir.Value | None) -> list[int] | None:
    """A small int64 constant input (shapes, axes) as a list."""
    if v is None:
        return None
    c = opinfo.const_value(v)
    return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]
