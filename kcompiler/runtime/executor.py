"""One interpreter over placed programs: values (functional) and time (simulation).

Like torch.fx's Interpreter: walk the partitions in order, keep an environment of
values, free each value after its last use, and say which partition failed.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import EngineSpan, Program, Subgraph
from kcompiler.errors import ExecutionError, KCError
from kcompiler.frontend.state import RESIDENT, pairs
from kcompiler.runtime.report import OpRecord, Report, Transfer, emulation_notes
from kcompiler.targets import System


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Python's cyclic garbage collector paused, as compile() pauses it (driver/compile.py).

    Timing a large program allocates a few objects per instruction (its times, its engine spans,
    the report's records: over half a million for llama-7b), which triggers full collections that
    scan every live object, the compiled programs' instructions included, and find nothing: with
    them, simulating llama-7b decode on atom took 1.98 s of CPU instead of 1.10 s. None of these
    objects form cycles, so reference counting frees them as before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Executor:
    def __init__(self, model: ir.Model, system: System, parts: list[Subgraph], programs: list[Program]):
        self.model = model
        self.system = system
        self.parts = parts
        self.programs = programs
        self.output_names = [v.name for v in model.graph.outputs]
        last: dict[str, int] = {}
        for i, sub in enumerate(parts):
            for v in sub.inputs:
                last[v.name] = i
        keep = set(self.output_names)
        self.free_after: list[list[str]] = [[] for _ in parts]
        for name, i in last.items():
            if name not in keep:
                self.free_after[i].append(name)

    # ---- values -------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = dict(feeds)
        for i, (sub, prog) in enumerate(zip(self.parts, self.programs)):
            ins = {}
            for v in sub.inputs:
                if v.name in env:
                    ins[v.name] = env[v.name]
                else:
                    c = opinfo.const_value(v)
                    if c is None:
                        raise ExecutionError(f"value '{v.name}' needed on {sub.device} was never computed")
                    ins[v.name] = np.ascontiguousarray(c)
            try:
                outs = prog.run(ins)
            except KCError as exc:
                raise type(exc)(f"on device {sub.device}, subgraph {i} "
                                f"(first node '{sub.nodes[0].name}'): {exc.message}", hint=exc.hint) from exc
            except MemoryError:
                raise ExecutionError(f"out of memory running subgraph {i} on {sub.device}",
                                     hint="use --mode timing, which needs no data") from None
            env.update(outs)
            for name in self.free_after[i]:
                if name not in feeds:
                    env.pop(name, None)
        result = {}
        for v in self.model.graph.outputs:
            if v.name in env:
                result[v.name] = env[v.name]
            else:
                c = opinfo.const_value(v)
                if c is None:
                    raise ExecutionError(f"graph output '{v.name}' was never computed")
                result[v.name] = np.array(c)
        return result

    # ---- time ---------------------------------------------------------------------------
    def simulate(self, report: Report) -> Report:
        """Place every program on a common clock: a subgraph starts when its device is free
        and its inputs have crossed the links from where they were produced."""
        with _cyclic_gc_paused():
            return self._simulate(report)

    def _simulate(self, report: Report) -> Report:
        host = self.system.host.name
        # device-resident state (KV cache): already on the device that reads it; see frontend/state.py
        state_in, state_out = pairs(self.model)
        home: dict[str, str] = {}
        ready: dict[str, tuple[float, str]] = {v.name: (0.0, RESIDENT if v.name in state_in else host)
                                               for v in self.model.graph.inputs}
        device_free: dict[str, float] = {}
        link_free: dict[tuple[str, str], float] = {}
        busy: dict[str, float] = {}
        nodes: dict[str, int] = {}
        dev_macs: dict[str, int] = {}
        ops, transfers = [], []
        energy = 0.0
        energy_parts: dict[str, dict[str, float]] = {}
        dev_energy: dict[str, float] = {}
        dram = 0
        for sub, prog in zip(self.parts, self.programs):
            if prog.spans_devices:  # communication ops (kcompiler.backends.comm) span devices and links
                prog.schedule(ready, link_free, transfers, ops)
                continue
            dev = sub.device
            start = device_free.get(dev, 0.0)
            for v in sub.inputs:
                t_ready, where = ready.get(v.name, (0.0, host))
                if where == RESIDENT:
                    home.setdefault(v.name, dev)
                elif where != dev:
                    t_ready = self._transfer(v, where, dev, t_ready, link_free, transfers)
                    ready[v.name] = (t_ready, dev) if where == host else ready[v.name]
                start = max(start, t_ready)
            tl = prog.simulate()
            for e in tl.ops:
                ops.append(OpRecord(e.name, e.op_type, dev, start + e.start_s, start + e.end_s, e.cycles,
                                    e.macs, e.dram_bytes, e.sram_bytes, e.energy_j, e.bound, e.engine,
                                    dict(e.energy_parts), e.dtype))
                _add(energy_parts.setdefault(dev, {}), e.energy_parts)
                energy += e.energy_j
                dev_energy[dev] = dev_energy.get(dev, 0.0) + e.energy_j
                dram += e.dram_bytes
                dev_macs[dev] = dev_macs.get(dev, 0) + e.macs
            end = start + tl.seconds
            device_free[dev] = end
            busy[dev] = busy.get(dev, 0.0) + tl.seconds
            nodes[dev] = nodes.get(dev, 0) + len(sub.nodes)
            for eng, s in tl.engine_busy_s.items():
                report.engine_busy_s[f"{dev}.{eng}"] = report.engine_busy_s.get(f"{dev}.{eng}", 0.0) + s
            report.spans.extend(EngineSpan(f"{dev}.{sp.engine}", start + sp.start_s, start + sp.end_s, sp.op)
                                for sp in tl.spans)
            report.notes.extend(n for n in tl.notes if n not in report.notes)
            for v in sub.outputs:
                ready[v.name] = (end, dev)
        latency = 0.0
        for v in self.model.graph.outputs:
            t_ready, where = ready.get(v.name, (0.0, host))
            dst = host
            if v.name in state_out:  # stays on the device; moves only to where next step reads it
                dst = home.get(state_out[v.name], where)
            if where != dst and where != RESIDENT:
                t_ready = self._transfer(v, where, dst, t_ready, link_free, transfers)
            latency = max(latency, t_ready)
        report.latency_s = latency
        notes = [f"device-resident state: {len(state_in)} input(s) read in place, {len(state_out)} output(s) "
                 "kept on the device (no host transfer)"] if state_out else []
        report.notes.extend(n for n in notes + emulation_notes(ops) if n not in report.notes)
        report.ops = ops
        report.transfers = transfers
        report.energy_j = energy
        report.dram_bytes = dram
        report.macs = sum(dev_macs.values())
        report.host_nodes = nodes.get(host, 0)
        report.devices = {d: {"nodes": nodes.get(d, 0), "macs": dev_macs.get(d, 0), "busy_s": busy.get(d, 0.0),
                              "energy_j": dev_energy.get(d, 0.0)} for d in busy}
        for d, parts in energy_parts.items():  # (a device that says where its energy goes: CIM)
            report.devices[d]["energy_parts"] = parts
        clock = _clock_hz(self.system)
        report.cycles = int(round(latency * clock))
        return report

    def _transfer(self, v: ir.Value, src: str, dst: str, t: float, link_free, transfers) -> float:
        nbytes = opinfo.nbytes(v)
        link = self.system.link(src, dst)
        # every directed link on the route is busy for the whole transfer (contention)
        route = self.system.route(src, dst)
        start = max([t] + [link_free.get(key, 0.0) for key in route])
        end = start + link.transfer_s(nbytes)
        for key in route:
            link_free[key] = end
        transfers.append(Transfer(src, dst, v.name, nbytes, start, end))
        return end


def _clock_hz(system: System) -> float:
    for d in system.accelerators:
        clk = getattr(d.chip.spec, "clock_hz", None)
        if clk:
            return float(clk)
    return float(getattr(system.host.chip.spec, "clock_hz", 1e9))


def _add(total: dict[str, float], parts: dict[str, float]) -> None:
    """Add an op's energy_parts into a device's totals."""
    for k, v in parts.items():
        total[k] = total.get(k, 0.0) + v
