"""Backend registry: device kind -> Backend class.

Built-in backends are imported lazily; third-party ones register under the
entry-point group ``kcompiler.backends`` (name = kind, value = ``module:BackendClass``).
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from importlib import metadata

from kcompiler.backends.base import Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline
from kcompiler.errors import TargetError

log = logging.getLogger(__name__)

#: kind -> "module:Class"; a table, not an if/else chain over chip names
BUILTIN = {
    "host": "kcompiler.backends.host:HostBackend",
    "npu": "kcompiler.backends.npu:NpuBackend",
    "pim": "kcompiler.backends.pim:PimBackend",
}

ENTRY_POINT_GROUP = "kcompiler.backends"


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@lru_cache(maxsize=None)
def _entry_points() -> dict[str, object]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # pragma: no cover - broken metadata of some installed package
        return {}
    return {ep.name: ep for ep in eps}


@lru_cache(maxsize=None)
def backend_class(kind: str) -> type[Backend] | None:
    if kind in BUILTIN:
        try:
            return _load(BUILTIN[kind])
        except (ImportError, AttributeError):
            return None
    ep = _entry_points().get(kind)
    if ep is None:
        return None
    try:
        cls = ep.load()
    except Exception as exc:
        raise TargetError(f"the backend plugin '{kind}' ({ep.value}) failed to import: {exc}",
                          hint="reinstall the plugin package or uninstall it") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TargetError(f"the backend plugin '{kind}' ({ep.value}) is not a kcompiler Backend subclass")
    return cls


def known_kinds() -> list[str]:
    kinds = [k for k in BUILTIN if backend_class(k) is not None]
    return kinds + [k for k in _entry_points() if k not in BUILTIN]


def spec_class_for_kind(kind: str):
    cls = backend_class(kind)
    return None if cls is None else cls.spec_class


def plugin_target_files() -> list[str]:
    files = []
    for kind in _entry_points():
        if kind in BUILTIN:
            continue
        try:
            cls = backend_class(kind)
        except TargetError as exc:
            log.warning("%s", exc)
            continue
        if cls is not None:
            files.extend(str(f) for f in cls.target_files())
    return files


def make_backend(device, system) -> Backend:
    cls = backend_class(device.kind)
    if cls is None:
        raise TargetError(f"no backend for device kind '{device.kind}' (chip '{device.chip.name}')",
                          hint="install the plugin that provides it")
    return cls(device, system)


__all__ = ["Backend", "Cost", "OpEvent", "Program", "Subgraph", "Support", "Timeline", "backend_class",
           "known_kinds", "make_backend", "spec_class_for_kind"]
