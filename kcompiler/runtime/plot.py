"""`kc bench --plot`: a roofline of every op on each chip and a per-engine timeline.

matplotlib is an optional extra (``pip install "kcompiler[plot]"``); without it, plotting
raises a KCError saying so. The figure is drawn with the Agg backend (no display needed).

Roofline: an op's arithmetic intensity is its FLOPs (2 per MAC) over the DRAM bytes it
moved; its achieved FLOP/s is its FLOPs over its simulated duration. The roofs are the
chip's peak (at the dtype it is charged at) and its sustained DRAM bandwidth times the
intensity. Ops without MACs (pooling, elementwise, copies) or without DRAM traffic have
no point; the panel says how many.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from kcompiler.errors import KCError
from kcompiler.runtime.report import Report

#: op-type colours (tab10), most time first; the rest are grey
MAX_TYPES = 8


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise KCError("plotting needs matplotlib, which is not installed",
                      hint='install the optional extra: pip install "kcompiler[plot]" (or pip install matplotlib)') \
            from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def roofs(spec: Any) -> tuple[float, float] | None:
    """(peak FLOP/s, sustained DRAM bytes/s) of a chip spec, from whichever figures it has."""
    peak = getattr(spec, "peak_ops", None) or getattr(spec, "peak_flops", None)
    if peak and hasattr(spec, "efficiency") and not hasattr(spec, "peak_ops") and hasattr(spec, "dram_bandwidth"):
        peak = peak * spec.efficiency  # the host: the fraction of peak ONNX Runtime reaches
    bw = None
    if hasattr(spec, "dram_bytes_per_cycle") and hasattr(spec, "clock_hz"):
        bw = spec.dram_bytes_per_cycle * spec.clock_hz
    for name in ("internal_bandwidth", "dram_bandwidth"):
        if bw is None and getattr(spec, name, None):
            bw = getattr(spec, name)
    if not peak or not bw:
        return None
    return float(peak), float(bw)


def _type_colours(report: Report) -> dict[str, Any]:
    import matplotlib

    time_by_type: Counter = Counter()
    for op in report.ops:
        time_by_type[op.op_type] += op.end_s - op.start_s
    cmap = matplotlib.colormaps["tab10"]
    top = [t for t, _ in time_by_type.most_common(MAX_TYPES)]
    return {t: cmap(i) for i, t in enumerate(top)}


def plot_report(report: Report, system, path: "str | Path") -> Path:
    """Draw `report` (one model on one system) to a PNG at `path`."""
    plt = _matplotlib()
    from matplotlib.patches import Patch

    path = Path(path)
    colours = _type_colours(report)
    grey = (0.6, 0.6, 0.6, 1.0)
    devices = [d for d in system.devices if any(op.device == d.name and op.macs for op in report.ops)]
    devices = devices[:3]
    tracks = _tracks(report)
    n_rows = max(1, len(tracks))
    fig_h = 4.6 + min(0.2 * n_rows, 9.0)
    fig = plt.figure(figsize=(13, fig_h), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, max(1, len(devices)), height_ratios=[4.2, min(0.2 * n_rows, 9.0) + 0.6])
    fig.suptitle(f"{report.model} on {report.target}: {report.latency_s * 1e3:.3f} ms simulated, "
                 f"{report.energy_j * 1e3:.2f} mJ, {report.dram_bytes / 1e6:.1f} MB DRAM", fontsize=12)

    for col, dev in enumerate(devices):
        ax = fig.add_subplot(grid[0, col])
        _roofline(ax, report, dev, colours, grey)
    if not devices:
        ax = fig.add_subplot(grid[0, :])
        ax.text(0.5, 0.5, "no op with MACs: nothing to place on a roofline", ha="center", va="center")
        ax.set_axis_off()

    ax = fig.add_subplot(grid[1, :])
    _timeline(ax, report, tracks, colours, grey)
    handles = [Patch(color=c, label=t) for t, c in colours.items()] + [Patch(color=grey, label="other")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
              title="op type", title_fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return path


def _roofline(ax, report: Report, dev, colours, grey) -> None:
    r = roofs(dev.chip.spec)
    ops = [op for op in report.ops if op.device == dev.name]
    pts = [op for op in ops if op.macs > 0 and op.dram_bytes > 0 and op.end_s > op.start_s]
    if not pts:
        ax.set_axis_off()
        return
    ai = [2 * op.macs / op.dram_bytes for op in pts]
    perf = [2 * op.macs / (op.end_s - op.start_s) for op in pts]
    total = sum(op.end_s - op.start_s for op in pts) or 1.0
    size = [12 + 400 * (op.end_s - op.start_s) / total for op in pts]
    ax.scatter(ai, perf, s=size, c=[colours.get(op.op_type, grey) for op in pts], alpha=0.75,
               edgecolors="black", linewidths=0.3, zorder=3)
    lo = 10 ** math.floor(math.log10(min(ai) / 2))
    hi = 10 ** math.ceil(math.log10(max(ai) * 2))
    if r is not None:
        peak, bw = r
        ridge = peak / bw
        lo, hi = min(lo, 10 ** math.floor(math.log10(ridge / 10))), max(hi, 10 ** math.ceil(math.log10(ridge * 10)))
        xs = [lo, ridge, hi]
        ax.plot(xs, [min(peak, bw * x) for x in xs], color="black", linewidth=1.6, zorder=2)
        ax.axhline(peak, color="black", linewidth=0.5, linestyle=":", zorder=1)
        ax.annotate(f"peak {peak / 1e12:.1f} TFLOP/s", (hi, peak), xytext=(-4, 4), textcoords="offset points",
                    ha="right", fontsize=8)
        memory = "in-bank" if hasattr(dev.chip.spec, "internal_bandwidth") else "DRAM"  # PIM computes in the banks
        ax.annotate(f"{memory} {bw / 1e9:.0f} GB/s", (lo * 1.3, bw * lo * 1.3), xytext=(2, 6),
                    textcoords="offset points", fontsize=8, rotation=0)
        ax.axvline(ridge, color="black", linewidth=0.5, linestyle="--", zorder=1)
        ax.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, min(perf) / 2), xytext=(3, 0), textcoords="offset points",
                    fontsize=7)
        ax.set_ylim(min(min(perf) / 4, bw * lo), peak * 3)
    ax.set_xlim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="major", linewidth=0.3)
    ax.set_xlabel("arithmetic intensity (FLOP per DRAM byte)")
    ax.set_ylabel("achieved FLOP/s")
    share = sum(op.end_s - op.start_s for op in pts) / (sum(op.end_s - op.start_s for op in ops) or 1.0)
    ax.set_title(f"{dev.name} ({dev.chip.name}): {len(pts)} of {len(ops)} ops "
                 f"({share:.0%} of op time) have MACs and DRAM traffic; area = time", fontsize=9)


def _tracks(report: Report) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """(track name, [(start, end, op type)]) per engine: engine spans where the device has them,
    else its ops on their engine; plus one track per link direction."""
    op_type = {op.name: op.op_type for op in report.ops}
    tracks: dict[str, list] = defaultdict(list)
    with_spans = set()
    for sp in report.spans:
        with_spans.add(sp.engine.split(".", 1)[0])
        tracks[sp.engine].append((sp.start_s, sp.end_s, op_type.get(sp.op, "")))
    for op in report.ops:
        if op.device not in with_spans:
            tracks[f"{op.device}.{op.engine or 'device'}"].append((op.start_s, op.end_s, op.op_type))
    for t in report.transfers:
        tracks[f"link {t.src}->{t.dst}"].append((t.start_s, t.end_s, "transfer"))
    return sorted(tracks.items(), key=lambda kv: _track_order(kv[0]))


def _track_order(name: str):
    engine_rank = {"dma_in": 0, "matrix": 1, "vector": 2, "dma_out": 3}
    if name.startswith("link "):
        return (2, name, 0, 0)
    dev, _, rest = name.partition(".")
    if rest == "dram":
        return (1, dev, 0, 0)
    core, _, eng = rest.partition(".")
    num = int(core[4:]) if core.startswith("core") and core[4:].isdigit() else 0
    return (0, dev, num, engine_rank.get(eng, 9))


def _timeline(ax, report: Report, tracks, colours, grey) -> None:
    scale = 1e3  # ms
    for row, (name, spans) in enumerate(tracks):
        bars = [(a * scale, max(b - a, 0.0) * scale) for a, b, _ in spans]
        cols = [colours.get(t, (0.3, 0.3, 0.8, 1.0) if t == "transfer" else grey) for _, _, t in spans]
        ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=cols, linewidth=0)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([n for n, _ in tracks], fontsize=7 if len(tracks) > 12 else 8)
    ax.invert_yaxis()
    ax.set_xlim(0, report.latency_s * scale)
    ax.set_xlabel("simulated time (ms)")
    busy = ", ".join(f"{e} {s / report.latency_s:.0%}" for e, s in sorted(
        report.engine_busy_s.items(), key=lambda kv: -kv[1])[:4]) if report.latency_s else ""
    ax.set_title(f"per-engine timeline (busiest: {busy})", fontsize=9)
    ax.grid(True, axis="x", linewidth=0.3)


def plot_paths(path: "str | Path", targets: list[str]) -> list[Path]:
    """One PNG per target: FILE.png for one target, FILE-<target>.png for several."""
    path = Path(path)
    if len(targets) == 1:
        return [path]
    safe = ["".join(c if c.isalnum() or c in "-_.+" else "_" for c in t) for t in targets]
    return [path.with_name(f"{path.stem}-{s}{path.suffix or '.png'}") for s in safe]
