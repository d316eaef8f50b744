"""Raise decomposed GELU to the standard ONNX ``Gelu`` (opset 20).

Exporters write GELU out: the exact form ``0.5 * x * (1 + erf(x / sqrt(2)))`` (BERT) and
the tanh approximation ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (GPT-2).
The patterns are onnxscript's (``ort_fusions.gelu`` / ``ort_fusions.erfgelu``), which rewrite
to ORT's ``com.microsoft`` ops; here they rewrite to the standard op instead, which every
runtime and the NPU's vector unit (one transcendental pass) run.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import erfgelu
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion

from kcompiler.passes.fusion._base import apply_pattern_rules, outcome, rule_name
from kcompiler.passes.manager import CompileContext, PassOutcome, register

GELU_ERF = rule_name("gelu-erf", "0.5*x*(1+Erf(x/sqrt2)) -> Gelu")
GELU_TANH = rule_name("gelu-tanh", "0.5*x*(1+Tanh(sqrt(2/pi)*(x+0.044715*x^3))) -> Gelu(approximate=tanh)")

_C = math.sqrt(2.0 / math.pi)


def _float_input(context, x, **_):
    return x.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _gelu(op, x, **_):
    return op.Gelu(x)


def _gelu_tanh(op, x, **_):
    return op.Gelu(x, approximate="tanh")


class _GeluErf(GeluErfFusion):
    """onnxscript's pattern ((x * (Erf(x / sqrt2) + 1)) * 0.5), rewritten to the standard op."""

    def check(self, context, x, **_):
        return _float_input(context, x)

    def rewrite(self, op, x, **_):
        return op.Gelu(x)


# the tanh form in the three association orders exporters produce
def _tanh_inner(op, x):
    return op.Tanh(_C * (x + 0.044715 * op.Pow(x, 3.0)))


def _gelu_tanh_1(op, x):  # (x * 0.5) * (1 + tanh(...))   (HF NewGELUActivation, GPT-2)
    return (x * 0.5) * (_tanh_inner(op, x) + 1.0)


def _gelu_tanh_2(op, x):  # x * (0.5 * (1 + tanh(...)))
    return x * (0.5 * (_tanh_inner(op, x) + 1.0))


def _gelu_tanh_3(op, x):  # 0.5 * (x * (1 + tanh(...)))
    return 0.5 * (x * (_tanh_inner(op, x) + 1.0))


def _gelu_tanh_4(op, x):  # constants on the right, as torch.onnx exports `tensor * scalar`
    return (x * 0.5) * (op.Tanh((x + op.Pow(x, 3.0) * 0.044715) * _C) + 1.0)


def _gelu_tanh_x3(op, x):  # x*x*x instead of Pow(x, 3)
    return (x * 0.5) * (op.Tanh(_C * (x + 0.044715 * (x * x * x))) + 1.0)


def rules():
    erf = [_GeluErf.rule(),
           pattern.RewriteRule(erfgelu.erf_gelu_pattern_1, _gelu, _float_input),
           pattern.RewriteRule(erfgelu.erf_gelu_pattern_2, _gelu, _float_input)]
    tanh = [pattern.RewriteRule(p, _gelu_tanh, _float_input)
            for p in (_gelu_tanh_1, _gelu_tanh_4, _gelu_tanh_2, _gelu_tanh_3, _gelu_tanh_x3)]
    return [(GELU_ERF, erf), (GELU_TANH, tanh)]


@register("raise-gelu")
def raise_gelu(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Raise Erf- and Tanh-form GELU to Gelu."""
    fired: dict[str, int] = {}
    # a cheap pre-filter: a rule runs only if the op it is built around (Erf, Tanh) is in the
    # graph; the patterns are written in the operand orders exporters emit, so matching with
    # every operand order (commute, ~2^k variants) is tried only for what is still left
    table = [(name, r) for name, r in rules() if _candidates(model, ANCHOR[name])]
    changed = apply_pattern_rules(model, ctx, table, fired) if table else False
    left = [(name, r) for name, r in table if _candidates(model, ANCHOR[name])]
    if left:
        changed = apply_pattern_rules(model, ctx, left, fired, commute=True) or changed
    return outcome(changed, fired)


ANCHOR = {GELU_ERF: "Erf", GELU_TANH: "Tanh"}


def _candidates(model: ir.Model, anchor: str) -> bool:
    """Whether some `anchor` node could sit inside a GELU: fed by a Div or Mul, read by an Add
    (a pooler's Tanh or an erf elsewhere is not)."""
    for n in model.graph:
        if n.op_type != anchor or n.domain not in ("", "ai.onnx"):
            continue
        p = n.inputs[0].producer() if n.inputs and n.inputs[0] is not None else None
        if p is not None and p.op_type in ("Div", "Mul") and any(u.node.op_type == "Add" for u in n.outputs[0].uses()):
            return True
    return False
