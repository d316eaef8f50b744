"""The simulator of one program: checked once, then run as its Replay (or, `exact`, as the reference
walk) on memory images kept between runs, the chip's cores side by side on host threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kcompiler.backends.npu.blas import host_threads
from kcompiler.backends.npu.sim.checker import check
from kcompiler.backends.npu.sim.data import ProgramData
from kcompiler.backends.npu.sim.memory import data_view
from kcompiler.backends.npu.sim.replay import Replay
from kcompiler.backends.npu.sim.walk import Machine

_POOL: list = [None, 0]


def _pool():
    """A pool of KC_NPU_THREADS host threads (see blas.py) running the chip's cores side by side,
    or None for one thread. Every BLAS call runs on one thread, so how many threads the host uses
    changes nothing in the results."""
    n = host_threads()
    if n <= 1:
        return None
    if _POOL[0] is None or _POOL[1] != n:
        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=False)
        _POOL[0], _POOL[1] = ThreadPoolExecutor(n, thread_name_prefix="kc-npu"), n
    return _POOL[0]


class Simulator:
    """Runs one program on its own memory images (kept between runs; weights are written once).
    `exact` decodes and executes every instruction on every run (the reference walk); otherwise the
    program runs as its Replay, which computes the same values bit for bit."""

    def __init__(self, prog: ProgramData, exact: bool = False):
        self.prog = prog
        self.exact = exact
        self._machine: Machine | None = None
        self._replay: Replay | None = None
        self._checked = False

    def invalidate(self) -> None:
        """Forget the checks, the replay and the memory images (after the program was changed)."""
        self._machine = None
        self._replay = None
        self._checked = False

    def machine(self) -> Machine:
        if not self._checked:
            check(self.prog)
            self._checked = True
        if self._machine is None:
            self._machine = Machine(self.prog)
        return self._machine

    def replay(self) -> Replay:
        if self._replay is None:
            self._replay = Replay(self.machine())
        return self._replay

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.machine()
        rp = None if self.exact else self.replay()
        m.load_inputs(feeds)
        if rp is not None:
            rp.run(_pool())
        else:
            m.dec.reset()
            for i in range(len(self.prog.instrs)):
                m.step(i)
        out = {}
        for bind in self.prog.outputs:
            out[bind.name] = np.array(data_view(m.dram, self.prog.image_addr(bind.buf) + bind.off, bind.dtype,
                                                bind.shape, bind.strides,
                                                writeable=False))
        return out
