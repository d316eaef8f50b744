"""`kc sweep SPEC.toml`: compile and simulate every point of a design space (docs/sweep.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from kcompiler.errors import KCError

JSON_SCHEMA_VERSION = 1


@click.command("sweep")
@click.argument("spec_path", required=False, metavar="SPEC.toml")
@click.option("--out", "-o", default=None, metavar="FILE.duckdb",
              help="Results store (DuckDB; default: the spec's name + .duckdb here). Points already in it "
                   "are not evaluated again.")
@click.option("--address", default=None, metavar="ADDR",
              help="An existing Ray cluster (host:port from `ray start --head`); default: a local one.")
@click.option("--resume", is_flag=True,
              help="Continue the sweep recorded in --out (its spec is stored there; SPEC may be omitted).")
@click.option("--retry-failed", is_flag=True, help="Evaluate again the points stored as failed or lost.")
@click.option("--serial", is_flag=True, help="Evaluate the points one by one in this process (no Ray).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray workers (default: one per CPU of the cluster).")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the summary and every row as JSON.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Latency vs energy (colour: area) per model, Pareto front marked (needs matplotlib).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table (use --json).")
def sweep_cmd(spec_path, out, address, resume, retry_failed, serial, workers, json_path, plot_path, quiet):
    """Explore a design space: every point compiled in timing mode and simulated, on Ray.

    SPEC.toml names the models, the targets, the chip figures and options to vary, the objectives
    and the search (examples/sweeps/, docs/sweep.md). Prints the Pareto-optimal points per model."""
    from kcompiler.sweep import runner
    from kcompiler.sweep.spec import load

    if serial and (address or workers):
        raise KCError("--serial runs in this process: --address and --workers do not apply",
                      hint="drop --serial to run on Ray")
    if spec_path is None:
        if not resume:
            raise KCError("give a sweep spec (SPEC.toml), or --resume --out FILE to continue a recorded sweep",
                          hint="see examples/sweeps/")
        if out is None:
            raise KCError("--resume without a spec needs --out FILE (the results store to continue)")
        spec = runner.load_spec_from_store(out)
    else:
        spec = load(spec_path)
        if resume and out is not None and not Path(out).exists():
            raise KCError(f"--resume: no results store at {out}", hint="drop --resume to start the sweep")
    out = out or f"{spec.name}.duckdb"
    if resume and not Path(out).exists():
        raise KCError(f"--resume: no results store at {out}", hint="drop --resume to start the sweep")
    quiet = quiet or os.environ.get("KC_QUIET") == "1"

    from rich.console import Console

    err = Console(stderr=True)
    progress = None
    state = {"failed": 0, "n": 0}
    if not quiet:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                            TimeElapsedColumn(), TextColumn("[red]{task.fields[fails]}"), console=err)
    task = None

    def on_start(total, done):
        nonlocal task
        if progress is not None and err.is_terminal:
            progress.start()
            task = progress.add_task(spec.name, total=total, completed=done, rate="", fails="")

    def on_result(point, row):
        state["n"] += 1
        if row["status"] != "ok":
            state["failed"] += 1
        if progress is not None and not err.is_terminal:  # a log: one line per point
            fig = (f"{row['latency_s'] * 1e3:.4g} ms, {row['energy_j'] * 1e3:.4g} mJ" if row["status"] == "ok"
                   else f"{row['status']}: {(row.get('error') or '').splitlines()[0][:120]}")
            err.print(f"[{state['n']}] {point.model.label} on {point.target} {_params_text(point)}: {fig} "
                      f"({row.get('point_s', 0):.2f} s)", highlight=False, soft_wrap=True)
        elif progress is not None and task is not None:
            el = progress.tasks[0].elapsed or 0
            progress.update(task, advance=1, rate=f"{state['n'] / el:.2f} pt/s" if el > 0 else "",
                            fails=f"{state['failed']} failed" if state["failed"] else "")

    if not quiet:
        err.print(f"sweep [bold]{spec.name}[/]: {spec.grid_size} points in the grid, search {spec.search}"
                  + (f" ({spec.samples} per model)" if spec.search in ('nsga2', 'tpe') else
                     f" ({spec.samples} samples)" if spec.search == 'random' and spec.samples else "")
                  + f"; {'serial' if serial else 'Ray ' + (address or 'local')}; results in {out}", highlight=False)
    try:
        result = runner.run(spec, out, address=address, serial=serial, workers=workers, on_start=on_start,
                            on_result=on_result, retry_failed=retry_failed)
    finally:
        if progress is not None:
            progress.stop()
    if json_path:
        _write_json(result, json_path)
    if result.rows and all(r["status"] != "ok" for r in result.rows):
        raise KCError(f"every point of the sweep failed; the first: {result.rows[0]['error']}",
                      hint=f"the rows and their messages are in {result.out}")
    if plot_path:
        from kcompiler.sweep import pareto

        pareto.plot(result.rows, spec.objectives, plot_path)
    if not quiet:
        _print_summary(result)


def _params_text(point) -> str:
    from kcompiler.sweep.pareto import _fmt

    return " ".join(f"{k}={_fmt(v)}" for k, v in point.params)


def _summary(result) -> dict:
    from kcompiler import __version__

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


def _write_json(result, path) -> None:
    d = _summary(result)
    d["rows"] = result.rows
    try:
        Path(path).write_text(json.dumps(d, indent=1, default=str))
    except OSError as exc:
        raise KCError(f"--json {path}: cannot write it: {exc}") from None


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from kcompiler.sweep.pareto import _fmt, short_names

    con = Console()
    s = _summary(result)
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
            t.add_row(*([r["target"]] if show_target else []), *(_fmt(r.get(k)) for k in params),
                      f"{r['latency_s'] * 1e3:.4g}", f"{r['energy_j'] * 1e3:.4g}", f"{(r['area_mm2'] or 0):.4g}",
                      f"{r['throughput_per_s']:.4g}")
        con.print(t)
        if len(rows) > 20:
            con.print(f"({len(rows) - 20} more on the front: --json has them all)")
    fails = [r for r in result.rows if r["status"] != "ok"]
    if fails:
        con.print(f"[yellow]{len(fails)} failed point(s)[/], e.g. {fails[0]['model']} on {fails[0]['target']}: "
                  f"{(fails[0]['error'] or '').splitlines()[0]}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sweep_cmd(sys.argv[1:])
