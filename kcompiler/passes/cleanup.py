"""The cleanup passes: constant folding, identity and dead-code elimination, CSE, order."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from kcompiler.passes.manager import PassContext, PassOutcome, ir_pass, register

#: fold constants up to this many elements; larger ones (weights built by ConstantOfShape)
#: stay as they are and backends read them with opinfo.const_value without materialising them
FOLD_INPUT_LIMIT = 1 << 16
FOLD_OUTPUT_LIMIT = 1 << 20


@register("fold-constants")
def fold_constants(model: ir.Model, ctx: PassContext) -> PassOutcome:
    """Evaluate subgraphs whose inputs are all known at compile time (onnxscript optimizer)."""
    from onnxscript import optimizer

    result = optimizer.fold_constants(model, input_size_limit=FOLD_INPUT_LIMIT,
                                      output_size_limit=FOLD_OUTPUT_LIMIT)
    # folding leaves the replaced nodes unused; drop them here so the pass stands alone
    ir_passes.RemoveUnusedNodesPass()(model)
    return PassOutcome(changed=bool(getattr(result, "modified", True)))


register("remove-identity", "Remove Identity nodes (onnx_ir IdentityEliminationPass)")(
    ir_pass(ir_passes.IdentityEliminationPass))
register("dce", "Remove nodes whose outputs are never used (onnx_ir RemoveUnusedNodesPass)")(
    ir_pass(ir_passes.RemoveUnusedNodesPass))
register("cse", "Merge identical nodes with identical inputs (onnx_ir CSE)")(
    ir_pass(ir_passes.CommonSubexpressionEliminationPass))
register("toposort", "Sort nodes topologically (onnx_ir TopologicalSortPass)")(
    ir_pass(ir_passes.TopologicalSortPass))
register("name-fix", "Give every value and node a unique name (onnx_ir NameFixPass)")(
    ir_pass(ir_passes.NameFixPass))


@register("shape-inference")
def shape_inference(model: ir.Model, ctx: PassContext) -> PassOutcome:
    """Re-run ONNX shape inference after rewrites (keeps shapes it cannot infer)."""
    ir_passes.ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    return PassOutcome(changed=False)
