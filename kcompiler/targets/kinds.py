"""Chip kinds: kind -> the backend class that implements it, found by name.

A table of the built-in kinds (``host``, ``npu``, ``pim``, ``cim``, ``comm``) plus the entry-point
group ``kcompiler.backends`` (name = kind, value = ``module:BackendClass``) for plugins.
Classes are imported by name when first asked for, so target files can be validated
against a kind's spec class without this package importing the backends (which sit above
it: kcompiler.backends imports kcompiler.targets, never the other way round).
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from importlib import metadata

from kcompiler.errors import TargetError

log = logging.getLogger(__name__)

#: kind -> "module:Class"; a table, not an if/else chain over chip names
BUILTIN = {
    "host": "kcompiler.backends.host:HostBackend",
    "npu": "kcompiler.backends.npu:NpuBackend",
    "pim": "kcompiler.backends.pim:PimBackend",
    "cim": "kcompiler.backends.cim:CimBackend",
    "comm": "kcompiler.backends.comm:CommBackend",
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
def backend_class(kind: str):
    """The Backend subclass for `kind`, or None when no installed backend provides it."""
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
    base = _load("kcompiler.backends.base:Backend")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TargetError(f"the backend plugin '{kind}' ({ep.value}) is not a kcompiler Backend subclass")
    return cls


def known_kinds() -> list[str]:
    """The chip kinds target files may name (the communication backend is no chip)."""
    kinds = [k for k in BUILTIN if (cls := backend_class(k)) is not None and cls.is_chip]
    return kinds + [k for k in _entry_points() if k not in BUILTIN]


def spec_class_for_kind(kind: str):
    cls = backend_class(kind)
    return None if cls is None or not cls.is_chip else cls.spec_class


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
