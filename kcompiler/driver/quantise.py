"""compile(..., dtype=..., calibrate=...): the model to compile at the dtype asked for.

int8 / fp8 / int4: a zoo model the zoo builds at that dtype itself (zoo.builds_dtype: the transformers)
is built so; any other model is quantised by kcompiler.quantize (ONNX Runtime's quantiser) with the
user's calibration data, the zoo's default set, or, for a timing-only compile of a file given none,
synthetic inputs (and the report says so). fp32 / fp16 / bf16: zoo models take it as a build option; a
file must already be at that dtype (kcompiler does not convert float files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kcompiler import zoo
from kcompiler.errors import KCError
from kcompiler.quantize import DTYPES, FLOAT_DTYPES, model_dtype, quant_info, quantize

#: zoo models this large are not quantised by running them (their weights are a sparse file of zeros)
_LARGEST_QUANTISED = 100_000_000


@dataclass
class Source:
    """What compile loads: the model (possibly the quantised ModelProto), the zoo options left for it,
    its display name, the dtype asked for, and the notes the report gets."""

    model: Any
    zoo_options: dict
    name: str | None
    dtype: str | None
    notes: list[str] = field(default_factory=list)


def _zoo_entry(model: Any):
    return zoo.entries().get(model) if isinstance(model, str) else None


def _builds(name: str, dtype: str) -> bool:
    return zoo.builds_dtype(name, dtype)


def source(model: Any, dtype: str | None, calibrate: Any, mode: str, zoo_options: dict,
           name: str | None = None) -> Source:
    """The model to load for `dtype` (None: as given), quantising it first where needed."""
    entry = _zoo_entry(model)
    if dtype is None or dtype in FLOAT_DTYPES:
        if calibrate is not None:
            raise KCError(f"--calibrate: calibration data is for quantised dtypes, not {dtype or 'the default'}",
                          hint=f"add --dtype {' or '.join(d for d in DTYPES if d != 'int4')}, or drop --calibrate")
        opts = dict(zoo_options)
        if dtype is not None and (entry is None or "dtype" not in entry.options):
            opts.pop("dtype", None)  # a file, or a zoo CNN (fp32 only): checked once loaded (check_float_dtype)
        return Source(model, opts, name, dtype)
    if dtype not in DTYPES:
        raise KCError(f"dtype '{dtype}' is not one of {', '.join(FLOAT_DTYPES + DTYPES)}")
    if entry is not None and _builds(model, dtype):
        notes = [f"{model} built at {dtype} by the zoo"]
        if calibrate is not None:
            notes.append(f"the zoo builds {model} at {dtype} itself: the calibration data given was not used")
        return Source(model, dict(zoo_options), name, dtype, notes)
    opts = {k: v for k, v in zoo_options.items() if v is not None and k != "dtype"}
    if entry is not None:
        _refuse_large(model, entry, dtype, opts)
        if entry.family == "cnn" and opts.get("weights") is None:
            opts["weights"] = "random"  # (the bundled files' constant fills have nothing to calibrate)
    if calibrate is None and entry is None and mode == "timing" and dtype != "int4":
        calibrate = "synthetic"
    q = quantize(model, calibrate, dtype=dtype, zoo_options=opts or None)
    info = quant_info(q) or {}
    how = (f"quantised to {dtype} by kcompiler.quantize (ONNX Runtime's quantiser, {info.get('method')}"
           + (f", calibration {info['calibration']})" if info.get("calibration") else ")"))
    shown = name or (model if isinstance(model, str) and entry is not None else _stem(model))
    return Source(q, {}, shown, dtype, [how] + list(info.get("notes", [])))


def _refuse_large(model: str, entry, dtype: str, opts: dict) -> None:
    """A large zoo transformer is not run through the calibrator (its weights are a sparse file of zeros)."""
    info = entry.info(**opts) if getattr(entry, "info", None) is not None else None
    if info and info.get("params", 0) >= _LARGEST_QUANTISED:
        raise KCError(f"zoo model '{model}' ({info['params'] / 1e9:.1f}B parameters) cannot be quantised to {dtype} "
                      "by calibration: its weights are a sparse file of zeros",
                      hint="use a smaller model, or a kcompiler whose zoo builds it at that dtype")


def _stem(model: Any) -> str | None:
    import os
    from pathlib import Path

    return Path(str(model)).stem if isinstance(model, (str, os.PathLike)) else None


def check_float_dtype(irm, src: Source, model: Any) -> None:
    """A float dtype asked for a model the zoo does not build at it must be the model's own."""
    if src.dtype not in FLOAT_DTYPES or (_zoo_entry(model) is not None and "dtype" in src.zoo_options):
        return
    have = model_dtype(irm)
    if have != src.dtype:
        raise KCError(f"--dtype {src.dtype}: '{model}' is a {have} model, and kcompiler does not convert float models",
                      hint=f"drop --dtype, export the model at {src.dtype}, or quantise it: --dtype int8 "
                           "--calibrate DATA")
