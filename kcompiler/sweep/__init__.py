"""Design-space exploration: `kc sweep SPEC.toml` compiles and simulates many configurations.

A spec (kcompiler.sweep.spec) names models, targets, the chip figures and compile options to
vary, the objectives and the search (grid, random, Optuna's NSGA-II or TPE). Points run on
Ray (a local cluster by default, an existing one with ``address``) or serially in this process;
every row lands in a DuckDB store as it completes, so a re-run skips what is done.

    from kcompiler import sweep
    result = sweep.run("examples/sweeps/atom-small.toml", out="atom-small.duckdb")
    for model, rows in result.front.items(): ...
"""

from __future__ import annotations

from pathlib import Path

from kcompiler.sweep.spec import OBJECTIVES, Point, Spec, load, parse


def run(spec: "Spec | str | Path", out: "str | Path | None" = None, **kw):
    """Run a sweep (a Spec or a spec file); see kcompiler.sweep.runner.run for the options
    (address, serial, workers, on_start, on_result, retry_failed). `out` defaults to the spec's
    name with .duckdb in the current folder."""
    from kcompiler.sweep import runner  # (~40 ms: this package is imported when `kc` starts)

    if not isinstance(spec, Spec):
        spec = load(spec)
    return runner.run(spec, out or f"{spec.name}.duckdb", **kw)


__all__ = ["OBJECTIVES", "Point", "Spec", "load", "parse", "run"]
