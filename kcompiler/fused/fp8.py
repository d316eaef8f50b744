"""The FP8 GEMM ``kcompiler.Fp8MatMul``: schema and reference body.

A QDQ FP8 group DequantizeLinear(x fp8, sx) and DequantizeLinear(w fp8 const, sw) -> MatMul
[-> QuantizeLinear(sy, fp8 zero point)] as one op whose operands stay FP8: inputs (xq, sx, wq, sw)
[+ (sy, yz)]; attribute ``axis`` is the weight scale's axis (1: per output column, ignored for a
scalar). The model-local function (overload ``f32`` or ``q``) is the group itself, so ONNX Runtime
and the host run exactly what the QDQ model said. FP8 zero points are zero (ONNX), so x and w need
none; the output's zero point gives QuantizeLinear its FP8 type.
"""

from __future__ import annotations

import onnx
from onnx import helper

from kcompiler.fused import BODY_OPSET, DOMAIN, ref_attr

FP8_MATMUL = "Fp8MatMul"


def fp8_body(quantised_out: bool) -> onnx.FunctionProto:
    ins = ["XQ", "SX", "WQ", "SW"] + (["SY", "YZ"] if quantised_out else [])
    dqw = helper.make_node("DequantizeLinear", ["WQ", "SW"], ["wd"])
    dqw.attribute.append(ref_attr("axis", onnx.AttributeProto.INT))
    nodes = [helper.make_node("DequantizeLinear", ["XQ", "SX"], ["xd"]), dqw,
             helper.make_node("MatMul", ["xd", "wd"], ["y0" if quantised_out else "Y"])]
    if quantised_out:
        nodes.append(helper.make_node("QuantizeLinear", ["y0", "SY", "YZ"], ["Y"]))
    return helper.make_function(DOMAIN, FP8_MATMUL, ins, ["Y"], nodes, [helper.make_opsetid("", BODY_OPSET)],
                                attributes=["axis"])
