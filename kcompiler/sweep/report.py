"""What `kc sweep` shows and writes: its progress on stderr, each model's Pareto front as a table, and
the JSON document (--json).

Imported by the command when it runs (kcompiler.sweep.cli), not when `kc` starts: rich's progress bar
and the Pareto module are tens of milliseconds of start-up.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from kcompiler import __version__
from kcompiler.errors import KCError
from kcompiler.sweep.pareto import fmt_value, short_names

#: the version of `kc sweep --json`'s document; raised when a key changes meaning or goes
JSON_SCHEMA_VERSION = 1


class SweepProgress:
    """A sweep's progress on stderr: a bar on a terminal, one line per point in a log (not a
    terminal), nothing when quiet. `on_start` and `on_result` are the runner's callbacks."""

    def __init__(self, spec, quiet: bool):
        self.spec = spec
        self.quiet = quiet
        self.err = Console(stderr=True)
        self.bar = None
        if not quiet:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                TimeElapsedColumn(), TextColumn("[red]{task.fields[fails]}"), console=self.err)
        self.task = None
        self.n = 0
        self.failed = 0

    def announce(self, out, serial: bool, address: str | None) -> None:
        """The first line: the spec, its grid and search, where the points run and where rows go."""
        if self.quiet:
            return
        spec = self.spec
        self.err.print(f"sweep [bold]{spec.name}[/]: {spec.grid_size} points in the grid, search {spec.search}"
                       + (f" ({spec.samples} per model)" if spec.search in ('nsga2', 'tpe') else
                          f" ({spec.samples} samples)" if spec.search == 'random' and spec.samples else "")
                       + f"; {'serial' if serial else 'Ray ' + (address or 'local')}; results in {out}",
                       highlight=False)

    def on_start(self, total, done):
        if self.bar is not None and self.err.is_terminal:
            self.bar.start()
            self.task = self.bar.add_task(self.spec.name, total=total, completed=done, rate="", fails="")

    def on_result(self, point, row):
        self.n += 1
        if row["status"] != "ok":
            self.failed += 1
        if self.bar is not None and not self.err.is_terminal:  # a log: one line per point
            fig = (f"{row['latency_s'] * 1e3:.4g} ms, {row['energy_j'] * 1e3:.4g} mJ" if row["status"] == "ok"
                   else f"{row['status']}: {(row.get('error') or '').splitlines()[0][:120]}")
            self.err.print(f"[{self.n}] {point.model.label} on {point.target} {params_text(point)}: {fig} "
                           f"({row.get('point_s', 0):.2f} s)", highlight=False, soft_wrap=True)
        elif self.bar is not None and self.task is not None:
            el = self.bar.tasks[0].elapsed or 0
            self.bar.update(self.task, advance=1, rate=f"{self.n / el:.2f} pt/s" if el > 0 else "",
                            fails=f"{self.failed} failed" if self.failed else "")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def params_text(point) -> str:
    """A point's parameters as `key=value` words."""
    return " ".join(f"{k}={fmt_value(v)}" for k, v in point.params)


def summary(result) -> dict:
    """The --json document without its rows: the spec, the counts and times, each model's front."""
    spec = result.spec
    fronts = result.front
    return {"schema_version": JSON_SCHEMA_VERSION, "kcompiler": __version__,
            "spec": {"name": spec.name, "hash": spec.hash, "source": spec.source, "search": spec.search,
                     "objectives": list(spec.objectives), "parameters": spec.keys},
            "out": str(result.out), "backend": result.backend, "workers": result.workers,
            "points": len(result.rows), "evaluated": result.evaluated, "skipped": result.skipped,
            "failed": result.failed, "wall_s": result.wall_s, "busy_s": result.busy_s,
            "overhead": result.overhead,
            "pareto": {m: [r["point_id"] for r in rs] for m, rs in fronts.items()}}


def write_json(result, path) -> None:
    """--json: the summary and every row."""
    d = summary(result)
    d["rows"] = result.rows
    try:
        Path(path).write_text(json.dumps(d, indent=1, default=str))
    except OSError as exc:
        raise KCError(f"--json {path}: cannot write it: {exc}") from None


def print_summary(result) -> None:
    """The counts and times, then each model's Pareto front (its first 20 points) and the failures."""
    con = Console()
    s = summary(result)
    con.print(f"{s['points']} points: {s['evaluated']} evaluated now, {s['skipped']} already in {s['out']}, "
              f"{s['failed']} failed; {result.wall_s:.1f} s on {result.workers} {result.backend} "
              f"worker{'s' if result.workers > 1 else ''}"
              + (f", overhead {100 * result.overhead:.1f}% of the points' own time" if result.evaluated else ""),
              highlight=False)
    spec = result.spec
    show_target = len(spec.targets) > 1
    for model, rows in result.front.items():
        i = next((j for j, m in enumerate(spec.models) if m.label == model), None)
        params = [k for k, _ in spec.parameters_of(i)] if i is not None else spec.keys
        t = Table(title=f"{model}: Pareto front ({', '.join(result.spec.objectives)}), {len(rows)} of "
                        f"{sum(1 for r in result.rows if r['model'] == model and r['status'] == 'ok')} points",
                  title_justify="left", show_edge=False, pad_edge=False)
        short = short_names(params)
        for k in (["target"] if show_target else []) + params:
            t.add_column(short.get(k, k), overflow="fold")
        for c in ("ms", "mJ", "mm²", "inf/s"):
            t.add_column(c, justify="right")
        for r in sorted(rows, key=lambda r: r["latency_s"])[:20]:
            t.add_row(*([r["target"]] if show_target else []), *(fmt_value(r.get(k)) for k in params),
                      f"{r['latency_s'] * 1e3:.4g}", f"{r['energy_j'] * 1e3:.4g}", f"{(r['area_mm2'] or 0):.4g}",
                      f"{r['throughput_per_s']:.4g}")
        con.print(t)
        if len(rows) > 20:
            con.print(f"({len(rows) - 20} more on the front: --json has them all)")
    fails = [r for r in result.rows if r["status"] != "ok"]
    if fails:
        con.print(f"[yellow]{len(fails)} failed point(s)[/], e.g. {fails[0]['model']} on {fails[0]['target']}: "
                  f"{(fails[0]['error'] or '').splitlines()[0]}", highlight=False)
