"""The Report of one simulated inference: per-op and total time, bytes, energy.

Renders to JSON (DESIGN.md's bench schema), a rich table and a Chrome trace.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kcompiler.backends.base import EngineSpan, OpRecord, Transfer


@dataclass
class Report:
    model: str
    target: str
    mode: str
    compile_s: float = 0.0
    latency_s: float = 0.0
    cycles: int = 0
    energy_j: float = 0.0
    dram_bytes: int = 0
    macs: int = 0
    host_nodes: int = 0
    #: modelled die area of the target's accelerators, mm² (kcompiler.targets.area; the host CPU is not
    #: counted); 0 when not modelled
    area_mm2: float = 0.0
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: list[OpRecord] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    engine_busy_s: dict[str, float] = field(default_factory=dict)
    rules_fired: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: when each engine ("atom.core0.matrix") was busy, for the trace; not in to_dict()
    spans: list[EngineSpan] = field(default_factory=list)
    #: steady-state time between successive inputs when they overlap (pipelined or parallel
    #: programs, kcompiler.parallel); 0 means one input at a time (throughput = 1 / latency)
    interval_s: float = 0.0
    #: the parallel plan and what it cost (kcompiler.parallel.ParallelInfo.annotate)
    parallel: dict[str, Any] = field(default_factory=dict)
    #: the partition of its chip the target is (a virtual NPU: kcompiler.targets.Partition.describe(),
    #: plus "label", e.g. "warboy[1/2]"); empty for whole chips
    partition: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput_per_s(self) -> float:
        if self.interval_s > 0:
            return 1.0 / self.interval_s
        return 1.0 / self.latency_s if self.latency_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        spans, self.spans = self.spans, []
        try:
            d = asdict(self)
        finally:
            self.spans = spans
        del d["spans"]
        d["throughput_per_s"] = self.throughput_per_s
        return d

    def to_json(self) -> str:
        """The figures as JSON: one entry of `kc bench --json`'s results (docs/json.md)."""
        return json.dumps(self.to_dict(), indent=1)

    def __repr__(self) -> str:
        return (f"<Report {self.model!r} on {self.target} ({self.mode}): {self.latency_s * 1e3:.4f} ms, "
                f"{_mj(self.energy_j)} mJ, {self.dram_bytes:,} DRAM bytes, {len(self.ops)} ops>")

    def __str__(self) -> str:
        lines = [f"{self.model} on {self.target} ({self.mode}): latency {self.latency_s * 1e3:.4f} ms, "
                 f"throughput {self.throughput_per_s:,.1f} /s, energy {_mj(self.energy_j)} mJ, "
                 f"DRAM {self.dram_bytes:,} B, {self.macs:,} MACs, {self.host_nodes} host node(s)"]
        lines += [f"  {d}: {i['nodes']} nodes, {i['macs']:,} MACs, busy {i['busy_s'] * 1e3:.4f} ms"
                  + (f", {_mj(i['energy_j'])} mJ ({2 * i['macs'] / i['energy_j'] / 1e12:.2f} TOPS/W)"
                     if i.get("energy_j") and i.get("macs") else "") for d, i in self.devices.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __rich__(self):
        return self.table()

    def chrome_trace(self) -> dict[str, Any]:
        """Trace-event JSON: one process per device, one thread per engine (Perfetto loads it).

        A device whose programs report engine spans (the NPU: each DMA queue, the matrix and
        vector units of every core, and the DRAM channel) gets one track per engine plus an
        "ops" track with one event per op; other devices show their ops on the op's engine.
        Events run from 0 to the report's latency (the last output reaching the host)."""
        events: list[dict[str, Any]] = []
        pids: dict[str, int] = {}
        tids: dict[tuple[str, str], int] = {}

        def ids(dev: str, engine: str) -> tuple[int, int]:
            if dev not in pids:
                pids[dev] = len(pids) + 1
                events.append({"ph": "M", "name": "process_name", "pid": pids[dev], "tid": 0,
                               "args": {"name": dev}})
            key = (dev, engine or "device")
            if key not in tids:
                tids[key] = len([k for k in tids if k[0] == dev]) + 1
                events.append({"ph": "M", "name": "thread_name", "pid": pids[dev], "tid": tids[key],
                               "args": {"name": key[1]}})
            return pids[dev], tids[key]

        with_spans = set()
        for sp in sorted(self.spans, key=lambda sp: (sp.engine, sp.start_s)):
            dev, _, engine = sp.engine.partition(".")
            with_spans.add(dev)
            pid, tid = ids(dev, engine)
            events.append({"ph": "X", "name": sp.op or engine, "cat": "engine", "pid": pid, "tid": tid,
                           "ts": sp.start_s * 1e6, "dur": max(sp.end_s - sp.start_s, 0.0) * 1e6})
        for op in self.ops:
            pid, tid = ids(op.device, "ops" if op.device in with_spans else op.engine)
            # "Conv n143": a model's own node names can be counters (onnx's bundled CNNs)
            label = op.op_type if not op.name else (op.name if op.op_type in op.name else f"{op.op_type} {op.name}")
            events.append({"ph": "X", "name": label, "cat": op.op_type, "pid": pid, "tid": tid,
                           "ts": op.start_s * 1e6, "dur": max(op.end_s - op.start_s, 0.0) * 1e6,
                           "args": {"op_type": op.op_type, "cycles": op.cycles, "macs": op.macs,
                                    "dram_bytes": op.dram_bytes, "bound": op.bound, "dtype": op.dtype}})
        for t in self.transfers:
            pid, tid = ids("links", f"{t.src}->{t.dst}")
            events.append({"ph": "X", "name": t.value, "cat": "transfer", "pid": pid, "tid": tid,
                           "ts": t.start_s * 1e6, "dur": (t.end_s - t.start_s) * 1e6, "args": {"bytes": t.nbytes}})
        return {"traceEvents": events, "displayTimeUnit": "ns",
                "otherData": {"model": self.model, "target": self.target, "latency_s": self.latency_s}}

    def table(self, top: int = 15):
        """A rich renderable: totals, then the slowest ops."""

        summary = Table(title=f"{self.model} on {self.target} ({self.mode})", show_header=False)
        summary.add_column("metric", no_wrap=True)
        summary.add_column("value", justify="right", overflow="fold")
        rows = [("latency", f"{self.latency_s * 1e3:.4f} ms"),
                ("throughput", f"{self.throughput_per_s:,.1f} /s"),
                ("cycles", f"{self.cycles:,}"),
                ("MACs", f"{self.macs:,}"),
                ("DRAM bytes", f"{self.dram_bytes:,}"),
                ("energy", f"{_mj(self.energy_j)} mJ"),
                ("area", f"{self.area_mm2:,.1f} mm² (modelled, accelerators)"),
                ("host nodes", str(self.host_nodes)),
                ("compile", f"{self.compile_s:.3f} s")]
        for dev, info in self.devices.items():
            rows.append((f"device {dev}", f"{info['nodes']} nodes, {info['macs']:,} MACs, "
                                          f"busy {info['busy_s'] * 1e3:.4f} ms"))
        for r in rows:
            summary.add_row(*r)
        ops = Table(title=f"slowest {min(top, len(self.ops))} ops")
        for col in ("op", "type", "device", "dtype", "time (us)", "MACs", "DRAM B", "bound"):
            # names and types wrap whole (overflow "fold"), numbers never wrap
            ops.add_column(col, justify="right" if col in ("time (us)", "MACs", "DRAM B") else "left",
                           overflow="fold", no_wrap=col not in ("op", "type"))
        for op in sorted(self.ops, key=lambda o: o.end_s - o.start_s, reverse=True)[:top]:
            ops.add_row(op.name, op.op_type, op.device, op.dtype, f"{(op.end_s - op.start_s) * 1e6:.2f}",
                        f"{op.macs:,}", f"{op.dram_bytes:,}", op.bound)
        parts = [summary, ops]
        if self.notes:
            parts.append(Text("\n".join(f"note: {n}" for n in self.notes)))
        return Group(*parts)


def device_dtypes(ops: list[OpRecord]) -> dict[str, dict[str, int]]:
    """Per device, the dtypes its ops computed at and how many ops each ("" - ops that compute nothing -
    left out), in the order they first appear: what `kc inspect` lists."""
    out: dict[str, dict[str, int]] = {}
    for op in ops:
        if op.dtype:
            d = out.setdefault(op.device, {})
            d[op.dtype] = d.get(op.dtype, 0) + 1
    return out


def emulation_notes(ops: list[OpRecord]) -> list[str]:
    """One line per device whose values were converted at its boundary (a PIM's DtypeConvert ops:
    float32 to and from its bf16 or fp16), and one per device whose GEMMs ran as emulations
    (OpRecord.dtype "fp32 as 10 int8 passes", kcompiler.backends.npu.emulation): how many, their
    share of the device's MACs, and how to run at the chip's own rate instead."""
    macs: dict[str, int] = {}
    emu: dict[str, dict[str, list[int]]] = {}  # device -> array dtype -> [ops, MACs]
    for op in ops:
        macs[op.device] = macs.get(op.device, 0) + op.macs
        if " as " in op.dtype and op.macs:
            arr = op.dtype.split(" as ", 1)[1].split()[1]  # "fp32 as 10 int8 passes" -> "int8"
            x = emu.setdefault(op.device, {}).setdefault(arr, [0, 0])
            x[0] += 1
            x[1] += op.macs
    out = []
    conv: dict[str, dict[str, list]] = {}  # device -> direction -> [ops, seconds]
    for op in ops:
        if op.op_type == "DtypeConvert":
            x = conv.setdefault(op.device, {}).setdefault(op.dtype, [0, 0.0])
            x[0] += 1
            x[1] += op.end_s - op.start_s
    for dev, by in conv.items():
        parts = ", ".join(f"{n} {d} ({s * 1e6:.3f} us)" for d, (n, s) in by.items())
        out.append(f"{dev}: values cross its boundary in float32, its multipliers take another format: {parts}; "
                   "each an explicit, charged DtypeConvert op")
    for dev, by in emu.items():
        for arr, (n, m) in by.items():
            out.append(f"{dev}: {n} GEMM{'s' if n != 1 else ''} emulated in {arr} passes "
                       f"({m / max(macs[dev], 1):.0%} of its MACs), each pass charged: quantise with --dtype int8 "
                       f"--calibrate DATA to run at the chip's INT8 rate")
    return out


COMPARISON_COLUMNS = ("target", "latency (ms)", "throughput (/s)", "energy (mJ)", "DRAM (MB)", "area (mm²)",
                      "work by device", "MACs by dtype", "busiest engines", "host fallbacks", "compile (s)")


def comparison_columns(peers: list[dict] | None = None) -> tuple[str, ...]:
    """COMPARISON_COLUMNS, and "vs <peer>" for each peer measured (every target against it)."""
    return COMPARISON_COLUMNS + tuple(f"vs {p['peer']}" for p in peers or ())


def comparison_rows(reports: list[Report], peers: list[dict] | None = None) -> list[list[str]]:
    """One row per target (then per measured peer) of comparison_columns(peers), as text; list cells
    (work by device, busiest engines) hold one item per line. "vs ort" is how many times faster the
    simulated chip is than ONNX Runtime's wall time on this CPU (below 1: slower)."""
    rows = []
    peers = list(peers or ())
    for r in reports:
        total = sum(d["busy_s"] for d in r.devices.values()) or 1.0
        share = "\n".join(f"{dev} {_pct(info['busy_s'] / total)}" for dev, info in r.devices.items())
        util = sorted(((s / r.latency_s if r.latency_s else 0.0), e) for e, s in r.engine_busy_s.items())[::-1]
        accs = [d for d in r.devices if d != "host"]
        # on one chip its name is the target's: "core0.matrix", not "warboy.core0.matrix"
        engines = "\n".join(f"{e.removeprefix(accs[0] + '.') if len(accs) == 1 else e} {_pct(u)}"
                             for u, e in util[:3])
        vs = [f"{p['latency_s'] / r.latency_s:,.2f}x" if r.latency_s and p["latency_s"] else "-" for p in peers]
        rows.append([r.target, f"{r.latency_s * 1e3:.4f}", f"{r.throughput_per_s:,.1f}", _mj(r.energy_j),
                     f"{r.dram_bytes / 1e6:.2f}", f"{r.area_mm2:,.1f}", share, macs_by_dtype(r.ops), engines,
                     str(r.host_nodes), f"{r.compile_s:.2f}", *vs])
    for p in peers:
        threads = f", {p['threads']} thread{'s' if p['threads'] > 1 else ''}" if p.get("threads") else ""
        rows.append([f"{p['peer']} (measured on this CPU: median of {p['runs']} runs{threads})",
                     f"{p['latency_s'] * 1e3:.4f}", f"{1 / p['latency_s']:,.1f}" if p["latency_s"] else "-", "-", "-",
                     "-", "host 100%", "-", "-", "-", f"{p['compile_s']:.2f}", *("-" for _ in peers)])
    return rows


def macs_by_dtype(ops: list[OpRecord]) -> str:
    """The dtypes the MACs ran at, by share, one per line ("int8 98%", "fp32 as 10 int8 passes 100%"): what a
    chip was charged at, so a float32 program emulated in INT8 passes is not read as an INT8 one."""
    by: dict[str, int] = {}
    for op in ops:
        if op.macs:
            key = op.dtype or "fp32"
            by[key] = by.get(key, 0) + op.macs
    total = sum(by.values())
    return "\n".join(f"{d} {_pct(m / total)}" for d, m in sorted(by.items(), key=lambda x: -x[1])) if total else "-"


def _pct(x: float) -> str:
    """A share as a percentage; one that rounds to 0 but is not (a Gemm on the PIM) reads <1%."""
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def _mj(joules: float) -> str:
    """Energy in mJ with three significant figures at least (a small model's is not 0.000)."""
    mj = joules * 1e3
    if mj == 0 or mj >= 1:
        return f"{mj:.3f}"
    return f"{mj:.3g}" if mj >= 1e-3 else f"{mj:.2e}"


def comparison_csv(reports: list[Report], peers: list[dict] | None = None) -> str:
    """The comparison as CSV: a header of COMPARISON_COLUMNS, one row per target; list cells joined by '; '."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(comparison_columns(peers))
    for row in comparison_rows(reports, peers):
        w.writerow([c.replace("\n", "; ") for c in row])
    return buf.getvalue()


def comparison_table(reports: list[Report], peers: list[dict] | None = None, width: int | None = None,
                     console=None):
    """One table across targets: the figures a user compares chips by. With a width (a terminal's, or
    80 when piped) the layout that fits it: a row per target when it is wide enough, else a
    column per target, else one small table per target; a cell is wrapped, never cut short."""
    title = f"{reports[0].model if reports else ''}: one inference, simulated"
    rows = comparison_rows(reports, peers)
    columns = comparison_columns(peers)
    numeric = {c for c in columns if c not in ("target", "work by device", "busiest engines")}

    def wide():
        t = Table(title=title)
        for c in columns:
            t.add_column(c, justify="right" if c in numeric else "left", overflow="fold",
                         no_wrap=c in numeric or c == "target")
        for r in rows:
            t.add_row(*r)
        return t

    def tall(rs):
        t = Table(title=title if len(rs) == len(rows) else None)
        t.add_column("", no_wrap=True)
        for r in rs:
            t.add_column(r[0], justify="right", overflow="fold", min_width=max(
                len(w) for cell in r for w in cell.split()))
        for k, c in enumerate(columns[1:], 1):
            t.add_row(c, *(r[k] for r in rs))
        return t

    if width is None:
        return wide()
    console = console or Console(width=width)

    def fits(t, wrapped: bool) -> bool:
        m = console.measure(t, options=console.options.update(width=10_000))
        return (m.minimum if wrapped else m.maximum) <= width

    # the wide table only when nothing in it has to wrap; a column per target may wrap a list cell
    # between its words ("atom.core5.dma_in" over "87%"), never inside a number or a name
    table = wide()
    if fits(table, False):
        return table
    table = tall(rows)
    if fits(table, True):
        return table
    return Group(*(tall([r]) for r in rows))
