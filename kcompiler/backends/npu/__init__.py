"""A systolic-array NPU: tiler, instruction set, code generation, functional + timing simulation."""

from kcompiler.backends.npu.backend import OPS, NpuBackend, NpuProgram
from kcompiler.backends.npu.spec import NpuSpec

__all__ = ["OPS", "NpuBackend", "NpuProgram", "NpuSpec"]
