"""Raise decomposed activations and Softmax to standard ops.

- HardSwish: ``x * HardSigmoid(x)`` and ``x * Clip(x + 3, 0, 6) / 6`` (onnxscript's rules).
- Softmax: ``Exp(x - ReduceMax(x)) / ReduceSum(...)`` and the unstabilised
  ``Exp(x) / ReduceSum(Exp(x))`` over one axis (what hand-written attention exports).

SiLU (``x * Sigmoid(x)``) has no standard op before opset 24; it is recognised as an
epilogue step by ``epilogue.py`` instead.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import fuse_hardswish_rules

from kcompiler.passes.fusion._base import apply_pattern_rules, const, outcome, rule_name
from kcompiler.passes.manager import CompileContext, PassOutcome, register

HARDSWISH = rule_name("hardswish", "x*HardSigmoid(x) | x*Clip(x+3,0,6)/6 -> HardSwish")
SOFTMAX = rule_name("softmax", "Exp(x-ReduceMax(x))/ReduceSum(..) over one axis -> Softmax")


def _one_axis(v: ir.Value | None) -> int | None:
    c = const(v)
    if c is None or c.size != 1:
        return None
    return int(c.reshape(-1)[0])


class SoftmaxStable(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, axes1, axes2):
        e = op.Exp(op.Sub(x, op.ReduceMax(x, axes1, keepdims=1)))
        return op.Div(e, op.ReduceSum(e, axes2, keepdims=1))

    def check(self, context, x, axes1, axes2, **_):
        r = pattern.MatchResult()
        a1, a2 = _one_axis(axes1), _one_axis(axes2)
        rank = len(x.shape) if x.shape is not None else None
        if a1 is None or a2 is None or rank is None or a1 % rank != a2 % rank:
            return r.fail("the max and the sum must reduce the same single constant axis")
        self._axis = a1 % rank
        return r

    def rewrite(self, op, x, **_):
        return op.Softmax(x, axis=self._axis)


class SoftmaxPlain(SoftmaxStable):
    def pattern(self, op, x, axes1, axes2):
        e = op.Exp(x)
        return op.Div(e, op.ReduceSum(e, axes2, keepdims=1))

    def check(self, context, x, axes2, **_):
        return super().check(context, x, axes2, axes2)


def rules():
    return [(HARDSWISH, list(fuse_hardswish_rules().rules)),
            (SOFTMAX, [SoftmaxStable.rule(), SoftmaxPlain.rule()])]


@register("raise-activations")
def raise_activations(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Raise decomposed HardSwish and Softmax to single ops."""
    fired: dict[str, int] = {}
    changed = apply_pattern_rules(model, ctx, rules(), fired)
    return outcome(changed, fired)
