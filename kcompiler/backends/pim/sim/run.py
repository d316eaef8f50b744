"""Running a program: a machine started from the program's image, constants and inputs, then the
plan executed (or, for mutation analysis, the commands one by one), and the outputs read back."""

from __future__ import annotations

import math

import numpy as np

from kcompiler.backends.pim.isa import HOST_OPS, Command
from kcompiler.backends.pim.sim.checks import _check_buffer_table, _static_error
from kcompiler.backends.pim.sim.code import Code
from kcompiler.backends.pim.sim.faults import _error, _Fail
from kcompiler.backends.pim.sim.machine import Machine
from kcompiler.backends.pim.sim.numerics import NP_DTYPES
from kcompiler.backends.pim.sim.plan import _plan
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError


def prefix_machine(spec: PimSpec, code: Code, feeds: dict, stop: int) -> Machine:
    """The memories after commands [0, stop) ran one by one (for mutation analysis)."""
    m = _start(spec, code, feeds)
    for i in range(stop):
        step(m, i, code.commands[i])
    return m


def step(m: Machine, i: int, c: Command) -> None:
    """Execute one command on a machine (ExecutionError on failure)."""
    code = m.code
    try:
        bad = _static_error(code, c, m.spec)
        if bad:
            raise _Fail(bad)
        if c.op in HOST_OPS:
            m.host(c)
        else:
            m.exec_group([c])
    except _Fail as exc:
        raise ExecutionError(f"PIM command {i} `{c.text()}`: {exc}") from None
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise ExecutionError(f"PIM command {i} `{c.text()}`: {type(exc).__name__}: {exc}") from None


def state(m: Machine) -> tuple:
    """Every memory of a machine (for comparing two runs)."""
    return (m.bank, m.bank_valid, m.gb, m.gb_valid, m.acc.view(np.uint8), m.acc_valid, m.staging, m.valid,
            m.sreg, m.sreg_valid)


def _start(spec: PimSpec, code: Code, feeds: dict, share: bool = True) -> Machine:
    """A machine with the program's image and constants, and the inputs written to their bindings."""
    m = Machine(spec, code, share)
    for b in code.inputs:
        if b.name not in feeds:
            raise ExecutionError(f"PIM program input '{b.name}' was not given")
        x = np.asarray(feeds[b.name])
        if math.prod(x.shape) != math.prod(b.shape):
            raise ExecutionError(f"PIM program input '{b.name}' has shape {x.shape}, the program {b.shape}")
        try:
            v, ok = m._view(b.addr, b.dtype, [math.prod(b.shape)], [1], f"input '{b.name}'", read=False)
        except _Fail as exc:
            raise ExecutionError(f"PIM program input '{b.name}': {exc}") from None
        v[...] = x.reshape(-1).astype(NP_DTYPES[b.dtype])
        m._mark(ok)
    return m


def execute(spec: PimSpec, code: Code, feeds: dict, fast: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Run the program on `feeds` (name -> array); returns (outputs, counts)."""
    cmds = code.commands
    key = (fast, len(cmds), hash(tuple(cmds)), code.descs.tobytes())
    if code._plan is None or code._plan[0] != key:
        _check_buffer_table(code)
        code._views = {}  # geometry cached for other fields or descriptors
        code._plan = (key, _plan(code, spec, lockstep=fast))
    shared = code._image_lock.acquire(blocking=False)
    try:
        return _run(spec, code, feeds, shared)
    finally:
        if shared:
            code._image_lock.release()


def _run(spec: PimSpec, code: Code, feeds: dict, shared: bool):
    """One run of the plan; on a failing group, the first failing command in program order is named."""
    cmds = code.commands
    m = _start(spec, code, feeds, share=shared)
    for entry in code._plan[1]:
        kind, what = entry[0], entry[1]
        if kind == "error":
            raise _error(code, what, entry[2])
        idx = [what] if kind == "one" else what
        try:
            c = cmds[idx[0]]
            if kind == "hadd":
                m.hadd_run([cmds[k] for k in idx])
            elif c.op in HOST_OPS:
                m.host(c)
            else:
                m.exec_group([cmds[k] for k in idx])
        except _Fail as exc:
            if len(idx) > 1:  # find the first failing command of the group, in program order
                for k in idx:
                    try:
                        if cmds[k].op in HOST_OPS:
                            m.host(cmds[k])
                        else:
                            m.exec_group([cmds[k]])
                    except _Fail as e2:
                        raise _error(code, k, str(e2)) from None
            raise _error(code, idx[0], str(exc)) from None
        except (ValueError, IndexError, OverflowError, MemoryError) as exc:
            raise _error(code, idx[0], f"{type(exc).__name__}: {exc}") from None
    outs = {}
    for b in code.outputs:
        try:
            v, _ = m._view(b.addr, b.dtype, [math.prod(b.shape)], [1], f"output '{b.name}'", read=True)
        except _Fail as exc:
            raise ExecutionError(f"PIM program output '{b.name}': {exc}") from None
        outs[b.name] = np.array(v).reshape(b.shape)
    return outs, m.counts
