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
#: the same for a 2-D convolution: inputs (xq, sx, wq, sw, bias) [+ (sy, yz)] (a Conv without a bias gets
#: zeros), the Conv's attributes, ``axis`` 0 (the weight scale per output channel)
FP8_CONV = "Fp8Conv"
CONV_ATTRS = {"auto_pad": onnx.AttributeProto.STRING, "dilations": onnx.AttributeProto.INTS,
              "group": onnx.AttributeProto.INT, "kernel_shape": onnx.AttributeProto.INTS,
              "pads": onnx.AttributeProto.INTS, "strides": onnx.AttributeProto.INTS}


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


def fp8_conv_body(quantised_out: bool) -> onnx.FunctionProto:
    """Fp8Conv's function: DQ(x), DQ(w, axis), Conv(., ., bias) [-> Q]."""
    ins = ["XQ", "SX", "WQ", "SW", "B"] + (["SY", "YZ"] if quantised_out else [])
    dqw = helper.make_node("DequantizeLinear", ["WQ", "SW"], ["wd"])
    dqw.attribute.append(ref_attr("axis", onnx.AttributeProto.INT))
    conv = helper.make_node("Conv", ["xd", "wd", "B"], ["y0" if quantised_out else "Y"])
    conv.attribute.extend(ref_attr(name, kind) for name, kind in CONV_ATTRS.items())
    nodes = [helper.make_node("DequantizeLinear", ["XQ", "SX"], ["xd"]), dqw, conv]
    if quantised_out:
        nodes.append(helper.make_node("QuantizeLinear", ["y0", "SY", "YZ"], ["Y"]))
    return helper.make_function(DOMAIN, FP8_CONV, ins, ["Y"], nodes, [helper.make_opsetid("", BODY_OPSET)],
                                attributes=["axis", *CONV_ATTRS])
