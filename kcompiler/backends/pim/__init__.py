"""DRAM processing-in-memory backend (SK hynix AiM-like and Samsung HBM-PIM-like devices).

The backend (lowering: planning, bank layout, command generation) reads ONNX graphs; its simulator
(sim/) must not, so this package imports the backend only when it is asked for."""

from __future__ import annotations

__all__ = ["PimBackend", "PimProgram", "PimSpec"]


def __getattr__(name: str):
    if name in ("PimBackend", "PimProgram"):
        from kcompiler.backends.pim import backend

        return getattr(backend, name)
    if name == "PimSpec":
        from kcompiler.backends.pim.spec import PimSpec

        return PimSpec
    raise AttributeError(name)
