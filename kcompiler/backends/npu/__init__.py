"""A systolic-array NPU: tiler, instruction set, code generation, functional + timing simulation.

The backend (code generation, which reads ONNX graphs) is imported on first use, so that the
simulator modules (isa, sim, timing, program) load without onnx or onnx_ir.
"""

__all__ = ["OPS", "NpuBackend", "NpuProgram", "NpuSpec"]


def __getattr__(name):
    if name in ("OPS", "NpuBackend"):
        from kcompiler.backends.npu import backend

        return getattr(backend, name)
    if name == "NpuProgram":
        from kcompiler.backends.npu.program import NpuProgram

        return NpuProgram
    if name == "NpuSpec":
        from kcompiler.backends.npu.spec import NpuSpec

        return NpuSpec
    raise AttributeError(name)
