"""Which mask, index and integer ops the NPU claims (the exact kernels of kernels/maskops.py): the
checks of their rows in the backend's op table. An op the float kernels run on floats and the exact
ones on integers (Add, Cast, Concat, ...) dispatches on its dtypes (`by_dtype`)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Support, no
from kcompiler.backends.npu.kernels.attrs import FLOATS, IR_DTYPE, a_int
from kcompiler.backends.npu.kernels.maskops import exact_dtypes_ok

#: instruction dtypes the exact functions compute on (4-bit ones are packed: not elementwise-addressable)
HELD = frozenset(d for d in IR_DTYPE if IR_DTYPE[d] not in ("i4", "u4"))
INTS = frozenset({ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT16,
                   ir.DataType.UINT32, ir.DataType.UINT64})


def exact_check(node: ir.Node, vector_dtypes) -> Support:
    """Every value of the node held in NPU memory with a static shape, and the chip's vector unit
    computing the dtype class it needs (`vector_dtypes`: npu.vector.dtypes)."""
    for v in node.outputs[1:]:
        if v is not None and v.name and (v.uses() or v.is_graph_output()):
            return no(f"its extra output '{v.name}' is used")
    why = exact_dtypes_ok(node, vector_dtypes)
    return YES if why is None else no(why)


def is_float_op(node: ir.Node) -> bool:
    return all(v.dtype in FLOATS for v in (*node.inputs, *node.outputs[:1]) if v is not None)


def by_dtype(float_entry, exact_entry):
    """An op the float kernels run on floats and the exact ones on integers: (kernel factory, check)."""
    def kernel(node, spec):
        return (float_entry if is_float_op(node) else exact_entry)[0](node, spec)

    def check(node):
        return (float_entry if is_float_op(node) else exact_entry)[1](node)
    return kernel, check


def dtypes_in(allowed, what: str):
    def check(node):
        for v in (*node.inputs, *node.outputs[:1]):
            if v is not None and v.dtype not in allowed:
                return no(f"'{v.name}' has dtype {v.dtype} ({what})")
        return YES
    return check


def binary_ints(node) -> Support:
    if node.op_type in ("Max", "Min") and len(node.inputs) != 2:
        return no(f"integer {node.op_type} of {len(node.inputs)} inputs (the NPU lowers two)")
    if node.op_type == "Abs" and node.inputs[0].dtype not in (ir.DataType.INT8, ir.DataType.INT32, ir.DataType.INT64):
        return no("Abs of an unsigned dtype is the identity (left to the host)")
    return YES


def mod_check(node) -> Support:
    if node.inputs[0].dtype in FLOATS and not a_int(node, "fmod", 0):
        return no("float Mod needs fmod=1 (ONNX)")
    return YES


def trilu_check(node) -> Support:
    if len(opinfo.shape_of(node.inputs[0])) < 2:
        return no("Trilu's input has rank < 2")
    k = node.inputs[1] if len(node.inputs) > 1 else None
    if k is not None and (k.dtype != ir.DataType.INT64 or opinfo.numel(k) != 1):
        return no("Trilu's k is one int64")
    return YES


def arg_check(node) -> Support:
    if node.outputs[0].dtype != ir.DataType.INT64:
        return no("ArgMax/ArgMin write int64")
    return YES


def cast_exact(node) -> Support:
    src, dst = node.inputs[0], node.outputs[0]
    if src.dtype not in HELD or dst.dtype not in HELD:
        return no(f"Cast from {src.dtype} to {dst.dtype} (the NPU holds neither 4-bit nor 64-bit floats)")
    return YES


def held(data_inputs: int | None):
    """A copy, gather or view of any dtype the NPU holds (DMA moves bytes): static shapes."""
    def check(node):
        ins = node.inputs if data_inputs is None else node.inputs[:data_inputs]
        for v in (*ins, *node.outputs[:1]):
            if v is None:
                continue
            if opinfo.shape_of(v) is None:
                return no(f"'{v.name}' has no static shape")
            if v.dtype not in HELD:
                return no(f"'{v.name}' has dtype {v.dtype}")
        return YES
    return check
