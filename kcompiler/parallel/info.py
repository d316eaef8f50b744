"""What a parallel plan did (``ParallelInfo``, kept on the CompiledModel as ``.parallel``), and
the steady-state time between inputs a report states for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kcompiler.parallel.strategies import Plan

#: micro-batches assumed when a report states the time for a stream of inputs
MICRO_BATCHES = 8


@dataclass
class ParallelInfo:
    """What the strategy did (kept on the CompiledModel as ``.parallel``; summarised in reports)."""

    plan: Plan
    objective: str = "latency"
    devices: list[str] = field(default_factory=list)
    stages: list[list[str]] = field(default_factory=list)  # device group of every stage
    stage_estimates_s: list[float] = field(default_factory=list)
    comm: dict[str, int] = field(default_factory=dict)  # communication op -> count
    split_matmuls: int = 0
    candidates: list[dict[str, Any]] = field(default_factory=list)  # filled by auto
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.plan.label, "intra": self.plan.intra, "tensor_or_data_degree": self.plan.t,
                "pipeline_stages": self.plan.k, "objective": self.objective, "devices": self.devices,
                "stages": self.stages, "comm_ops": self.comm, "split_matmuls": self.split_matmuls,
                "candidates": self.candidates, "notes": self.notes}

    def annotate(self, report, system) -> None:
        """Steady-state time between inputs: the busiest device or link (inputs stream through
        the stages / ranks; transfers overlap compute on the chips' DMA engines)."""
        busy = {f"device {d}": info["busy_s"] for d, info in report.devices.items()}
        links: dict[tuple[str, str], float] = {}
        for tr in report.transfers:
            for key in system.route(tr.src, tr.dst):
                links[key] = links.get(key, 0.0) + (tr.end_s - tr.start_s)
        busy.update({f"link {a}->{b}": s for (a, b), s in links.items()})
        bottleneck = max(busy, key=busy.get) if busy else ""
        interval = min(busy.get(bottleneck, report.latency_s), report.latency_s) or report.latency_s
        if hasattr(report, "interval_s"):
            report.interval_s = interval
        info = self.summary()
        info.update(interval_s=interval, bottleneck=bottleneck, micro_batches=MICRO_BATCHES,
                    makespan_s=report.latency_s + (MICRO_BATCHES - 1) * interval,
                    interconnect=system.interconnect.describe() if system.interconnect is not None else "")
        if hasattr(report, "parallel"):
            report.parallel = info
        note = (f"parallel: {self.plan.label} on {len(self.devices)} chip(s); "
                f"one input {report.latency_s * 1e3:.4f} ms, "
                f"then one every {interval * 1e3:.4f} ms in steady state (bottleneck: {bottleneck})")
        if note not in report.notes:
            report.notes.append(note)
