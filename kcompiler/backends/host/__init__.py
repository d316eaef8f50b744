"""The host CPU: runs any subgraph with ONNX Runtime (the fallback device)."""

from kcompiler.backends.host.backend import HostBackend, HostProgram, HostSpec, extract_model

__all__ = ["HostBackend", "HostProgram", "HostSpec", "extract_model"]
