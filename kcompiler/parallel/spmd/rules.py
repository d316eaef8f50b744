"""The sharding rule table: which rule decides how each op splits (rules_shape.py, rules_linear.py).

An op without a rule, or whose rule declines, runs replicated on every rank.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.comm.collectives import DOMAIN
from kcompiler.parallel.spmd.decision import Rule
from kcompiler.parallel.spmd.rules_linear import FUSED_BASE, rule_attention, rule_fused, rule_gemm, rule_matmul
from kcompiler.parallel.spmd.rules_shape import (rule_batch_only, rule_concat, rule_elementwise, rule_expand,
                                                 rule_gather, rule_reduce, rule_slice, rule_split, rule_transpose,
                                                 rule_view, softmax_axes, from_axis, unary_keeping)

RULES: dict[str, Rule] = {}
for _op in opinfo.ELEMENTWISE:
    RULES[_op] = rule_elementwise
for _op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LRN",
            "InstanceNormalization"):
    RULES[_op] = rule_batch_only
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    RULES[_op] = unary_keeping(softmax_axes)
for _op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
    RULES[_op] = unary_keeping(from_axis)
for _op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
            "ReduceSumSquare", "ReduceLogSumExp"):
    RULES[_op] = rule_reduce
for _op in opinfo.RESHAPES:
    RULES[_op] = rule_view
RULES.update(Transpose=rule_transpose, Expand=rule_expand, Slice=rule_slice, Split=rule_split,
             Concat=rule_concat, Gather=rule_gather, MatMul=rule_matmul, Gemm=rule_gemm, Attention=rule_attention)
#: rules for the fused ops of kcompiler's own domain (passes/fusion). A FusedElementwise chain
#: broadcasts its inputs to its output like any elementwise op (every step is elementwise), so it
#: splits like one; without this rule LLaMA's rotary embedding replicated, gathering Q and K and
#: with them the whole K cache on every chip.
DOMAIN_RULES: dict[str, Rule] = {**{op: rule_fused for op in FUSED_BASE}, "FusedElementwise": rule_elementwise}


def rule_for(node: ir.Node) -> Rule | None:
    """The rule of the node's op (standard ONNX or kcompiler's fused ops), None if there is none."""
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    return DOMAIN_RULES.get(node.op_type) if node.domain == DOMAIN else None
