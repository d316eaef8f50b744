"""PIM kernels: bank layout and command generation (planning side; values are never touched here).

emitter.py collects a program's commands (and keeps a timing-mode product's blocks packed);
matvec.py lays out and emits matrix-vector products, stream.py element-wise streams, columns.py
the bank-column runs and transfer descriptors both use (and `CommandSink`, the Emitter as both see
it); figures.py times and counts a node's commands. The names below are those tests, benchmarks and
mutate.py read from this package.
"""

from __future__ import annotations

from kcompiler.backends.pim.kernels.emitter import Emitter, Packed, unpack
from kcompiler.backends.pim.kernels.figures import Kernel, _command_figures, build_matvec, clear
from kcompiler.backends.pim.kernels.matvec import matvec_items

__all__ = ["Emitter", "Kernel", "Packed", "_command_figures", "build_matvec", "clear", "matvec_items", "unpack"]
