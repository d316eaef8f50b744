"""The CIM chip's simulator: executes a program's instructions over its activation memory and the
crossbars' programmed conductances (functional, run.py), and times them (timing.py). It sees no model:
only the instruction rows, the crossbar images and the memory image the compiler produced."""

from kcompiler.backends.cim.sim.code import Binding, Code, Images
from kcompiler.backends.cim.sim.crossbars import Crossbars
from kcompiler.backends.cim.sim.run import execute

__all__ = ["Binding", "Code", "Crossbars", "Images", "execute"]
