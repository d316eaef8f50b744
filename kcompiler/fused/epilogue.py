"""The fused GEMM-like ops ``kcompiler.Fused{Conv,MatMul,Gemm}``: schema and reference body.

A fused op keeps its base op's inputs (``BASE_ARITY`` of them) and attributes, then the
epilogue operands; its ``epilogue`` attribute lists the steps applied to the output tile in
order: ``add`` / ``mul`` (take the next epilogue operand), ``relu``, ``sigmoid``, ``tanh``,
``hardswish``, ``gelu``, ``gelu_tanh``, ``silu``, ``leakyrelu:alpha``,
``hardsigmoid:alpha:beta``, ``clip:lo:hi`` (``-inf``/``inf`` for an open bound). Its
model-local ONNX function (one overload per epilogue) is built from the same steps.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from kcompiler.fused import DOMAIN, ref_attr

BASE_OPS = ("Conv", "MatMul", "Gemm")
FUSED = {f"Fused{b}": b for b in BASE_OPS}
#: attributes of each base op the function body passes through
BASE_ATTRS = {
    "Conv": {"auto_pad": onnx.AttributeProto.STRING, "dilations": onnx.AttributeProto.INTS,
             "group": onnx.AttributeProto.INT, "kernel_shape": onnx.AttributeProto.INTS,
             "pads": onnx.AttributeProto.INTS, "strides": onnx.AttributeProto.INTS},
    "MatMul": {},
    "Gemm": {"alpha": onnx.AttributeProto.FLOAT, "beta": onnx.AttributeProto.FLOAT,
             "transA": onnx.AttributeProto.INT, "transB": onnx.AttributeProto.INT},
}
MAX_STEPS = 6
#: how many inputs of the base op the fused op keeps in front of the epilogue operands
BASE_ARITY = {"Conv": 3, "MatMul": 2, "Gemm": 3}


def base_of(node: ir.Node) -> str | None:
    if node.domain in ("", "ai.onnx") and node.op_type in BASE_OPS:
        return node.op_type
    if node.domain == DOMAIN and node.op_type in FUSED:
        return FUSED[node.op_type]
    return None


def epilogue_of(node: ir.Node) -> list[str]:
    a = node.attributes.get("epilogue")
    return [] if a is None else [str(s) for s in a.value]


def split_inputs(node: ir.Node) -> tuple[list[ir.Value | None], list[ir.Value]]:
    """(base inputs, epilogue operands) of a plain or fused GEMM-like node."""
    base = base_of(node)
    if node.domain == DOMAIN:
        n = BASE_ARITY[base]
        return list(node.inputs[:n]), list(node.inputs[n:])
    return list(node.inputs), []


def fmt_float(x: float) -> str:
    return repr(float(np.float32(x)))


def _body_step(step: str, x: str, operand: str | None, out: str, tag: str) -> list[onnx.NodeProto]:
    name, *args = step.split(":")
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}
    if name in simple:
        return [helper.make_node(simple[name], [x], [out])]
    if name == "gelu":
        return [helper.make_node("Gelu", [x], [out])]
    if name == "gelu_tanh":
        return [helper.make_node("Gelu", [x], [out], approximate="tanh")]
    if name == "silu":
        return [helper.make_node("Sigmoid", [x], [f"{tag}_s"]), helper.make_node("Mul", [x, f"{tag}_s"], [out])]
    if name == "leakyrelu":
        return [helper.make_node("LeakyRelu", [x], [out], alpha=float(args[0]))]
    if name == "hardsigmoid":
        return [helper.make_node("HardSigmoid", [x], [out], alpha=float(args[0]), beta=float(args[1]))]
    if name == "clip":
        nodes, ins = [], [x]
        for j, bound in enumerate(args):
            if bound in ("-inf", "inf"):
                ins.append("")
                continue
            nodes.append(helper.make_node("Constant", [], [f"{tag}_c{j}"],
                                          value=helper.make_tensor(f"{tag}_c{j}", onnx.TensorProto.FLOAT, [],
                                                                   [float(bound)])))
            ins.append(f"{tag}_c{j}")
        while ins and ins[-1] == "":
            ins.pop()
        return nodes + [helper.make_node("Clip", ins, [out])]
    if name in ("add", "mul"):
        return [helper.make_node(name.capitalize(), [x, operand], [out])]
    raise ValueError(f"unknown epilogue step {step!r}")


def function_body(base: str, has_c: bool, steps: list[str]) -> onnx.FunctionProto:
    ins = ["A", "B"] + (["C"] if has_c else [])
    n_ops = sum(1 for s in steps if s.split(":")[0] in ("add", "mul"))
    ops = [f"E{i}" for i in range(n_ops)]
    core = helper.make_node(base, ins, ["y0"])
    for name, kind in BASE_ATTRS[base].items():
        core.attribute.append(ref_attr(name, kind))
    nodes, cur, k = [core], "y0", 0
    for i, step in enumerate(steps):
        out = "Y" if i == len(steps) - 1 else f"y{i + 1}"
        operand = None
        if step.split(":")[0] in ("add", "mul"):
            operand, k = ops[k], k + 1
        nodes += _body_step(step, cur, operand, out, f"t{i}")
        cur = out
    if not steps:
        nodes.append(helper.make_node("Identity", ["y0"], ["Y"]))
    return helper.make_function(DOMAIN, "", ins + ops, ["Y"], nodes, [helper.make_opsetid("", 23)],
                                attributes=list(BASE_ATTRS[base]))
