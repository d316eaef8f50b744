"""Raise decomposed normalisations to standard ops: LayerNormalization (opset 17) and
RMSNormalization (opset 23).

PyTorch's TorchScript exporter writes LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/
Div/Mul/Add and LLaMA's RMSNorm as Pow/ReduceMean/Add/Sqrt/(Div | Reciprocal+Mul)/Mul. The
LayerNorm and Reciprocal-form RMSNorm patterns are onnxscript's (``rules.fusion``); the
Div-form RMSNorm that HF's LlamaRMSNorm exports through ``x / sqrt(...)`` is added here.
The raised op is one vector-unit pass over each row instead of nine round trips to DRAM.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion import _layer_norm, _rms_normalization

from kcompiler.passes.fusion._base import apply_pattern_rules, outcome, rule_name, scalar
from kcompiler.passes.manager import CompileContext, PassOutcome, register

LAYERNORM = rule_name("layernorm", "decomposed LayerNorm (ReduceMean/Sub/Pow/.../Mul[/Add]) -> LayerNormalization")
LAYERNORM_BIAS = rule_name("layernorm-bias", "LayerNormalization(x, scale) + bias -> LayerNormalization(x, scale, bias)")
RMSNORM = rule_name("rmsnorm", "decomposed RMSNorm (Pow/ReduceMean/Add/Sqrt/Div|Reciprocal/Mul) -> RMSNormalization")

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


class RmsNormDivFusion(pattern.RewriteRuleClassBase):
    """x / sqrt(mean(x^2) + eps) * scale  ->  RMSNormalization(x, scale)."""

    def pattern(self, op, x, scale, epsilon):
        ms = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1)
        return op.Mul(op.Div(x, op.Sqrt(op.Add(ms, epsilon))), scale)

    def check(self, context, x, scale, epsilon, **_):
        r = pattern.MatchResult()
        if x.dtype not in _FLOATS or scale.dtype != x.dtype:
            return r.fail("x and scale must be float32/float64 of one type", x)
        if scalar(epsilon) is None:
            return r.fail("epsilon is not a constant scalar", epsilon)
        return r

    def rewrite(self, op, x, scale, epsilon, **_):
        return op.RMSNormalization(x, scale, axis=-1, epsilon=scalar(epsilon), stash_type=x.dtype)


def rules():
    return [(LAYERNORM, _layer_norm.LayerNormFusion.rule()), (LAYERNORM_BIAS, _layer_norm.LayerNormBiasFusion.rule()),
            (RMSNORM, [RmsNormDivFusion.rule(), *_rms_normalization.rms_normalization_rules])]


@register("raise-norms")
def raise_norms(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Raise decomposed LayerNorm and RMSNorm to single ops."""
    fired: dict[str, int] = {}
    changed = apply_pattern_rules(model, ctx, rules(), fired)
    return outcome(changed, fired)
