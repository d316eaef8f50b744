"""Binding the graph inputs' shapes (``--shape NAME=DIMS`` or ``shapes={...}``) and the size check
every value's shape must pass."""

from __future__ import annotations

import math
import operator
import re
from typing import Mapping, Sequence

import onnx_ir as ir

from kcompiler.errors import ShapeError
from kcompiler.frontend.reading import MAX_TENSOR_BYTES, ModelSource


def parse_shape_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` from the command line."""
    if "=" not in spec:
        raise ShapeError(f"--shape '{spec}': expected NAME=DIMS, e.g. input=1x3x224x224")
    name, _, dims = spec.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d != "")
    except ValueError:
        raise ShapeError(f"--shape '{spec}': dims must be integers separated by 'x', e.g. 1x3x224x224") from None
    return name, shape


def _open_dims(model: ir.Model, marks: frozenset[int]) -> None:
    """Make every dim in `marks` of the graph's inputs, outputs and annotated values open, like a
    symbolic one, so --shape binds it and shape inference fills it."""
    g = model.graph
    values = list(g.inputs) + list(g.outputs) + [v for n in g for v in n.outputs]
    for v in values:
        if v is not None and v.shape is not None and any(isinstance(d, int) and d in marks for d in v.shape):
            v.shape = ir.Shape([None if isinstance(d, int) and d in marks else d for d in v.shape])


def _zero_dims_bound(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether --shape gives a size to an input dim the model writes as 0.

    Some exporters write 0 for a dynamic dim, as Paddle2ONNX writes -1. A zero-size dim is also
    valid ONNX (an empty tensor), so a 0 stays 0 unless --shape binds it; once bound, the model's
    other 0 dims (its outputs', its annotated values') are the same kind of placeholder."""
    for value in model.graph.inputs:
        try:
            dims = tuple(shapes.get(value.name) or ())
        except TypeError:
            continue  # not a sequence: bind_shapes says so
        if value.shape is None or len(dims) != len(value.shape):
            continue
        if any(isinstance(have, int) and have == 0 and want != 0 for have, want in zip(value.shape, dims)):
            return True
    return False


def _learn_named_dims(value: ir.Value, dims: Sequence[int], named: dict[str, tuple[int, str]],
                      src: ModelSource) -> None:
    """Record the sizes --shape gives the model's named symbolic dims ('batch', 'sequence'); one name
    bound to two sizes is refused."""
    for have, want in zip(value.shape or (), dims):
        name = getattr(have, "value", None) if not isinstance(have, int) else None
        if not _names_a_dim(name):
            continue
        size, by = named.setdefault(name, (want, value.name))
        if size != want:
            raise ShapeError(f"{src.name}: dim '{name}' is bound to {size} by input '{by}' but to {want} by "
                             f"input '{value.name}'", hint=f"give '{name}' one size in every --shape")


def _names_a_dim(name: str | None) -> bool:
    """Whether a symbolic dim's text names one size the model shares ('batch', 'sequence',
    'p2o.DynamicDimension.0'), not a placeholder for "some size" (Paddle's '?', onnx's 'unk__3')."""
    return bool(name) and re.fullmatch(r"[A-Za-z_][\w.]*", name) is not None and not name.startswith("unk__")


def _fill_named_dims(model: ir.Model, named: Mapping[str, tuple[int, str]]) -> None:
    """An input left unbound whose open dims are all named dims --shape already sized (an exported
    transformer's attention_mask shares input_ids' 'batch' and 'sequence') takes those sizes."""
    for value in model.graph.inputs:
        if value.shape is None or all(isinstance(d, int) for d in value.shape):
            continue
        sizes = [d if isinstance(d, int) else named.get(getattr(d, "value", None) or "", (None, ""))[0]
                 if _names_a_dim(getattr(d, "value", None)) else None for d in value.shape]
        if all(isinstance(d, int) for d in sizes):
            value.shape = ir.Shape(sizes)


def bind_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None, src: ModelSource) -> None:
    """Fix every graph input's shape; refuse symbolic dims left unbound."""
    shapes = dict(shapes or {})
    inputs = {v.name: v for v in model.graph.inputs}
    # Paddle2ONNX and other exporters write -1 for a dynamic dim (ONNX Runtime accepts it), some 0;
    # other negative dims stay, for the checks that refuse them
    textual = {k: parse_shape_spec(f"{k}={v}")[1] if isinstance(v, str) else v for k, v in shapes.items()}
    _open_dims(model, frozenset({-1, 0}) if _zero_dims_bound(model, textual) else frozenset({-1}))
    src.symbolic = tuple(v.name for v in model.graph.inputs
                         if v.shape is None or any(not isinstance(d, int) for d in v.shape))
    unknown = [n for n in shapes if n not in inputs]
    if unknown:
        raise ShapeError(f"{src.name}: --shape names {unknown}, which are not inputs of the model",
                         hint=f"the inputs are {sorted(inputs)}")
    named: dict[str, tuple[int, str]] = {}  # a symbolic dim's name -> (its bound size, the input that bound it)
    for name, dims in shapes.items():
        value = inputs[name]
        dims = _as_dims(name, dims, src)
        if any(d <= 0 for d in dims):
            raise ShapeError(f"{src.name}: input '{name}' bound to {dims}: every dim must be positive")
        if value.shape is not None and len(value.shape) != len(dims):
            raise ShapeError(f"{src.name}: input '{name}' has rank {len(value.shape)} ({_fmt(value.shape)}) "
                             f"but --shape gives {len(dims)} dims", hint=f"give {len(value.shape)} dims")
        if value.shape is not None:
            for i, (have, want) in enumerate(zip(value.shape, dims)):
                if isinstance(have, int) and have != want:
                    raise ShapeError(f"{src.name}: input '{name}' dim {i} is fixed at {have} in the model "
                                     f"but --shape asks for {want}",
                                     hint=f"the model's own shape of '{name}' is {_fmt(value.shape)}: bind only its "
                                          "open dims, or export the model with this dim dynamic")
        _learn_named_dims(value, dims, named, src)
        value.shape = ir.Shape(dims)
    _fill_named_dims(model, named)
    missing, example = [], None
    for value in model.graph.inputs:
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            continue  # sequences/optionals: their elements' shapes vary per run, nothing to bind
        if value.shape is None or any(not isinstance(d, int) for d in value.shape):
            missing.append(f"{value.name} {_fmt(value.shape)}")
            if example is None and value.shape is not None:  # its own rank, open dims as 1
                dims = "x".join(str(d) if isinstance(d, int) else "1" for d in value.shape)
                example = f"--shape {value.name}={dims}"
    if missing:
        raise ShapeError(f"{src.name}: the shapes of these inputs are not known: {', '.join(missing)}",
                         hint=f"bind each with --shape NAME=DIMS (e.g. {example or '--shape x=1x3x224x224'}) "
                              "or shapes={...} in Python")
    for value in model.graph.inputs:
        check_size(value, src)


def _as_dims(name: str, dims, src: ModelSource) -> tuple[int, ...]:
    """Dims given for one input: a sequence of ints, or text such as "1x3x224x224"."""
    if isinstance(dims, str):
        return parse_shape_spec(f"{name}={dims}")[1]
    try:
        return tuple(operator.index(d) for d in dims)
    except TypeError:
        raise ShapeError(f"{src.name}: the shape given for input '{name}' must be a sequence of integers, "
                         f"got {dims!r}", hint="e.g. shapes={'x': (1, 3, 224, 224)}") from None


def _fmt(shape) -> str:
    """A shape as messages show it: [1,3,?,224]."""
    if shape is None:
        return "[?]"
    return "[" + ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in shape) + "]"


def check_size(value: ir.Value, src: ModelSource) -> None:
    """Refuse a value whose shape is negative or larger than MAX_TENSOR_BYTES."""
    if value.shape is None:
        return
    dims = [d for d in value.shape if isinstance(d, int)]
    if any(d < 0 for d in dims):
        node = value.producer()
        made_by = f" (output of {node.op_type} node '{node.name}')" if node is not None else ""
        raise ShapeError(f"{src.name}: '{value.name}'{made_by} has a negative dim {_fmt(value.shape)}",
                         hint=f"check {node.op_type} '{node.name}''s attributes and constant inputs (a negative "
                              "scale, size or pad)" if node is not None else "check --shape and the model's dims")
    try:
        size = value.dtype.itemsize if value.dtype is not None and value.dtype.itemsize else 4
    except TypeError:  # STRING has no fixed width (onnx_ir raises); count 4 bytes per element
        size = 4
    if math.prod(dims) * size > MAX_TENSOR_BYTES:
        raise ShapeError(f"{src.name}: '{value.name}' has shape {_fmt(value.shape)} "
                         f"({math.prod(dims) * size / 2**30:.0f} GiB), more than kcompiler accepts",
                         hint="check --shape and the model's declared dims")
