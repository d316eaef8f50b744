"""Evaluate one sweep point: build its system, compile its model, simulate, return one row.

The same function runs in-process (``--serial``) and in Ray workers, so the two give the same
row for the same point. A worker keeps the models it has built (``ModelCache``): a zoo model
is built once per worker, not once per point.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

import kcompiler
from kcompiler import targets, zoo
from kcompiler.errors import KCError
from kcompiler.sweep.spec import Point, chip_changes

#: report figures stored for every point (in this order after the point's own columns)
FIGURES = ("latency_s", "throughput_per_s", "energy_j", "dram_bytes", "macs", "cycles", "area_mm2", "host_nodes",
           "devices", "compile_s", "simulate_s")


class ModelCache:
    """Models built by this process, by their spec: zoo builds and ONNX loads happen once."""

    def __init__(self):
        self._models: dict[Any, Any] = {}
        self.builds = 0

    def get(self, spec):
        key = (spec.name, spec.options)
        if key not in self._models:
            # an ONNX file stays a path (read at each compile, its external data beside it); a zoo
            # build (a ModelProto, which compile does not change) is kept
            model, _ = zoo.resolve_model(spec.name, **dict(spec.options))
            self._models[key] = model
            self.builds += 1
        return self._models[key]


_CACHE = ModelCache()


def system_for(point: Point):
    """The System a point describes: its target with the chip figures it changes."""
    devices = point.param("devices")
    base = targets.resolve(point.target)
    changes = chip_changes(base, point.params)
    base_chips = {d.chip.name: d.chip for d in base.accelerators}
    chips = {name: targets.variant(base_chips[name], ch, label=f"point {point.id}") for name, ch in changes.items()}
    return targets.resolve(point.target, devices=devices, interconnect=point.param("interconnect"),
                           topology=point.param("topology"), chips=chips or None)


def evaluate(point: Point, cache: ModelCache | None = None) -> dict[str, Any]:
    """Compile and simulate `point`; a row of the results store. A KCError (an impossible
    configuration, a model that does not fit) is a failed row with its message, not an exception."""
    cache = cache or _CACHE
    row: dict[str, Any] = {"status": "ok", "error": None, "worker": f"{os.uname().nodename}:{os.getpid()}"}
    t0 = time.perf_counter()
    try:
        model = cache.get(point.model)
        system = system_for(point)
        shapes = {k: list(v) for k, v in point.model.shapes} or None
        cm = kcompiler.compile(model, target=system, shapes=shapes, mode=point.mode,
                               parallel=point.param("parallel", "none") or "none",
                               place=point.param("place") or None, printer=lambda *a, **k: None,
                               name=point.model.name)
        t1 = time.perf_counter()
        rep = cm.report
        t2 = time.perf_counter()
        row.update(latency_s=rep.latency_s, throughput_per_s=rep.throughput_per_s, energy_j=rep.energy_j,
                   dram_bytes=int(rep.dram_bytes), macs=int(rep.macs), cycles=int(rep.cycles),
                   area_mm2=float(getattr(rep, "area_mm2", 0.0) or 0.0),
                   host_nodes=int(rep.host_nodes), devices=len(system.accelerators),
                   compile_s=t1 - t0, simulate_s=t2 - t1)
    except KCError as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    except MemoryError:
        row.update(status="failed", error="MemoryError: the point ran out of memory")
    except Exception as exc:  # a bug in kcompiler: recorded with where it happened, the sweep goes on
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="error", error=f"internal error {type(exc).__name__}: {exc} "
                                         f"({os.path.basename(tb.filename)}:{tb.lineno}); please report it")
    row["point_s"] = time.perf_counter() - t0
    return row
