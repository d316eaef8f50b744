"""The cleanup passes: constant folding, identity and dead-code elimination, CSE, order."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from kcompiler.frontend.inference import ShapeInferencePass
from kcompiler.passes import control
from kcompiler.passes.manager import CompileContext, PassOutcome, ir_pass, register

#: fold constants up to this many elements; larger ones (weights built by ConstantOfShape)
#: stay as they are and backends read them with opinfo.const_value without materialising them
FOLD_INPUT_LIMIT = 1 << 16
FOLD_OUTPUT_LIMIT = 1 << 20


#: ops folding must never evaluate, in any domain: a DequantizeLinear of a constant int8 weight folded
#: into a float initializer silently de-quantises the model (the backends would see a float
#: layer), and the quantising ops and 4-bit MatMulNBits are what the backends lower as such.
#: onnxscript's folder skips the ONNX-domain Q/DQ by default today; this makes it kcompiler's rule.
NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits",
                        "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"})


def _should_fold(node: ir.Node) -> bool | None:
    """False for the quantisation ops (NEVER_FOLD) and every com.microsoft op; else onnxscript's rules."""
    if node.op_type in NEVER_FOLD or node.domain == "com.microsoft":
        return False
    return None


@register("fold-constants")
def fold_constants(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Evaluate subgraphs whose inputs are all known at compile time (onnxscript optimizer)."""
    cast_like = _cast_like_to_cast(model)
    try:
        # (onnxscript's folder, leaving the bodies of If/Loop/Scan that stay dynamic alone: see control.py;
        # it evaluates what the model computes, inf and nan included: an exported T5 takes the log of 0 and
        # casts -inf to int64 where a Where discards it, as PyTorch does; numpy must not warn)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = control.fold_constants(model, input_size_limit=FOLD_INPUT_LIMIT,
                                            output_size_limit=FOLD_OUTPUT_LIMIT, should_fold=_should_fold)
    except RuntimeError as exc:
        # an op-specific folder of onnxscript crashed on a valid node (e.g. SplitToSequence
        # with a non-constant scalar `split`, ONNX test_split_to_sequence_1). Folding is only an
        # optimisation and the folder replaces node by node, so the graph is valid as it stands.
        if not str(exc).startswith("Error during constant folding"):
            raise
        logging.getLogger(__name__).warning("constant folding stopped early: %s (%s)", exc, exc.__cause__)
        result = None
    # folding leaves the replaced nodes unused; drop them here so the pass stands alone
    ir_passes.RemoveUnusedNodesPass()(model)
    return PassOutcome(changed=cast_like or bool(getattr(result, "modified", True)))


def _cast_like_to_cast(model: ir.Model) -> bool:
    """CastLike(x, like) -> Cast(x, to=like's type), keeping its `saturate` and `round_mode`:
    onnxscript's folder makes the same Cast but drops them, so a CastLike to float8 with
    saturate=0 would saturate (ONNX test_castlike_no_saturate_*). Returns whether one changed."""
    changed = False
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, like = node.inputs
        if x is None or like is None or like.dtype is None or x.dtype == like.dtype:
            continue  # (the same type: onnxscript makes it an Identity)
        node.op_type = "Cast"
        node.attributes["to"] = ir.AttrInt64("to", like.dtype.value)
        node.resize_inputs(1)
        changed = True
    return changed


class _IdentityElimination(ir_passes.IdentityEliminationPass):
    """onnx_ir's pass, except that `y = Identity(x)` stays when y is an output of its graph and x
    is either (a) also an output of that graph: removing it would make one value two outputs (e.g.
    a Scan body's state and its scan output), which ONNX Runtime computes wrongly (ONNX
    test_scan9_sum); or (b) defined outside that graph (an If/Loop/Scan body returning an
    outer-scope value): removing it would rename the outer value and make the body return it
    directly, which ONNX Runtime refuses ("an outer scope value being returned directly", every
    branch of silero-vad's `If`s) and which the partitioner could not see as a captured input."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1 or node.inputs[0] is None \
                or len(node.outputs) != 1:
            return super()._try_eliminate_identity_node(node)
        x, y = node.inputs[0], node.outputs[0]
        if y.is_graph_output() and (x.is_graph_output() or x.graph is not node.graph):
            return False
        if x.shape is not None and y.shape is not None and len(x.shape) != len(y.shape):
            # y's declared shape is the exporter's trace of another branch (silero-vad's decoder If, once
            # folding picks its Identity branch): x's inferred one holds; onnx_ir's merge would raise
            y.shape = None
        return super()._try_eliminate_identity_node(node)


register("remove-identity", "Remove Identity nodes (onnx_ir IdentityEliminationPass)")(
    ir_pass(_IdentityElimination))
register("dce", "Remove nodes whose outputs are never used (onnx_ir RemoveUnusedNodesPass)")(
    ir_pass(ir_passes.RemoveUnusedNodesPass))
register("cse", "Merge identical nodes with identical inputs (onnx_ir CSE)")(
    ir_pass(ir_passes.CommonSubexpressionEliminationPass))
register("toposort", "Sort nodes topologically (onnx_ir TopologicalSortPass)")(
    ir_pass(ir_passes.TopologicalSortPass))
@register("name-fix")
def name_fix(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Give every value and node a unique name (onnx_ir NameFixPass); unnamed nodes by op and output.

    A node the exporter left unnamed is named after its op and first output ("Conv_conv1_1")
    rather than a counter, so reports and traces say which op it is."""
    named = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not node.name and node.outputs and node.outputs[0] is not None and node.outputs[0].name:
            node.name = f"{node.op_type}_{node.outputs[0].name}"
            named += 1
    result = ir_passes.NameFixPass()(model)
    return PassOutcome(changed=bool(named) or bool(getattr(result, "modified", True)))


@register("shape-inference")
def shape_inference(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Re-run ONNX shape inference after rewrites (keeps shapes it cannot infer)."""
    ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    return PassOutcome(changed=False)
