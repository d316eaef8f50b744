"""Backends: the Backend interface (base.py) and making one for a device.

Which class implements a chip kind is kcompiler.targets.kinds' table (built-in kinds and the
entry-point group ``kcompiler.backends`` for plugins).
"""

from __future__ import annotations

from kcompiler.backends.base import Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline
from kcompiler.errors import TargetError
from kcompiler.targets.kinds import backend_class, known_kinds, spec_class_for_kind


def make_backend(device, system) -> Backend:
    cls = backend_class(device.kind)
    if cls is None:
        raise TargetError(f"no backend for device kind '{device.kind}' (chip '{device.chip.name}')",
                          hint="install the plugin that provides it")
    return cls(device, system)


__all__ = ["Backend", "Cost", "OpEvent", "Program", "Subgraph", "Support", "Timeline", "backend_class",
           "known_kinds", "make_backend", "spec_class_for_kind"]
