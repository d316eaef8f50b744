"""How the simulator reports a bad instruction: an ExecutionError (or, for a DRAM access outside
the program's partition, a PartitionFault) naming the instruction, its assembly text and its op."""

from __future__ import annotations

from kcompiler.backends.npu.sim.data import ProgramData
from kcompiler.errors import ExecutionError, PartitionFault


def _fail(prog: ProgramData, i: int, what: "str | Exception") -> ExecutionError:
    ins = prog.instrs[i]
    name, op_type = prog.ops[ins.op] if ins.op < len(prog.ops) else ("?", "?")
    text = f"NPU instruction {i} `{ins.text()}` (op {ins.op}: '{name}', {op_type}): {what}"
    if isinstance(what, _Fault):
        return PartitionFault(text, hint="the program reaches outside the DRAM of the partition it was compiled "
                                         "for: another tenant's memory; if kcompiler generated it, this is a bug in "
                                         "its NPU code generator")
    return ExecutionError(text, hint="the program is malformed: if kcompiler generated it, this is a bug in its NPU "
                                     "code generator")


class _Bad(Exception):
    """A check failed (turned into an ExecutionError naming the instruction)."""


class _Fault(_Bad):
    """A DRAM access outside the program's partition window (turned into a PartitionFault)."""
