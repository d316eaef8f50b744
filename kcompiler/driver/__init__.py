"""The compile driver: one pipeline from an ONNX model to a CompiledModel (compile.py), loading
an artifact into the same assembly (loading.py, model.py), and `--parallel auto` over it (auto.py).

Every step is a registered pass over one CompileContext (kcompiler.passes.manager):
    optimize (cleanup, fusion) -> parallelise | placement -> partition -> lower
"""

from kcompiler.driver.compile import MODES, compile
from kcompiler.driver.context import make_backends
from kcompiler.driver.loading import Artifact, load, original_reference
from kcompiler.driver.model import CompiledModel, assemble, random_array

__all__ = ["MODES", "Artifact", "CompiledModel", "assemble", "compile", "load", "make_backends", "original_reference",
           "random_array"]
