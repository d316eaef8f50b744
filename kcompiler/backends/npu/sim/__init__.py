"""Functional simulation of an NPU program: instructions executed over memory images.

The simulator sees a program (instructions, buffer table, input/output bindings, the initial
DRAM contents the compiler laid out) and nothing else: it imports neither onnx nor onnx_ir
and never looks at a model. Each device has one DRAM image (bytes); each core a scratchpad
(bytes). Values follow program order; tokens only order time (timing.py).

Before a program first runs, ``check`` walks it once over validity maps of the same memories:
every access must lie inside its buffer (DRAM) or scratchpad (SRAM), read only bytes some
earlier instruction (or the initial image, or an input) wrote, and never write a weight or an
input; reserved fields must be zero. These checks depend on no data, so they run once. A
failure is an ExecutionError naming the instruction, its assembly text and its op.

A program compiled for a partition of a chip (a virtual NPU) has a DRAM window: its buffers and
every DRAM access must lie inside it, or the program faults (PartitionFault). The fence is in the
Decoder, which every path (the checker, the reference walk, the Replay's plan) decodes DRAM
accesses through; the DRAM image covers the window from its base, not the chip's whole DRAM.

Two ways to run it, with the same values bit for bit (tests/backends/npu/test_npu_sim.py): the
reference walk decodes every instruction and executes it on the images (``Machine``); the
``Replay`` compiles the same walk once into closures over precomputed views, and does not copy a
tile into the scratchpad while its consumers can read it where it came from (the LOAD becomes a
view of DRAM until the DRAM or the scratchpad under it changes). Every closure makes the calls
the walk makes (same BLAS shapes and orientation: OpenBLAS rounds differently when those change),
so nothing is shortcut: a changed field changes what runs.

The package, one idea a module: ``data`` (the program as plain data), ``faults`` (how a bad
instruction is reported), ``memory`` (accesses and views of the images), ``window`` (the window
registers), ``decode`` and ``vector_spec`` (fields to accesses, with the reserved-field checks),
``checker`` (the static check), ``matrix`` and ``vector`` (what the units compute on arrays),
``walk`` (the reference walk), ``replay`` (the precompiled walk), ``simulator`` (both behind one
object). Below: the names the compiler, the mutation tester, timing and tests import from here.
"""

from kcompiler.backends.npu.sim.checker import _binding_access, check
from kcompiler.backends.npu.sim.data import NP_DTYPES, Binding, Buffer, ProgramData
from kcompiler.backends.npu.sim.decode import Decoder
from kcompiler.backends.npu.sim.faults import _Bad
from kcompiler.backends.npu.sim.memory import Access, byte_view
from kcompiler.backends.npu.sim.replay import Replay
from kcompiler.backends.npu.sim.simulator import Simulator
from kcompiler.backends.npu.sim.vector_spec import _VSPEC
from kcompiler.backends.npu.sim.walk import Machine
from kcompiler.backends.npu.sim.window import _valid

__all__ = ["NP_DTYPES", "Access", "Binding", "Buffer", "Decoder", "Machine", "ProgramData", "Replay", "Simulator",
           "_Bad", "_VSPEC", "_binding_access", "_valid", "byte_view", "check"]
