"""Binding graph inputs to compile-time constants (``--bind NAME=VALUE`` or ``bind={name: value}``).

A flag input such as silero-vad's sample rate ``sr`` selects a branch of an ``If`` at run time; once the
user fixes it, the input becomes an initializer of the graph, constant folding turns the ``If``'s
condition into a constant, and kcompiler.passes.control inlines the chosen branch so its nodes can be
placed on a chip. The bound input leaves the compiled model's inputs; its value is recorded in the
model's metadata (BOUND_KEY) so that a run feeding it is refused with a message naming the binding and
`--check` can give ONNX Runtime the same value on the original model.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler.errors import InputError
from kcompiler.frontend.reading import ModelSource

#: model metadata key: {input name: the bound value as a (nested) list, its dtype name}
BOUND_KEY = "kcompiler.bound"

#: a bound input is a flag or a small table, not a weight: more elements than this are refused
MAX_BIND_ELEMENTS = 4096


def parse_bind_spec(spec: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line; VALUE stays text (its dtype is the model input's)."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InputError(f"--bind '{spec}': expected NAME=VALUE, e.g. sr=16000 or mask=1,0,1",
                         hint="VALUE is a number, true/false, or a list such as [1,2,3] or [[1,2],[3,4]]")
    return name.strip(), value.strip()


def _parse_text(name: str, text: str) -> Any:
    """A number, a boolean or a (nested) list of them, from the text after NAME=."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("nan", "inf", "-inf", "+inf"):
        return float(lowered)
    if "," in lowered and not lowered.startswith(("[", "(")):
        lowered = f"[{lowered}]"  # 1,0,1 -> a 1-D list
    lowered = lowered.replace("true", "True").replace("false", "False")
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise InputError(f"--bind {name}={text}: the value is not a number, true/false or a list of numbers",
                         hint="e.g. --bind sr=16000, --bind flag=true, --bind mask=[1,0,1]") from None


def _as_array(name: str, value: Any) -> np.ndarray:
    shown = value if isinstance(value, str) else repr(value)[:80]
    if isinstance(value, str):
        value = _parse_text(name, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):  # a ragged list
        raise InputError(f"bind value for input '{name}' ({shown}) is not a rectangular array",
                         hint="give a number or a list whose rows have equal lengths") from None
    if arr.dtype == object:  # an integer beyond 64 bits: as a float, the dtype check says it does not fit
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            pass
    if arr.dtype.kind not in "biuf":
        raise InputError(f"bind value for input '{name}' ({shown}) is not numeric (it is {arr.dtype})",
                         hint="give a number, true/false, or a list of numbers")
    return arr


def _fit_dtype(name: str, arr: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """`arr` as the input's dtype, refusing a value that the dtype cannot hold exactly."""
    try:
        target = np.dtype(dtype.numpy())
    except (TypeError, ValueError):
        target = None
    if target is None or (target.kind not in "biuf" and not target.name.startswith(("bfloat16", "float8"))):
        raise InputError(f"input '{name}' is of type {dtype.name}, which --bind cannot fix",
                         hint="bind numeric or boolean inputs only")
    what = f"bind value for input '{name}' ({_show(arr)})"
    if target.kind == "b":
        if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise InputError(f"{what} does not fit its type BOOL", hint="give true/false (or 1/0)")
        return arr.astype(bool)
    if target.kind in "iu":
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise InputError(f"{what} is not an integer, but the input is {dtype.name}", hint="give an integer")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InputError(f"{what} is out of the range of {dtype.name} [{info.min}, {info.max}]")
        return arr.astype(target)
    out = arr.astype(target)
    if (np.isfinite(arr) & ~np.isfinite(out.astype(np.float64))).any():
        raise InputError(f"{what} overflows the input's type {dtype.name}")
    return out


def _fit_shape(name: str, arr: np.ndarray, value: ir.Value) -> np.ndarray:
    shape = value.shape
    if shape is None:
        return arr
    dims = list(shape)
    if arr.ndim == 0 and len(dims) > 0 and all(isinstance(d, int) and d == 1 for d in dims):
        return arr.reshape([1] * len(dims))  # a scalar for a [1] or [1,1] flag
    if arr.ndim != len(dims):
        raise InputError(f"bind value for input '{name}' ({_show(arr)}) has rank {arr.ndim}, but the input has "
                         f"rank {len(dims)} ({_dims(dims)})",
                         hint=f"give {'a scalar' if not dims else f'a {len(dims)}-D list'}")
    for i, (have, got) in enumerate(zip(dims, arr.shape)):
        if isinstance(have, int) and have >= 0 and have != got:
            raise InputError(f"bind value for input '{name}' has shape {list(arr.shape)}, but dim {i} of the input "
                             f"is fixed at {have} ({_dims(dims)})")
    return arr


def bind_inputs(model: ir.Model, bind: Mapping[str, Any] | None, src: ModelSource,
                shapes: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Turn each bound graph input into an initializer holding its value; returns the values bound.

    Runs before shape binding, so that a bound input needs no --shape."""
    if not bind:
        return {}
    if not isinstance(bind, Mapping):
        raise InputError(f"bind must be a dict of input name -> value, got {type(bind).__name__}",
                         hint="e.g. bind={'sr': 16000}")
    inputs = {v.name: v for v in model.graph.inputs}
    unknown = [n for n in bind if n not in inputs]
    if unknown:
        raise InputError(f"{src.name}: --bind names {unknown}, which are not inputs of the model",
                         hint=f"the inputs are {sorted(inputs)}")
    both = sorted(set(bind) & set(shapes or {}))
    if both:
        raise InputError(f"{src.name}: {both} given both --bind and --shape",
                         hint="a bound input takes its shape from its value: drop its --shape")
    bound, record = {}, {}
    for name, raw in bind.items():
        value = inputs[name]
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            raise InputError(f"{src.name}: input '{name}' is a {value.type}, which --bind cannot fix",
                             hint="bind tensor inputs only")
        if value.dtype is None:
            raise InputError(f"{src.name}: input '{name}' declares no element type, so --bind cannot fix it")
        arr = _as_array(name, raw)
        if arr.size > MAX_BIND_ELEMENTS:
            raise InputError(f"bind value for input '{name}' has {arr.size} elements; --bind fixes flags and small "
                             f"tables (at most {MAX_BIND_ELEMENTS})", hint="feed large inputs at run time")
        arr = _fit_shape(name, _fit_dtype(name, arr, value.dtype), value)
        model.graph.inputs.remove(value)
        value.shape = ir.Shape(arr.shape)
        value.const_value = ir.tensor(arr, dtype=value.dtype, name=name)
        model.graph.register_initializer(value)
        bound[name] = arr
        record[name] = {"value": arr.tolist() if arr.dtype.kind in "biu" else arr.astype(np.float64).tolist(),
                        "dtype": value.dtype.name}
    model.metadata_props[BOUND_KEY] = json.dumps(record, sort_keys=True)
    src.notes.append("bound at compile time: " + ", ".join(f"{n}={_show(a)}" for n, a in bound.items()))
    return bound


def bound_values(model: ir.Model) -> dict[str, np.ndarray]:
    """The inputs bound when `model` was compiled (BOUND_KEY), as arrays of their dtypes."""
    text = model.metadata_props.get(BOUND_KEY) if model is not None else None
    if not text:
        return {}
    try:
        record = json.loads(text)
        return {name: np.asarray(item["value"], dtype=np.dtype(ir.DataType[item["dtype"]].numpy()))
                for name, item in record.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _show(arr: np.ndarray) -> str:
    if arr.ndim == 0:
        v = arr.item()
        if isinstance(v, bool):
            return str(v).lower()
        return repr(v) if isinstance(v, float) and math.isnan(v) else str(v)
    text = json.dumps(arr.tolist())
    return text if len(text) <= 40 else text[:37] + "..."


def _dims(dims) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else (getattr(d, "value", None) or "?") for d in dims) + "]"
