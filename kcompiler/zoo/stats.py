"""Parameter count and FLOPs of each zoo entry, for `kc zoo`.

Every entry is built (weights are not read: shapes suffice) and loaded through the frontend, and
counted by `opinfo.model_stats`: the same function and the same graph as `kc inspect` shows, so
the figures agree between commands. The counts are kept in the cache folder (zoo.cache_dir), by
kcompiler version, so `kc zoo` builds each model once.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kcompiler.version import __version__
from kcompiler.zoo import ZooEntry, cache_dir


def _cache_path():
    return cache_dir() / f"zoo-stats-{__version__}.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _key(entry: ZooEntry, options: dict) -> str:
    return f"{entry.name}:{json.dumps(options, sort_keys=True)}"


def cached_stats(entry: ZooEntry, **options) -> dict[str, Any] | None:
    """entry_stats' answer if it is in the cache, else None (counting would build the model)."""
    return _read_cache().get(_key(entry, options))


def entry_stats(entry: ZooEntry, **options) -> dict[str, Any]:
    """{"params", "flops" (of one inference), "macs", "nodes", "flops_per_unit", "unit" ("token" or
    "inference"), "options"}."""
    key, path, cache = _key(entry, options), _cache_path(), _read_cache()
    if key in cache:
        return cache[key]
    st = _count(entry, **options)
    cache[key] = st
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: count again next time
        pass
    return st


def _count(entry: ZooEntry, **options) -> dict[str, Any]:
    # (onnx_ir: `kc zoo` with counts in the cache, and kc cluster, never load the frontend)
    from kcompiler import opinfo
    from kcompiler.frontend import load_model

    info = getattr(entry, "info", None)
    meta = info(**options) if info is not None else None
    model, _ = load_model(entry.build(**options))
    st = opinfo.model_stats(model)
    if meta is not None:  # a transformer: per token (LLMs) or per inference, from its options
        unit, opts = meta["unit"], meta["options"]
        per = opts["batch"] * opts["seq"] if unit == "token" else opts["batch"]
    else:
        unit, opts = "inference", {}
        shape = opinfo.shape_of(model.graph.inputs[0]) if model.graph.inputs else None
        per = shape[0] if shape else 1
    return {**st, "flops_per_unit": st["flops"] / max(per, 1), "unit": unit, "options": opts}


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
