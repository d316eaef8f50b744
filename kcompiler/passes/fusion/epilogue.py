"""Epilogue fusion: Conv / MatMul / Gemm followed by a bias, an activation, a residual Add
or a gating Mul becomes one ``kcompiler.Fused{Conv,MatMul,Gemm}`` op whose epilogue runs on
the vector unit while the output tile is still in SRAM: the intermediate tensors never
reach DRAM.

The fused op carries its epilogue as data, ``epilogue = ["add", "relu", ...]`` (``add`` and
``mul`` take the next extra input; ``clip:lo:hi``, ``leakyrelu:alpha`` carry their
constants), and a model-local ONNX function body (one overload per epilogue) built from the
same steps, so ONNX Runtime and the host fallback still run it.

Rules, each growing the fused op by one step (so chains fuse over several rounds):
- ``epilogue-bias``: + a constant bias broadcast over the output (MatMul + Add of exporters).
- ``epilogue-activation``: Relu, Clip, LeakyRelu, Sigmoid, Tanh, Gelu, HardSwish,
  HardSigmoid, and SiLU (``y * Sigmoid(y)``).
- ``epilogue-residual``: + a runtime tensor of the output's shape (ResNet / transformer
  residuals) or * one (SwiGLU's gate).

Check (reads the target): the base op must be one an NPU of the target lowers, and a GEMM
tiling with the extra epilogue operand tiles double-buffered must fit its scratchpad.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.fused import DOMAIN, ensure_function, overload_name
from kcompiler.passes.fusion._base import (NodeRule, Rewrite, run_rules, claim_check, claimants, const,
                                           faster_elsewhere, other_input, rule_name, sole_user, users)
from kcompiler.passes.manager import CompileContext, PassOutcome, register

BIAS = rule_name("epilogue-bias", "MatMul/Conv/Gemm + constant bias -> fused epilogue")
ACTIVATION = rule_name("epilogue-activation", "... + Relu/Clip/LeakyRelu/Sigmoid/Tanh/Gelu/SiLU/HardSwish -> fused")
RESIDUAL = rule_name("epilogue-residual", "... + residual Add (or gating Mul) of the output's shape -> fused")



from kcompiler.fused.epilogue import (BASE_ARITY, BASE_ATTRS, BASE_OPS, FUSED, MAX_STEPS,  # noqa: F401
                                      fmt_float, base_of, epilogue_of, function_body, split_inputs)


# ---- the epilogue steps a consumer adds ----------------------------------------------------
def activation_step(node: ir.Node) -> str | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return op.lower()
    if op == "Gelu":
        approx = node.attributes.get_string("approximate", "none")
        return "gelu_tanh" if approx == "tanh" else "gelu"
    if op == "LeakyRelu":
        return f"leakyrelu:{fmt_float(node.attributes.get_float('alpha', 0.01))}"
    if op == "HardSigmoid":
        return f"hardsigmoid:{fmt_float(node.attributes.get_float('alpha', 0.2))}:{fmt_float(node.attributes.get_float('beta', 0.5))}"
    if op == "Clip":
        bounds = []
        for i in (1, 2):
            v = node.inputs[i] if len(node.inputs) > i else None
            if v is None:
                bounds.append("-inf" if i == 1 else "inf")
                continue
            c = const(v)
            if c is None or c.size != 1:
                return None
            bounds.append(fmt_float(float(c.reshape(-1)[0])))
        return f"clip:{bounds[0]}:{bounds[1]}"
    return None


# ---- the check: does the fused op fit the target -------------------------------------------
def fits(ctx: CompileContext, anchor: ir.Node, operands: list[ir.Value]) -> str | None:
    """None if every device claiming fused epilogues accepts the base op with these epilogue
    operands (the NPU: each a double-buffered output-sized tile beside the GEMM's in SRAM) and
    no other accelerator would run the base op faster, else why not."""
    if not claimants(ctx, "epilogue"):
        return "no device of the target lowers a fused epilogue"
    return faster_elsewhere(ctx, "epilogue", anchor) or \
        claim_check(ctx, "epilogue", anchor, "a fused epilogue", operands=operands)


# ---- building the fused node ---------------------------------------------------------------
def _fuse(model: ir.Model, anchor: ir.Node, step: str, operand: ir.Value | None, absorbed: list[ir.Node],
          result: ir.Value, ctx: CompileContext) -> Rewrite | str:
    base = base_of(anchor)
    base_ins, ops = split_inputs(anchor)
    steps = epilogue_of(anchor) + [step]
    if len(steps) > MAX_STEPS:
        return f"the epilogue already has {MAX_STEPS} steps"
    if operand is not None:
        ops = ops + [operand]
    if anchor.domain == DOMAIN:
        probe = ir.Node("", base, base_ins, attributes=[a for n, a in anchor.attributes.items() if n != "epilogue"],
                        num_outputs=1)
        probe.outputs[0].shape, probe.outputs[0].type = anchor.outputs[0].shape, anchor.outputs[0].type
    else:
        probe = anchor
    why = fits(ctx, probe, ops)
    if anchor.domain == DOMAIN:
        for i in range(len(probe.inputs)):
            probe.replace_input_with(i, None)
    if why:
        return why
    has_c = base != "MatMul" and len(base_ins) > 2 and base_ins[2] is not None
    base_ins = base_ins[:2] + ([base_ins[2]] if has_c else [])
    if base != "MatMul" and not has_c:
        base_ins = base_ins + [None]  # keep the epilogue operands at fixed positions
    overload = ("c_" if has_c else "") + overload_name(steps)
    ensure_function(model, f"Fused{base}", overload, lambda: function_body(base, has_c, steps))
    attrs = [a for n, a in anchor.attributes.items() if n != "epilogue"]
    attrs.append(ir.AttrStrings("epilogue", steps))
    node = ir.Node(DOMAIN, f"Fused{base}", base_ins + ops, attributes=attrs, overload=overload, num_outputs=1,
                   name=anchor.name)
    node.outputs[0].shape, node.outputs[0].type = result.shape, result.type
    ids = {id(n) for n in [anchor, *absorbed]}
    old = [n for n in model.graph if id(n) in ids]
    return Rewrite(absorbed[-1], old, [node], [result], [node.outputs[0]])


def _anchor_and_user(node: ir.Node) -> tuple[ir.Node, ir.Value] | None:
    if base_of(node) is None or len(node.outputs) != 1:
        return None
    y = node.outputs[0]
    if y.dtype != ir.DataType.FLOAT or opinfo.shape_of(y) is None:
        return None
    return node, y


def bias_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    got = _anchor_and_user(node)
    if got is None:
        return None
    anchor, y = got
    u = sole_user(y)
    if u is None or u.op_type != "Add" or u.domain not in ("", "ai.onnx") or epilogue_of(anchor):
        return None
    b = other_input(u, y)
    if b is None or const(b) is None:
        return None
    ys = opinfo.shape_of(y)
    bs = opinfo.shape_of(b)
    if bs is None or opinfo.shape_of(u.outputs[0]) != ys:
        return "the bias changes the output's shape"
    return _fuse(model, anchor, "add", b, [u], u.outputs[0], ctx)


def activation_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    got = _anchor_and_user(node)
    if got is None:
        return None
    anchor, y = got
    uses = users(y)
    if y.is_graph_output():
        return None
    if len(uses) == 2:  # SiLU: y * Sigmoid(y)
        sig = next((u for u in uses if u.op_type == "Sigmoid"), None)
        mul = next((u for u in uses if u.op_type == "Mul"), None)
        if sig is None or mul is None or sole_user(sig.outputs[0]) is not mul or other_input(mul, y) is not sig.outputs[0]:
            return None
        return _fuse(model, anchor, "silu", None, [sig, mul], mul.outputs[0], ctx)
    if len(uses) != 1:
        return None
    step = activation_step(uses[0])
    if step is None:
        return None
    return _fuse(model, anchor, step, None, [uses[0]], uses[0].outputs[0], ctx)


def residual_rule(node: ir.Node, ctx: CompileContext, model: ir.Model):
    got = _anchor_and_user(node)
    if got is None:
        return None
    anchor, y = got
    u = sole_user(y)
    if u is None or u.domain not in ("", "ai.onnx") or len(u.inputs) != 2:
        return None
    if u.op_type not in ("Add", "Sum", "Mul"):
        return None
    r = other_input(u, y)
    if r is None or const(r) is not None:
        return None  # constants are the bias rule's (or fold-affine's)
    ys, rs = opinfo.shape_of(y), opinfo.shape_of(r)
    if rs is None or r.dtype != ir.DataType.FLOAT:
        return "the residual has no static float32 shape"
    if opinfo.shape_of(u.outputs[0]) != ys or math.prod(rs) != math.prod(ys):
        return "the residual is not of the output's shape"
    return _fuse(model, anchor, "mul" if u.op_type == "Mul" else "add", r, [u], u.outputs[0], ctx)


RULES = [NodeRule(BIAS, bias_rule), NodeRule(ACTIVATION, activation_rule), NodeRule(RESIDUAL, residual_rule)]


@register("fuse-epilogue")
def fuse_epilogue(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fuse bias, activation and residual into the GEMM/Conv before them (NPU targets)."""
    return run_rules(model, ctx, RULES)
