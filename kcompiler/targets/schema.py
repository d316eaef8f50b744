"""Validate TOML tables against frozen dataclasses.

Each field may carry ``metadata={"min": ..., "max": ..., "choices": ..., "unit": ...}``.
Unknown keys, missing keys, wrong types and out-of-range values are TargetErrors naming
the file, the key and what is allowed (SCALE-Sim only warns; we refuse).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from kcompiler.errors import TargetError


def field(default=dataclasses.MISSING, *, min=None, max=None, choices=None, unit="", doc=""):
    meta = {"min": min, "max": max, "choices": choices, "unit": unit, "doc": doc}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def from_table(cls, table: Any, file: str | Path, path: str):
    """Build dataclass ``cls`` from a TOML table, checking every key."""
    where = f"{file}: [{path}]" if path else f"{file}"
    if not isinstance(table, dict):
        raise TargetError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {unknown}",
                          hint=f"allowed keys are {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TargetError(f"{file}: missing key '{key}'", hint=f.metadata.get("doc") or None)
            continue
        kwargs[name] = _convert(hints[name], table[name], f, file, key)
    try:
        return cls(**kwargs)
    except TargetError:
        raise
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{where}: {exc}") from None


def _convert(tp, value, f, file, key):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, f, file, key)
    if dataclasses.is_dataclass(tp):
        return from_table(tp, value, file, key)
    if origin in (tuple, list):
        (elem, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise TargetError(f"{file}: '{key}' must be a list, got {value!r}")
        items = [_convert(elem, v, f, file, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise TargetError(f"{file}: '{key}' must be a table, got {value!r}")
        return {k: _convert(vt, v, f, file, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TargetError(f"{file}: '{key}' must be a number, got {value!r}")
        value = float(value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TargetError(f"{file}: '{key}' must be an integer, got {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise TargetError(f"{file}: '{key}' must be true or false, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise TargetError(f"{file}: '{key}' must be a string, got {value!r}")
    meta = f.metadata
    lo, hi, choices, unit = meta.get("min"), meta.get("max"), meta.get("choices"), meta.get("unit", "")
    if choices is not None and value not in choices:
        raise TargetError(f"{file}: '{key}' = {value!r} is not allowed", hint=f"choose one of {list(choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise TargetError(f"{file}: '{key}' must be a finite number")
        if lo is not None and value < lo:
            raise TargetError(f"{file}: '{key}' = {value} {unit}".rstrip() + f" is below the minimum {lo}",
                              hint=f"allowed range: {lo} .. {hi if hi is not None else 'any'} {unit}".rstrip())
        if hi is not None and value > hi:
            raise TargetError(f"{file}: '{key}' = {value} {unit}".rstrip() + f" is above the maximum {hi}",
                              hint=f"allowed range: {lo if lo is not None else 'any'} .. {hi} {unit}".rstrip())
    return value


def to_table(obj) -> dict:
    """The inverse of from_table, for `kc targets show` and artifacts. An optional figure left
    out of the TOML (None) is left out here too, so that from_table reads it back as not given."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            out[f.name] = to_table(v)
        elif isinstance(v, (list, tuple)):
            out[f.name] = [to_table(x) if dataclasses.is_dataclass(x) else x for x in v]
        elif isinstance(v, dict):
            out[f.name] = {k: to_table(x) if dataclasses.is_dataclass(x) else x for k, x in v.items()}
        else:
            out[f.name] = v
    return out
