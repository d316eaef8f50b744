"""A 1-D convolution as a 2-D one of height 1.

Speech and audio models (silero-vad's encoder, a Whisper-style stem) and exported sequence models
convolve along one axis: Conv on an [N, C, L] input with an [O, C/g, k] weight. The chips' kernels
and cost models are written for images, [N, C, H, W]; rather than a second copy of each, the rule

    ``conv1d-as-2d``: Conv(x[N,C,L], w[O,C/g,k]) -> Squeeze(Conv(Unsqueeze(x, 2), w'[O,C/g,1,k]), 2)

lifts the problem to height 1 (kernel [1,k], strides [1,s], dilations [1,d], pads [0,b,0,e]).
It is exact: the same products summed in the same order, and Unsqueeze/Squeeze are views (free on
the NPU, a metadata change on the host). It fires only where the weight is a compile-time constant
(the weight image the chips program), the shapes are static and no accelerator of the target already
lowers the 1-D Conv as it is (the CIM chips map its taps onto crossbar rows directly); auto_pad carries over unchanged
(SAME pads nothing along a height-1 axis with a height-1 kernel).
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import NodeRule, Rewrite, run_rules, const_thunk, lazy, rule_name
from kcompiler.passes.manager import CompileContext, PassOutcome, register

C1D = rule_name("conv1d-as-2d", "Conv over [N,C,L] -> Squeeze(Conv over [N,C,1,L]) (exact; views are free)")


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    a = node.attributes.get(name)
    return [int(v) for v in a.value] if a is not None else default


def _axes(name: str) -> ir.Value:
    v = ir.Value(name=name, const_value=ir.tensor([2], dtype=ir.DataType.INT64, name=name))
    v.shape, v.type = ir.Shape([1]), ir.TensorType(ir.DataType.INT64)
    return v


def conv1d_as_2d(node: ir.Node, ctx: CompileContext, model: ir.Model):
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    x, w = node.inputs[0], node.inputs[1]
    xs, ws, ys = opinfo.shape_of(x), opinfo.shape_of(w), opinfo.shape_of(node.outputs[0])
    if xs is None or len(xs) != 3:
        return None
    if ws is None or len(ws) != 3 or ys is None or len(ys) != 3:
        return "no static shapes"
    w_value = const_thunk(w)
    if w_value is None:
        return "the weight is computed at run time"
    host = ctx.system.host.name
    takers = [b.name for name, b in ctx.backends.items() if name != host and b.supports(node)]
    if takers:  # (a crossbar maps a 1-D conv's taps as they are: views around it would only add transfers)
        return f"{', '.join(takers)} lower(s) the 1-D Conv as it is"
    pads = _ints(node, "pads", [0, 0])
    attrs = [ir.AttrInt64s("kernel_shape", [1, int(ws[2])]),
             ir.AttrInt64s("strides", [1, *_ints(node, "strides", [1])]),
             ir.AttrInt64s("dilations", [1, *_ints(node, "dilations", [1])]),
             ir.AttrInt64s("pads", [0, pads[0], 0, pads[1]]),
             ir.AttrInt64("group", int(node.attributes["group"].value) if "group" in node.attributes else 1)]
    if "auto_pad" in node.attributes:
        attrs.append(ir.AttrString("auto_pad", node.attributes["auto_pad"].value))
    y = node.outputs[0]
    ax_in, ax_out = _axes(f"{node.name}_h_axis_in"), _axes(f"{node.name}_h_axis_out")
    w4_shape = [int(ws[0]), int(ws[1]), 1, int(ws[2])]
    w4 = lazy(lambda: w_value().reshape(w4_shape), w, f"{w.name}_as_2d", shape=w4_shape, dtype=w.dtype)
    up = ir.Node("", "Unsqueeze", [x, ax_in], num_outputs=1, name=f"{node.name}_to_2d")
    up.outputs[0].shape, up.outputs[0].type = ir.Shape([xs[0], xs[1], 1, xs[2]]), x.type
    conv = ir.Node("", "Conv", [up.outputs[0], w4, *node.inputs[2:]], attributes=attrs, num_outputs=1,
                   name=node.name)
    conv.outputs[0].shape, conv.outputs[0].type = ir.Shape([ys[0], ys[1], 1, ys[2]]), y.type
    down = ir.Node("", "Squeeze", [conv.outputs[0], ax_out], num_outputs=1, name=f"{node.name}_to_1d")
    down.outputs[0].shape, down.outputs[0].type = y.shape, y.type
    return Rewrite(node, [node], [up, conv, down], [y], [down.outputs[0]], initializers=[ax_in, ax_out, w4])


RULES = [NodeRule(C1D, conv1d_as_2d)]


@register("raise-conv1d")
def raise_conv1d(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Conv over one spatial axis as Conv over two, the second of size 1 (exact)."""
    return run_rules(model, ctx, RULES)
