"""The fused elementwise op ``kcompiler.FusedElementwise``: schema and reference body.

The op carries its program as data: ``steps = ["Mul|0,1|", "Add|4,2|", ...]``, one per op,
each ``Op|operands|attributes``; operand ``i`` is input ``i`` for ``i < n_inputs`` and the
result of step ``i - n_inputs`` after that (``-`` marks an omitted optional input). Its
model-local ONNX function body (one overload per program) is built from the same steps.
"""

from __future__ import annotations

import hashlib

import onnx
import onnx_ir as ir
from onnx import helper

from kcompiler import opinfo
from kcompiler.fused import DOMAIN

FUSED = "FusedElementwise"
#: ops the chain may hold (the NPU's elementwise table, plus Clip) and their attributes
OPS: dict[str, tuple[str, ...]] = {
    **{op: () for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Relu", "Sigmoid", "Tanh",
                         "Exp", "Log", "Erf", "Sqrt", "Neg", "Abs", "Reciprocal", "Sign", "Floor", "Ceil",
                         "Softplus", "HardSwish", "Clip")},
    "LeakyRelu": ("alpha",), "Elu": ("alpha",), "HardSigmoid": ("alpha", "beta"), "Gelu": ("approximate",),
}
#: per-tensor (de)quantisation between float and int8/uint8 may open (DequantizeLinear of an input) and
#: close (QuantizeLinear of the result) a chain, so a quantised model's residual Add + Relu reads and
#: writes int8 (no attributes are kept: `axis` means nothing for one scale, the rest are refused)
QDQ = ("DequantizeLinear", "QuantizeLinear")
OPS.update({op: () for op in QDQ})
QUANTISED = (ir.DataType.INT8, ir.DataType.UINT8)
MAX_INPUTS = 8
MAX_STEPS = 16


def _per_tensor_qdq(node: ir.Node) -> bool:
    """A Q/DQ between float32 and int8/uint8 with one constant scale (and zero point)."""
    if set(node.attributes) - {"axis"}:
        return False
    q, f = (node.outputs[0], node.inputs[0]) if node.op_type == "QuantizeLinear" else \
        (node.inputs[0], node.outputs[0])
    if q is None or f is None or q.dtype not in QUANTISED or f.dtype != ir.DataType.FLOAT:
        return False
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    if scale is None or scale.dtype != ir.DataType.FLOAT:
        return False
    return all(opinfo.is_const(v) and opinfo.numel(v) == 1 for v in node.inputs[1:] if v is not None)


def is_chain_member(node: ir.Node | None) -> bool:
    if node is None or len(node.outputs) != 1:
        return False
    if node.domain == DOMAIN:
        return node.op_type == FUSED
    if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
        return False
    if node.op_type in QDQ:
        return _per_tensor_qdq(node)
    return set(node.attributes) <= set(OPS[node.op_type])


def _attr_text(node: ir.Node) -> str:
    parts = []
    for name in OPS[node.op_type]:
        a = node.attributes.get(name)
        if a is not None:
            parts.append(f"{name}={a.value!r}" if isinstance(a.value, str) else f"{name}={float(a.value)!r}")
    return ",".join(parts)


def parse_step(step: str) -> tuple[str, list[int | None], dict[str, float | str]]:
    op, args, attrs = step.split("|")
    operands = [None if a == "-" else int(a) for a in args.split(",") if a]
    kv: dict[str, float | str] = {}
    for item in filter(None, attrs.split(",")):
        k, v = item.split("=", 1)
        kv[k] = v.strip("'\"") if v[:1] in "'\"" else float(v)
    return op, operands, kv


def program_of(node: ir.Node) -> tuple[list[ir.Value | None], list[str]]:
    """(inputs, steps) of a fused node, or of a plain op as a one-step program."""
    if node.domain == DOMAIN:
        return list(node.inputs), [str(s) for s in node.attributes["steps"].value]
    ins = list(node.inputs)
    while ins and ins[-1] is None:
        ins.pop()
    real = [v for v in ins if v is not None]
    idx, args = {}, []
    for v in ins:
        if v is None:
            args.append("-")
        else:
            idx.setdefault(id(v), len(idx))
            args.append(str(idx[id(v)]))
    uniq = list({id(v): v for v in real}.values())
    return uniq, [f"{node.op_type}|{','.join(args)}|{_attr_text(node)}"]


def _shift(step: str, remap) -> str:
    op, operands, _ = parse_step(step)
    attrs = step.split("|")[2]
    return f"{op}|{','.join('-' if a is None else str(remap(a)) for a in operands)}|{attrs}"


def merge(producer: ir.Node, consumer: ir.Node) -> tuple[list[ir.Value], list[str]]:
    """The program of consumer with producer's output computed inline."""
    p_ins, p_steps = program_of(producer)
    c_ins, c_steps = program_of(consumer)
    y = producer.outputs[0]
    inputs: list[ir.Value] = []

    def slot(v):
        for i, u in enumerate(inputs):
            if u is v:
                return i
        inputs.append(v)
        return len(inputs) - 1

    # inputs first (their final count fixes where step results are numbered from)
    p_slots = [slot(v) for v in p_ins]
    c_slots = [None if v is y else slot(v) for v in c_ins]
    n = len(inputs)
    np_ = len(p_ins)
    steps = [_shift(s, lambda a: p_slots[a] if a < np_ else n + (a - np_)) for s in p_steps]
    p_result = n + len(p_steps) - 1
    nc = len(c_ins)
    steps += [_shift(s, lambda a: (p_result if c_slots[a] is None else c_slots[a]) if a < nc
                     else n + len(p_steps) + (a - nc)) for s in c_steps]
    return inputs, steps


# ---- the function body ----------------------------------------------------------------------
def function_body(n_inputs: int, steps: list[str]) -> onnx.FunctionProto:
    ins = [f"X{i}" for i in range(n_inputs)]
    names = ins + [f"v{i}" for i in range(len(steps))]
    names[-1] = "Y"
    nodes = []
    for i, step in enumerate(steps):
        op, operands, attrs = parse_step(step)
        args = ["" if a is None else names[a] for a in operands]
        nodes.append(helper.make_node(op, args, [names[n_inputs + i]], **attrs))
    return helper.make_function(DOMAIN, FUSED, ins, ["Y"], nodes, [helper.make_opsetid("", 23)])


def overload_for(n_inputs: int, steps: list[str]) -> str:
    """Steps joined are long and not identifiers; a short digest names the body."""
    ops = "_".join(parse_step(s)[0].lower() for s in steps[:4])
    digest = hashlib.sha1(f"{n_inputs};{';'.join(steps)}".encode()).hexdigest()[:10]
    return f"{ops}_{digest}"
