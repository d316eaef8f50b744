"""`kc sweep SPEC.toml`: compile and simulate every point of a design space (docs/sweep.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kcompiler.errors import KCError
from kcompiler.sweep.spec import load


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
    from kcompiler.sweep import pareto, report, runner  # (Ray's side, rich's bar: ~70 ms of kc's start-up)

    spec, out = _spec_and_store(spec_path, out, resume, serial, address, workers, runner.load_spec_from_store)
    quiet = quiet or os.environ.get("KC_QUIET") == "1"
    progress = report.SweepProgress(spec, quiet)
    progress.announce(out, serial, address)
    try:
        result = runner.run(spec, out, address=address, serial=serial, workers=workers,
                            on_start=progress.on_start, on_result=progress.on_result, retry_failed=retry_failed)
    finally:
        progress.stop()
    if json_path:
        report.write_json(result, json_path)
    if result.rows and all(r["status"] != "ok" for r in result.rows):
        raise KCError(f"every point of the sweep failed; the first: {result.rows[0]['error']}",
                      hint=f"the rows and their messages are in {result.out}")
    if plot_path:
        pareto.plot(result.rows, spec.objectives, plot_path)
    if not quiet:
        report.print_summary(result)


def _spec_and_store(spec_path, out, resume, serial, address, workers, spec_from_store):
    """The sweep's Spec (from SPEC.toml, or with --resume from the store) and its results store,
    refusing options that do not go together."""
    if serial and (address or workers):
        raise KCError("--serial runs in this process: --address and --workers do not apply",
                      hint="drop --serial to run on Ray")
    if spec_path is None:
        if not resume:
            raise KCError("give a sweep spec (SPEC.toml), or --resume --out FILE to continue a recorded sweep",
                          hint="see examples/sweeps/")
        if out is None:
            raise KCError("--resume without a spec needs --out FILE (the results store to continue)")
        spec = spec_from_store(out)
    else:
        spec = load(spec_path)
        if resume and out is not None and not Path(out).exists():
            raise KCError(f"--resume: no results store at {out}", hint="drop --resume to start the sweep")
    out = out or f"{spec.name}.duckdb"
    if resume and not Path(out).exists():
        raise KCError(f"--resume: no results store at {out}", hint="drop --resume to start the sweep")
    return spec, out


if __name__ == "__main__":  # pragma: no cover
    sweep_cmd(sys.argv[1:])
