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

from kcompiler.frontend.inference import open_values, reinfer_open_shapes, sync_initializer_shapes
from kcompiler.frontend.reading import ModelSource
from kcompiler.passes import control
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


def _numbers(value: ir.Value | None) -> list | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy().reshape(-1).tolist()


def _output_elements(node: ir.Node) -> int | None:
    """How many elements a size-making op (Range, ConstantOfShape, Expand, Tile) of constant inputs
    would produce, computed before the folder evaluates it; None for other ops or unknown inputs."""
    if node.domain not in ("", "ai.onnx"):
        return None
    ins = list(node.inputs)
    if node.op_type == "Range" and len(ins) == 3:
        start, limit, delta = (_numbers(v) for v in ins)
        if not (start and limit and delta) or delta[0] == 0:
            return None
        return max(math.ceil((limit[0] - start[0]) / delta[0]), 0)
    if node.op_type == "ConstantOfShape" and ins:
        dims = _numbers(ins[0])
        return math.prod(dims) if dims is not None and min(dims, default=0) >= 0 else None
    if node.op_type in ("Expand", "Tile") and len(ins) >= 2 and ins[0] is not None and ins[0].shape is not None:
        have, arg = ins[0].shape, _numbers(ins[1])
        if arg is None or not all(isinstance(d, int) for d in have):
            return None
        if node.op_type == "Tile":
            return math.prod(d * r for d, r in zip(have, arg)) if len(arg) == len(have) else None
        rank = max(len(have), len(arg))
        a, b = [1] * (rank - len(have)) + list(have), [1] * (rank - len(arg)) + list(arg)
        return math.prod(max(x, y) for x, y in zip(a, b))
    return None


def _shape_like(node: ir.Node) -> bool | None:
    """cleanup's rule (never the quantisation ops, NEVER_FOLD, nor the contrib ops), else True for a
    node whose inputs and outputs are all small-enough integer or bool tensors (shape, index and
    mask arithmetic), or a small ConstantOfShape; None leaves the decision to onnxscript."""
    if node.op_type in NEVER_FOLD or node.domain == "com.microsoft":
        return False
    size = _output_elements(node)
    if size is not None and size > FOLD_OUTPUT_LIMIT:
        return False  # (the folder would allocate it before its size check; re-inference then refuses it)
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
        # onnxscript never folds it (not to grow the model with big fills), but a causal mask built
        # from ConstantOfShape -> Trilu at the bound sequence length is small and then folds whole
        return True if size is not None and size <= FOLD_INPUT_LIMIT else None
    values = [v for v in list(node.inputs) + list(node.outputs) if v is not None]
    if not values or any(v.dtype not in _INT_TYPES for v in values):
        return None
    # forced only when every input and output is known to be small: the folder evaluates first and
    # checks the size after, so a Range to 10^12 of unknown shape is left to its default rules
    sizes = [v.const_value.size for v in node.inputs if v is not None and v.const_value is not None]
    for v in node.outputs:
        if v.shape is None or not all(isinstance(d, int) and d >= 0 for d in v.shape):
            return None
        sizes.append(math.prod(v.shape))
    return True if all(s <= INT_FOLD_LIMIT for s in sizes) else None


def _fold(model: ir.Model) -> bool:
    try:
        # (the folder evaluates what the model computes, inf and nan included: T5's buckets take the log
        # of 0 and cast -inf to int64 where a Where then discards it, as in PyTorch; numpy must not warn)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = control.fold_constants(model, input_size_limit=FOLD_INPUT_LIMIT,
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
