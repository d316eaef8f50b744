"""Functional simulator of a PIM device: executes a program's command list over memory images.

The memories: per device the bank image ``bank[channel, bank, row, column, lane]`` (raw element
bits of the device dtype: bf16 on aim, fp16 on hbm-pim) with a validity bit per column; per
channel the global buffer (the input vector the units read); per unit the MAC result registers
(the accumulator dtype); the 16 host shift registers of the FP16 scaling; and the staging area,
the host-visible I/O buffer where program inputs are written, operands converted, partial sums
read back and reduced, and outputs read, with a validity bit per 16-bit word.

Nothing here knows the model: a program is commands + descriptors + a bank image + constants +
a table binding input/output names to staging addresses. This module imports neither onnx nor
onnx_ir (tests/backends/pim/test_sim.py checks it).

Two execution paths give identical results (tested): command by command, and a fast path used
only where the command fields prove it equivalent: within a run of device commands, the p-th
command of every channel executes as one numpy call when their fields are identical but for the
channel and staging address and no channel writes staging another channel of the run touches
(channels share nothing else); a run of HADDs is one unbuffered np.add.at, which adds repeated
destinations in command order. Field checks and staging geometry are done once per program.

Every run starts from the program's image (copied: a run's writes do not leak into the next).

The package, one idea a module: ``numerics`` (dtypes, FP16 scaling), ``activation`` (the AF
unit's table), ``code`` (the program as data), ``faults``, ``memory`` (the bank image, buffers,
registers, staging), ``device`` and ``host`` (the commands' semantics), ``machine`` (memories and
units together), ``checks`` (the static decoder checks), ``plan`` (the lock-step fast path) and
``run``. Below: the names the backend, mutate.py and tests import from here.
"""

from kcompiler.backends.pim.isa import RANGE_RULES
from kcompiler.backends.pim.sim.activation import AF_FUNCS
from kcompiler.backends.pim.sim.code import Binding, Code, Step
from kcompiler.backends.pim.sim.device import write_image
from kcompiler.backends.pim.sim.machine import Machine
from kcompiler.backends.pim.sim.numerics import NP_DTYPES, amax, shift_for, split_shift
from kcompiler.backends.pim.sim.run import execute, prefix_machine, state, step

__all__ = ["AF_FUNCS", "NP_DTYPES", "RANGE_RULES", "Binding", "Code", "Machine", "Step", "amax", "execute",
           "prefix_machine", "shift_for", "split_shift", "state", "step", "write_image"]
