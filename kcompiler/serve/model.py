"""A served model: a CompiledModel with its protocol signature, run one request at a time."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kcompiler.errors import KCError
from kcompiler.serve.protocol import VERSION, datatype_of, dims


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, as the protocol describes it."""

    name: str
    dtype: np.dtype | None  # None: the model does not say (any datatype is passed on)
    shape: tuple[int, ...] | None  # -1 for a dim left open; None for an unknown rank

    @property
    def datatype(self) -> str:
        return datatype_of(self.dtype)

    def metadata(self) -> dict[str, Any]:
        # (the protocol has no way to say "unknown rank": one open dim is the closest)
        shape = list(self.shape) if self.shape is not None else [-1]
        return {"name": self.name, "datatype": self.datatype, "shape": shape}

    def describe(self) -> str:
        return f"{self.datatype} {dims(self.shape) if self.shape is not None else '[any shape]'}"


def _graph_shape(value) -> tuple[int, ...] | None:
    """A graph value's shape with -1 for every symbolic or unknown dim."""
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape)


def _graph_dtype(value) -> np.dtype | None:
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:  # no dtype, or one numpy lacks
        return None


class PerLoop:
    """An asyncio Lock or Semaphore, made anew for each event loop that uses it.

    (One belongs to the loop that first waits on it; a test that opens a second TestClient runs a
    second loop. An app is served by one loop at a time.)"""

    def __init__(self, factory):
        self.factory = factory
        self._loop = None
        self._obj = None

    def get(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._obj = loop, self.factory()
        return self._obj


@dataclass
class RunResult:
    """What one execution of a model gives back (computed in a worker thread)."""

    outputs: dict[str, np.ndarray]
    latency_s: float
    energy_j: float
    wall_s: float


class ServedModel:
    """A CompiledModel with its protocol signature and the locks that run it one request at a time."""

    def __init__(self, name: str, cm):
        if not name or "/" in name:
            raise KCError(f"model name '{name}' cannot be part of a URL",
                          hint="give a name without '/' (kc serve --name NAME)")
        self.name = name
        self.cm = cm
        self.device = cm.system.name
        self.platform = f"kcompiler-{cm.system.name}"
        graph = cm.model.graph
        declared = cm.inputs  # {name: (static shape or None, dtype)}
        self.inputs = {}
        for v in graph.inputs:
            shape, dtype = declared[v.name]
            self.inputs[v.name] = TensorSpec(v.name, dtype, shape if shape is not None else _graph_shape(v))
        self.outputs = {v.name: TensorSpec(v.name, _graph_dtype(v), _graph_shape(v)) for v in graph.outputs}
        #: the model's queue: requests wait here without holding a thread
        self.queue = PerLoop(asyncio.Lock)
        # and cm.run is never entered twice at once, even from two event loops (see PerLoop)
        self._run_lock = threading.Lock()

    def warm_up(self) -> None:
        """One run with random inputs: warms the model and fixes the output shapes and datatypes.

        A model that cannot run (compiled in timing mode, say) raises its KCError here, before the
        server starts. A model with open input dims is not run: its outputs keep -1 dims."""
        if any(s.shape is None or -1 in s.shape for s in self.inputs.values()):
            return
        outs = self.execute(self.cm.random_inputs()).outputs
        for name, arr in outs.items():
            self.outputs[name] = TensorSpec(name, arr.dtype, tuple(arr.shape))

    def execute(self, feeds: dict[str, np.ndarray]) -> RunResult:
        """Run the model (in a worker thread) and read the simulated time of this very run."""
        with self._run_lock:
            t0 = time.perf_counter()
            outs = self.cm.run(feeds)
            wall = time.perf_counter() - t0
            rep = self.cm.report  # this run's: set by cm.run, read before the lock is released
            return RunResult(outs, float(rep.latency_s), float(rep.energy_j), wall)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [VERSION], "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs.values()],
                "outputs": [s.metadata() for s in self.outputs.values()]}
