"""Folding the shape arithmetic of exported models once their inputs' shapes are bound.

Exporters read shapes at run time: Shape -> Gather -> Unsqueeze -> Concat -> Reshape for head
reshapes, Range/CumSum/Trilu/Expand for positions and masks. With `--shape` binding every input,
all of it is a function of constants, yet one pass of ONNX shape inference leaves symbolic dims
behind it (a Slice whose bounds are not initializers gets only a rank) and onnxscript's folder
does not re-infer what follows a node it folded. Every node after such a value then has "no
static shape" and stays on the host. This pass alternates the two until nothing more becomes
static: fold (onnxscript, with a larger limit for integer and bool tensors, which are shapes,
indices and masks rather than weights), then infer the still-open shapes afresh.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes
from onnxscript import optimizer

from kcompiler.frontend.inference import open_values, reinfer_open_shapes, sync_initializer_shapes
from kcompiler.frontend.reading import ModelSource
from kcompiler.passes.cleanup import FOLD_INPUT_LIMIT, FOLD_OUTPUT_LIMIT, NEVER_FOLD
from kcompiler.passes.manager import CompileContext, PassOutcome, register

#: integer/bool tensors up to this many elements are folded whatever FOLD_INPUT_LIMIT (65,536) says,
#: as many as the folder stores (FOLD_OUTPUT_LIMIT): a T5 relative-position bucket table at sequence
#: 512 is 262,144 int64s, computed once at compile time rather than on the host at every run
INT_FOLD_LIMIT = FOLD_OUTPUT_LIMIT
#: rounds of fold + infer: each round resolves at least one more value or the pass stops
MAX_ROUNDS = 8
#: the dtypes of shapes, indices and masks (not int8/uint8: those are quantised weights, cleanup's to fold)
_INT_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL})


def _shape_like(node: ir.Node) -> bool | None:
    """cleanup's rule (never the quantisation ops, NEVER_FOLD, nor the contrib ops), else True for a
    node whose inputs and outputs are all small-enough integer or bool tensors (shape, index and
    mask arithmetic), or a small ConstantOfShape; None leaves the decision to onnxscript."""
    if node.op_type in NEVER_FOLD or node.domain == "com.microsoft":
        return False
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
        # onnxscript never folds it (not to grow the model with big fills), but a causal mask built
        # from ConstantOfShape -> Trilu at the bound sequence length is small and then folds whole
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        dims = shape.numpy().reshape(-1).tolist() if shape is not None else None
        return True if dims is not None and min(dims, default=0) >= 0 and math.prod(dims) <= FOLD_INPUT_LIMIT else None
    values = [v for v in list(node.inputs) + list(node.outputs) if v is not None]
    if not values or any(v.dtype not in _INT_TYPES for v in values):
        return None
    sizes = [v.const_value.size for v in node.inputs if v is not None and v.const_value is not None]
    return True if all(s <= INT_FOLD_LIMIT for s in sizes) else None


def _fold(model: ir.Model) -> bool:
    try:
        # (the folder evaluates what the model computes, inf and nan included: T5's buckets take the log
        # of 0 and cast -inf to int64 where a Where then discards it, as in PyTorch; numpy must not warn)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = optimizer.fold_constants(model, input_size_limit=FOLD_INPUT_LIMIT,
                                              output_size_limit=FOLD_OUTPUT_LIMIT,
                                              should_fold=_shape_like)
    except RuntimeError as exc:  # an op-specific folder crashed on a valid node (see cleanup.fold_constants)
        if not str(exc).startswith("Error during constant folding"):
            raise
        logging.getLogger(__name__).warning("shape folding stopped early: %s (%s)", exc, exc.__cause__)
        return False
    ir_passes.RemoveUnusedNodesPass()(model)
    synced = sync_initializer_shapes(model.graph)
    return bool(getattr(result, "modified", True)) or bool(synced)


@register("fold-shapes")
def fold_shapes(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Fold shape arithmetic made constant by --shape and re-infer the shapes after it (onnxscript + ONNX)."""
    src = ModelSource(name=model.graph.name or "<model>")
    changed = False
    for _ in range(MAX_ROUNDS):
        changed = _fold(model) or changed
        before = len(open_values(model.graph))
        if not before:
            break
        resolved = reinfer_open_shapes(model, src)
        changed = changed or bool(resolved)
        if not resolved:
            break
    return PassOutcome(changed=changed)
