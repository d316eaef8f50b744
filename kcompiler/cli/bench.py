"""`kc bench MODEL`: simulated latency, bytes and energy on one or more targets, side by side, with
the wall time of ONNX Runtime and TVM on this CPU if asked (--compare); its JSON document."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import click
from rich.console import Console

from kcompiler.cli.driver import compile_model
from kcompiler.cli.options import (TARGET_HELP, debug_option, parallel_options, partition_option, pass_options,
                                   shape_option, threads_option)
from kcompiler.cli.output import console, err_console, status
from kcompiler.threads import host_threads


@click.command("bench")
@click.argument("model")
@click.option("--target", "-t", "target_list", multiple=True, default=("host",), show_default=True,
              help=TARGET_HELP + " Repeat it to compare targets side by side.")
@click.option("--mode", type=click.Choice(["functional", "timing"]), default="timing", show_default=True)
@click.option("--json", "json_path", default=None, help="Write results as JSON.")
@click.option("--trace", "trace_path", default=None, help="Write a Chrome trace (first target).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Draw a roofline of every op and a per-engine timeline (needs matplotlib; "
                   "FILE-<target>.png for several targets).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (for scripts; use --json).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="How to print the comparison: a table fitted to the terminal (80 columns when piped), "
                   "CSV rows, or the --json document.")
@click.option("--wide", is_flag=True, help="One row per target whatever the terminal's width.")
@click.option("--compare", "compare", default="", metavar="ort,tvm",
              help="Also measure this CPU's wall time with ONNX Runtime and/or a TVM Relax llvm build.")
@shape_option
@pass_options
@parallel_options(with_devices=True)
@partition_option
@threads_option
@debug_option
def bench_cmd(model, target_list, mode, json_path, trace_path, plot_path, quiet, fmt, wide, compare, shape_specs,
              disable, print_after, debug):
    """Compile MODEL for each target and report simulated latency, bytes and energy."""
    # (kcompiler.runtime imports the backends' base: ~40 ms of kc's start-up; plot imports matplotlib
    # only when it draws)
    from kcompiler.runtime import plot
    from kcompiler.runtime.report import comparison_csv, comparison_table

    results, reports = [], []
    cm = None
    if plot_path:
        plot._matplotlib()  # fail before compiling anything if it is missing
        plot_files = plot.plot_paths(plot_path, list(target_list))
    for i, target in enumerate(target_list):
        cm = compile_model(model, target, shape_specs, disable, print_after, mode=mode, quiet=quiet,
                           targets_given=tuple(target_list))
        with status(f"simulating {model} on {target}", quiet):
            if mode == "functional":
                cm.run(cm.random_inputs())
            rep = cm.simulate(mode)
        if not quiet and len(target_list) == 1 and fmt == "table":
            console.print(rep.table())
        reports.append(rep)
        results.append(with_dtype(rep.to_dict(), cm))
        if trace_path and i == 0:
            Path(trace_path).write_text(json.dumps(rep.chrome_trace()))
        if plot_path:
            with status(f"plotting {plot_files[i]}", quiet):
                plot.plot_report(rep, cm.system, plot_files[i])
            if not quiet:
                console.print(f"wrote {plot_files[i]}")
    peers = []
    if compare:
        from kcompiler.peers import compare_peers  # (ONNX Runtime, and TVM if asked for)

        load = _loadavg()
        if load is not None and load > 0.5 * (os.cpu_count() or 1):
            err_console.print(f"kc: warning: this machine is busy (load average {load:.1f} on {os.cpu_count()} "
                              f"CPUs): the wall times measured for --compare will be slower than on a quiet "
                              "machine (the simulated figures do not change)", highlight=False, soft_wrap=True)
        with status(f"measuring {compare} on this CPU ({host_threads()} threads)", quiet):
            peers = [{**r.to_dict(), "loadavg_1min": load}
                     for r in compare_peers(cm, [p.strip() for p in compare.split(",") if p.strip()])]
    doc = bench_document(results, peers)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=1))
    elif fmt == "csv":
        click.echo(comparison_csv(reports, peers), nl=False)
    elif not quiet and (len(reports) > 1 or peers):
        if wide:
            table = comparison_table(reports, peers)
            need = console.measure(table, options=console.options.update(width=10_000)).maximum
            Console(width=max(need, console.width), file=console.file, force_terminal=console.is_terminal,
                    no_color=console.no_color).print(table)
        else:
            console.print(comparison_table(reports, peers, width=console.width, console=console))
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=1))
        if not quiet:
            console.print(f"wrote {json_path}", highlight=False)
    if trace_path and not quiet:
        console.print(f"wrote {trace_path} (open it in https://ui.perfetto.dev)", highlight=False)


#: the version of `kc bench --json`'s document (docs/json.md); raised when a key changes meaning or goes
BENCH_SCHEMA_VERSION = 1


def bench_document(results: list[dict], peers: list[dict]) -> dict:
    """`kc bench --json`'s document: its schema version, what measured it, the results and peers."""
    try:
        load = list(os.getloadavg())
    except OSError:  # not on this platform (_loadavg)
        load = None
    dtypes = sorted({r["dtype"] for r in results if r.get("dtype")})
    return {"schema_version": BENCH_SCHEMA_VERSION, "kcompiler": version("kcompiler"),
            "host": {"cpus": os.cpu_count(), "threads": host_threads(), "loadavg": load},
            "dtype": dtypes[0] if len(dtypes) == 1 else (dtypes or None), "results": results, "peers": peers}


def with_dtype(result: dict, cm) -> dict:
    """A result with the dtype the compiled model computes at (int8, fp8, int4, fp32, fp16, bf16), unless the
    report already says it."""
    if not result.get("dtype"):
        dtype = getattr(cm, "dtype", None)
        if dtype is None:
            from kcompiler.quantize import model_dtype  # (onnx: not at kc's start-up)

            dtype = model_dtype(cm.model)
        result["dtype"] = dtype
    return result


def _loadavg() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
