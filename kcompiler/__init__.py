"""kcompiler: compile ONNX models for simulated NPU and PIM chips, and run them for values and time.

    cm = kcompiler.compile("model.onnx", target="npu", shapes={"x": (1, 3, 224, 224)})
    outs = cm.run({"x": x})
    rep = cm.report
"""

from __future__ import annotations

__version__ = "0.1.0"

from kcompiler.errors import KCError  # noqa: E402


def compile(*args, **kwargs):
    from kcompiler.compiler import compile as _compile

    return _compile(*args, **kwargs)


# `kcompiler.targets()` and `kcompiler.zoo()` list names; the packages themselves are callable
from kcompiler import targets, zoo  # noqa: E402


def load(path):
    """Load a compiled artifact (.kcm)."""
    from kcompiler.runtime.artifact import load as _load

    return _load(path)


__all__ = ["KCError", "__version__", "compile", "load", "targets", "zoo"]
