"""Compiled artifacts (.kcm): the container (container.py) and writing one (writer.py).

Loading one is the driver's (kcompiler.driver.loading): it rebuilds the programs and assembles the
CompiledModel exactly as a compile does.
"""

from kcompiler.artifact.container import read_manifest
from kcompiler.artifact.writer import save

__all__ = ["read_manifest", "save"]
