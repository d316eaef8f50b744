"""DRAM processing-in-memory backend (SK hynix AiM-like and Samsung HBM-PIM-like devices)."""

from kcompiler.backends.pim.backend import PimBackend, PimProgram
from kcompiler.backends.pim.spec import PimSpec

__all__ = ["PimBackend", "PimProgram", "PimSpec"]
