"""Analog compute-in-memory backend (IBM HERMES-like PCM and ISAAC-like ReRAM crossbar chips).

The backend (mapping and lowering, which read ONNX graphs) is imported on first use; the simulator
(sim/, isa, devices, spec, conditions, program) must not read a model."""

from __future__ import annotations

__all__ = ["CimBackend", "CimProgram", "CimSpec"]


def __getattr__(name: str):
    if name == "CimBackend":
        from kcompiler.backends.cim.backend import CimBackend

        return CimBackend
    if name == "CimProgram":
        from kcompiler.backends.cim.program import CimProgram

        return CimProgram
    if name == "CimSpec":
        from kcompiler.backends.cim.spec import CimSpec

        return CimSpec
    raise AttributeError(name)
