"""The generic checks of the NPU's op table (backend.py): static shapes and float data (or int8/uint8
where a quantised kernel reads bytes), constant inputs, unused extra outputs, ranks, attribute values,
and a combinator that runs several."""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Support, no
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_int, a_str
from kcompiler.fused.elementwise import QUANTISED


def static_float(node: ir.Node, data_inputs: int | None = None, quantised=(), quantised_out=False) -> Support:
    """Static shapes, float data (`quantised`: input positions that are int8/uint8 instead, with
    `quantised_out` the output; a chain's zero points are int8/uint8 too)."""
    for v in node.outputs:
        if opinfo.shape_of(v) is None and used(v):
            return no(f"output '{v.name}' has no static shape")
    for v in node.outputs[:1]:
        if v.dtype not in (QUANTISED if quantised_out else FLOATS):
            return no(f"dtype {v.dtype} (the NPU claims float32, float16 and bfloat16 ops)")
    ins = node.inputs if data_inputs is None else node.inputs[:data_inputs]
    for i, v in enumerate(ins):
        if v is None:
            continue
        if opinfo.shape_of(v) is None:
            return no(f"input '{v.name}' has no static shape")
        if v.dtype not in FLOATS and not (v.dtype in QUANTISED and (i in quantised or (
                (quantised or quantised_out) and opinfo.numel(v) == 1 and opinfo.is_const(v)))):
            return no(f"input '{v.name}' has dtype {v.dtype}")
    return YES


def consts(node: ir.Node, first: int) -> Support:
    for v in node.inputs[first:]:
        if v is not None and not opinfo.is_const(v):
            return no(f"input '{v.name}' must be a compile-time constant")
    return YES


def used(v: ir.Value) -> bool:
    """Whether anything reads the value: a node, or the graph as one of its outputs."""
    return bool(v.uses()) or v.is_graph_output()


def only_first_output(node: ir.Node) -> Support:
    for v in node.outputs[1:]:
        if v is not None and v.name and used(v):
            return no(f"its extra output '{v.name}' is used")
    return YES


def all_of(*checks: Callable[[ir.Node], Support]) -> Callable[[ir.Node], Support]:
    def check(node):
        for c in checks:
            r = c(node)
            if not r:
                return r
        return YES
    return check


def rank(i: int, ranks: tuple[int, ...]):
    def check(node):
        s = opinfo.shape_of(node.inputs[i])
        return YES if s is not None and len(s) in ranks else no(f"input {i} must have rank {ranks}")
    return check


def min_rank(i: int, r: int):
    def check(node):
        s = opinfo.shape_of(node.inputs[i])
        return YES if s is not None and len(s) >= r else no(f"input {i} must have rank >= {r}")
    return check


def attr_in(name: str, allowed, default):
    def check(node):
        v = a_str(node, name, default) if isinstance(default, str) else a_int(node, name, default)
        return YES if v in allowed else no(f"attribute {name}={v!r} is not supported (only {list(allowed)})")
    return check
