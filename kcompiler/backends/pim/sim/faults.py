"""How a bad command is reported: _Fail inside the units, an ExecutionError naming the command, its
text and the node it was generated for outside."""

from __future__ import annotations

from kcompiler.backends.pim.sim.code import Code, Step
from kcompiler.errors import ExecutionError


class _Fail(Exception):
    pass



def _error(code: Code, i: int, why: str) -> ExecutionError:
    c = code.commands[i]
    st = code.steps[c.step] if c.step < len(code.steps) else Step("?", "?")
    return ExecutionError(f"PIM command {i} `{c.text()}` of node '{st.name}' ({st.op_type}): {why}")

