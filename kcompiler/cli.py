"""The `kc` command line. User errors exit 1 with a one-paragraph message; --debug shows tracebacks."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kcompiler.errors import InputError, KCError

console = Console()
err_console = Console(stderr=True)


class KCGroup(click.Group):
    """Turns KCErrors (and anything unexpected) into a message and exit status 1."""

    def invoke(self, ctx):
        debug = "--debug" in sys.argv or os.environ.get("KC_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except KCError as exc:
            if debug:
                raise
            # messages quote shapes like [batch,3]: escape them so rich does not read them as markup
            err_console.print(f"[bold red]kc: {exc.kind}:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            if exc.hint:
                err_console.print(f"  [yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            ctx.exit(1)
        except click.UsageError as exc:
            # a mistake on the command line is the user's like any other: exit 1 with a hint (exit 2
            # is kept for kcompiler's own bugs)
            if debug:
                raise
            where = exc.ctx.command_path if exc.ctx is not None else "kc"
            err_console.print(f"[bold red]kc: usage error:[/] {escape(exc.format_message())}", highlight=False,
                              soft_wrap=True)
            err_console.print(f"  [yellow]hint:[/] run `{where} --help` for the options and their values",
                              highlight=False, soft_wrap=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except MemoryError:
            if debug:
                raise
            err_console.print("[bold red]kc: out of memory[/]; try --mode timing, which needs no weight data")
            ctx.exit(1)
        except KeyboardInterrupt:
            err_console.print("kc: interrupted")
            ctx.exit(130)
        except Exception as exc:  # a bug in kcompiler: say so, briefly
            if debug:
                raise
            err_console.print(f"[bold red]kc: internal error:[/] {type(exc).__name__}: {escape(str(exc))}",
                              highlight=False)
            err_console.print("  this is a bug in kcompiler; rerun with --debug and report the traceback")
            ctx.exit(2)


def _threads_option(f):
    """--threads N: the host threads of the simulators and of the measured peers (KC_THREADS)."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        n = kwargs.pop("threads", None)
        if n is None:
            return f(*args, **kwargs)
        before = os.environ.get("KC_THREADS")
        os.environ["KC_THREADS"] = str(n)
        try:
            return f(*args, **kwargs)
        finally:  # (for callers in one process: the tests' CliRunner)
            if before is None:
                os.environ.pop("KC_THREADS", None)
            else:
                os.environ["KC_THREADS"] = before

    return click.option("--threads", type=click.IntRange(1, 1024), default=None, metavar="N",
                        help="Host threads for the simulators and for --compare's ONNX Runtime and TVM "
                             "(default: KC_THREADS, else every core this process may use).")(wrapper)


def _debug_option(f):
    return click.option("--debug", is_flag=True, hidden=False, help="Show tracebacks.")(f)


def _shape_option(f):
    return _place_option(_zoo_options(click.option("--shape", "shape_specs", multiple=True,
                                                   metavar="NAME=1x3x224x224",
                                                   help="Bind an input's shape (repeatable).")(f)))


def _place_option(f):
    """--place KEY=DEVICE pins nodes (by node name, op type or *) to a device name or kind."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        pins = {}
        for spec in kwargs.pop("place_specs", ()):
            key, sep, dev = spec.rpartition("=")
            if not sep or not key or not dev:
                raise click.BadParameter(f"'{spec}': expected KEY=DEVICE, e.g. MatMul=npu or *=atom",
                                         param_hint="--place")
            pins[key] = dev
        click.get_current_context().meta["kc.place"] = pins or None
        return f(*args, **kwargs)

    return click.option("--place", "place_specs", multiple=True, metavar="KEY=DEVICE",
                        help="Pin nodes (a node name, an op type, or *) to a device or device kind "
                             "(repeatable); the rest are placed for the lowest latency.")(wrapper)


ZOO_OPTIONS = ("batch", "seq", "kv", "phase", "dtype", "layers", "weights")


def _zoo_options(f):
    """--batch/--seq/--kv/--phase/--dtype/--layers for zoo models, kept on the click context
    (not passed to the command) and given to kcompiler.compile by _compile."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.zoo"] = {k: kwargs.pop(k, None) for k in ZOO_OPTIONS}
        return f(*args, **kwargs)

    for name, kind, text in reversed((
            ("batch", int, "Zoo models: batch size."),
            ("seq", int, "Zoo models: sequence length (new tokens in the decode phase)."),
            ("kv", int, "Zoo LLMs: KV-cache length (decode phase)."),
            ("phase", click.Choice(["prefill", "decode"]), "Zoo LLMs: prefill or decode."),
            ("dtype", click.Choice(["fp32", "fp16", "bf16"]), "Zoo models: weight and activation type."),
            ("layers", int, "Zoo models: override the number of layers."),
            ("weights", click.Choice(["bundled", "random", "external"]),
             "Zoo models' weights. Bundled CNNs: the file's constant fills (bundled, default) or seeded "
             "random ones, whose outputs depend on the input (use these with --check). Transformers: "
             "random (default below 100M parameters) or external (an all-zero sparse file)."))):
        wrapper = click.option(f"--{name}", name, type=kind, default=None, help=text)(wrapper)
    return wrapper


def _parallel_options(with_devices: bool):
    """--parallel/--objective/--interconnect/--topology (and --devices) kept on the click context
    like the zoo options and given to kcompiler.compile by _compile."""
    import functools

    names = ("parallel", "objective", "interconnect", "topology") + (("devices",) if with_devices else ())

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            click.get_current_context().meta["kc.parallel"] = {k: kwargs.pop(k, None) for k in names}
            return f(*args, **kwargs)

        opts = [("--parallel", dict(type=click.Choice(["none", "data", "tensor", "pipeline", "auto"]), default="none",
                                    show_default=True, help="Split the model over the chips (with --devices N).")),
                ("--objective", dict(type=click.Choice(["latency", "throughput"]), default="latency",
                                     show_default=True, help="What --parallel auto optimises.")),
                ("--interconnect", dict(default=None, metavar="PRESET",
                                        help="Chip-to-chip fabric: pcie-gen4, pcie-gen5 (default), roce-400g, "
                                             "c2c-ring, c2c-mesh.")),
                ("--topology", dict(type=click.Choice(["switch", "ring", "all-to-all"]), default=None,
                                    help="Override the fabric's topology."))]
        if with_devices:
            opts.append(("--devices", dict(type=int, default=None, help="Number of chips.")))
        for flag, kw in reversed(opts):
            wrapper = click.option(flag, flag.strip("-"), **kw)(wrapper)
        return wrapper

    return deco


def _partition_option(f):
    """--partition INDEX/COUNT, kept on the click context like --place and given to kcompiler.compile."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.partition"] = kwargs.pop("partition", None)
        return f(*args, **kwargs)

    return click.option("--partition", "partition", default=None, metavar="INDEX/COUNT",
                        help="Compile for one of COUNT equal partitions of the chip (a virtual NPU): its cores, "
                             "its share of SRAM, DRAM and DRAM bandwidth; 1/2 is the second of two "
                             "(1/2@1.0: with all of the chip's bandwidth). A target may say it too: warboy[1/2].")(wrapper)


def _parallel_kwargs() -> dict:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("kc.parallel", {})) if ctx is not None else {}


def _zoo_kwargs() -> dict:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("kc.zoo", {})) if ctx is not None else {}


def _pass_options(f):
    f = click.option("--disable-pass", "disable", multiple=True, metavar="NAME",
                     help="Skip a pass, rule or pipeline (repeatable).")(f)
    f = click.option("--print-after", "print_after", multiple=True, metavar="NAME",
                     help="Print the graph after a pass or pipeline (repeatable).")(f)
    return f


def _shapes(specs) -> dict:
    from kcompiler.frontend import parse_shape_spec

    return dict(parse_shape_spec(s) for s in specs)


#: --target's help: what it takes
TARGET_HELP = ("A chip (warboy, atom, rngd, npu, aim, hbm-pim, host: `kc targets`), a system of chips "
               "joined by '+' or repeated by 'N x' (atom+aim, 4xatom), a partition of a chip (warboy[1/2]), "
               "or a chip TOML file.")

@click.group(cls=KCGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kcompiler")
def cli():
    """kcompiler: compile ONNX models for simulated NPU and PIM chips, and run them for values and time."""


def _given(name: str) -> bool:
    """Whether the user typed option `name` (its parameter name) on the command line."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _refuse_ignored_options(par: dict, target: str) -> None:
    """Options that would be accepted and then do nothing are refused, saying what they need."""
    if _given("objective") and par.get("parallel") != "auto":
        raise KCError("--objective only chooses among plans with --parallel auto",
                      hint="add --parallel auto (and --devices N), or drop --objective")
    from kcompiler import targets

    if (_given("interconnect") or _given("topology")) and \
            len(targets.resolve(target, par.get("devices")).accelerators) < 2:
        raise KCError("--interconnect and --topology describe the fabric between several chips",
                      hint="add --devices N (and --parallel) to use several chips, or drop them")


def _compile(model, target, shape_specs, disable=(), print_after=(), mode="functional", devices=None,
             quiet=False):
    import kcompiler

    par = _parallel_kwargs()
    _refuse_ignored_options({**par, "devices": devices if devices is not None else par.get("devices")}, target)
    devices = devices if devices is not None else par.pop("devices", None)
    par.pop("devices", None)
    par = {k: v for k, v in par.items() if v is not None}
    def printer(text):  # --print-after output, and --parallel auto's table of candidates
        if not quiet or print_after:
            console.print(text, highlight=False, markup=False)

    ctx = click.get_current_context(silent=True)
    part = ctx.meta.get("kc.partition") if ctx is not None else None
    with _status(f"compiling {model} for {target}" + (f" (partition {part})" if part else ""), quiet):
        return kcompiler.compile(model, target=target, shapes=_shapes(shape_specs), disable_passes=disable,
                                 print_after=print_after, printer=printer, mode=mode, devices=devices,
                                 place=_place_kwarg(), progress=progress.update, partition=part, **par,
                                 **_zoo_kwargs())


def _place_kwarg():
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("kc.place") if ctx is not None else None


@cli.command("compile")
@click.argument("model")
@click.option("--target", "-t", default="host", show_default=True, help=TARGET_HELP)
@_shape_option
@_pass_options
@click.option("--devices", type=int, default=None, help="Number of chips.")
@_parallel_options(with_devices=False)
@_partition_option
@click.option("--mode", type=click.Choice(["functional", "timing"]), default="functional", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the artifact here.")
@_debug_option
def compile_cmd(model, target, shape_specs, disable, print_after, devices, mode, output, debug):
    """Compile MODEL (an .onnx path or a zoo name) for a target."""
    cm = _compile(model, target, shape_specs, disable, print_after, mode, devices)
    table = Table(title=f"{cm.name} -> {cm.system.name}")
    table.add_column("device")
    table.add_column("nodes", justify="right")
    for dev, n in cm.placement.items():
        table.add_row(dev, str(n))
    console.print(table)
    console.print(f"compiled in {cm.compile_s:.3f} s; {len(cm.parts)} subgraph(s)")
    if cm.parallel is not None:
        p = cm.parallel
        console.print(f"parallel: {p.plan.label} over {len(p.devices)} chip(s); stages {p.stages}; "
                      f"communication ops {p.comm}", highlight=False)
    fired = cm.context.fired
    console.print("rules fired: " + (", ".join(f"{k} x{v}" for k, v in sorted(fired.items())) or "none"),
                  highlight=False)
    for name, seconds in cm.context.timings:
        if seconds > 0.05:
            console.print(f"  pass {name}: {seconds:.3f} s", highlight=False)
    if output:
        from kcompiler.runtime.artifact import save

        save(cm, output)
        console.print(f"wrote {output}")


def _load_npz(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such inputs file", hint="pass an .npz made with numpy.savez")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (np.load would try pickle on others)
        what = "a single .npy array" if magic == b"\x93NUM" else "not an .npz (zip) archive"
        raise InputError(f"{path}: {what}", hint="save inputs with numpy.savez(path, name=array, ...)")
    try:
        with np.load(p, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise InputError(f"{path}: is a single .npy array, not an .npz archive",
                                 hint="save inputs with numpy.savez(path, name=array, ...)")
            return {k: data[k] for k in data.files}
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"{path}: cannot read it as .npz ({exc})",
                         hint="object arrays (pickles) are refused; save plain numeric arrays") from None
    except Exception as exc:
        raise InputError(f"{path}: not an .npz file ({type(exc).__name__}: {exc})",
                         hint="save inputs with numpy.savez(path, name=array, ...)") from None


@cli.command("run")
@click.argument("model")
@click.option("--target", "-t", default="host", show_default=True, help=TARGET_HELP)
@click.option("--inputs", "inputs_path", default=None, help=".npz file of inputs (random if omitted).")
@click.option("--outputs", "outputs_path", default=None, help="Write outputs to this .npz file.")
@click.option("--check", is_flag=True, help="Compare with ONNX Runtime and print the largest error.")
@click.option("--rtol", type=float, default=None,
              help="Relative tolerance of --check [default: 1e-3; 2e-2 where values are 16-bit].")
@click.option("--atol", type=float, default=None,
              help="Absolute tolerance of --check [default: 1e-4; 2e-2 of each output's largest value "
                   "where values are 16-bit].")
@_shape_option
@_pass_options
@_parallel_options(with_devices=True)
@_partition_option
@_threads_option
@_debug_option
def run_cmd(model, target, inputs_path, outputs_path, check, rtol, atol, shape_specs, disable, print_after, debug):
    """Run MODEL on a target for values (and simulated time)."""
    if (_given("rtol") or _given("atol")) and not check:
        raise KCError("--rtol and --atol are the tolerances of --check", hint="add --check, or drop them")
    cm = _load_or_compile(model, target, shape_specs, disable, print_after)
    if inputs_path:
        feeds = _load_npz(inputs_path)
    else:
        feeds = cm.random_inputs()
        console.print("inputs: random (seed 0); give your own with --inputs FILE.npz", highlight=False)
    with _status(f"running {cm.name} on {cm.system.name}", False):
        outs = cm.run(feeds)
    for name, arr in outs.items():
        console.print(f"output {name}: shape {tuple(arr.shape)} dtype {arr.dtype}", highlight=False)
    if cm._report is not None:
        console.print(f"simulated latency {cm.report.latency_s * 1e3:.4f} ms on {cm.system.name}")
        for note in cm.report.notes:
            if note.startswith("host fallback:"):
                console.print(note, highlight=False)
    if outputs_path:
        np.savez(outputs_path, **outs)
        console.print(f"wrote {outputs_path}")
    if check:
        from kcompiler.check import compare_with_ort, reduced_precision, reference_description

        reduced = reduced_precision(cm)
        scale = 0.0
        if reduced and rtol is None and atol is None:
            why, (rtol, scale) = reduced
            atol = 0.0
            console.print(f"reduced precision ({why}): tolerance rtol {rtol}, atol {scale} of each output's "
                          "largest value", highlight=False)
        rtol = 1e-3 if rtol is None else rtol
        atol = 1e-4 if atol is None else atol
        on_host, total, share = cm.host_share()
        if cm.system.accelerators and share > 0.5:
            err_console.print(f"kc: warning: {share:.0%} of the FLOPs ({on_host} of {total} nodes) ran on the host, "
                              "whose values are ONNX Runtime's own: this check says little about the chip "
                              "(`kc inspect` says why each node went to the host)", highlight=False, soft_wrap=True)
        worst = compare_with_ort(cm, cm.check_feeds(feeds), outs, rtol=rtol, atol=atol, atol_scale=scale)
        console.print(f"check against onnxruntime on {reference_description(cm)}", highlight=False)
        console.print(f"check against onnxruntime: largest abs error {worst.max_abs:.3g}, "
                      f"largest rel error {worst.max_rel:.3g} (rtol {rtol}, atol {max(atol, scale)}"
                      f"{' x scale' if scale else ''}): "
                      + ("[green]match[/]" if worst.ok else "[red]MISMATCH[/]"))
        if not worst.ok:
            from kcompiler.zoo import BUNDLED

            hint = None
            if model in BUNDLED and _zoo_kwargs().get("weights") != "random":
                hint = (f"'{model}' as bundled has constant-fill weights: every class gets the same huge score, "
                        "so its softmax turns on one-ulp rounding differences between two correct "
                        "implementations; check it with --weights random")
            raise KCError(f"outputs of '{cm.name}' on {cm.system.name} differ from onnxruntime: "
                          f"{worst.describe()}", hint=hint)


#: options that apply to running or showing a model, not to compiling it (an artifact takes them)
_RUN_OPTIONS = frozenset({"model", "inputs_path", "outputs_path", "check", "rtol", "atol", "debug", "asm", "quiet"})


def _load_or_compile(model, target, shape_specs, disable=(), print_after=()):
    if str(model).endswith(".kcm"):
        import kcompiler

        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            given = [p for p in ctx.command.params if p.name not in _RUN_OPTIONS and _given(p.name)]
            if given:
                flags = ", ".join(p.opts[-1] if len(p.opts) == 1 else p.opts[0] for p in given)
                raise KCError(f"{flags}: '{model}' is a compiled artifact, so compile options do not apply "
                              "to it (it runs the program it holds)",
                              hint=f"drop {flags}, or compile again: kc compile MODEL ... -o {model}")
        return kcompiler.load(model)
    return _compile(model, target, shape_specs, disable, print_after)


@cli.command("bench")
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
@_shape_option
@_pass_options
@_parallel_options(with_devices=True)
@_partition_option
@_threads_option
@_debug_option
def bench_cmd(model, target_list, mode, json_path, trace_path, plot_path, quiet, fmt, wide, compare, shape_specs,
              disable, print_after, debug):
    """Compile MODEL for each target and report simulated latency, bytes and energy."""
    from kcompiler.runtime.report import comparison_table

    results, reports = [], []
    cm = None
    if plot_path:
        from kcompiler.runtime import plot

        plot._matplotlib()  # fail before compiling anything if it is missing
        plot_files = plot.plot_paths(plot_path, list(target_list))
    for i, target in enumerate(target_list):
        cm = _compile(model, target, shape_specs, disable, print_after, mode=mode, quiet=quiet)
        with _status(f"simulating {model} on {target}", quiet):
            if mode == "functional":
                cm.run(cm.random_inputs())
            rep = cm.simulate(mode)
        if not quiet and len(target_list) == 1 and fmt == "table":
            console.print(rep.table())
        reports.append(rep)
        results.append(rep.to_dict())
        if trace_path and i == 0:
            Path(trace_path).write_text(json.dumps(rep.chrome_trace()))
        if plot_path:
            with _status(f"plotting {plot_files[i]}", quiet):
                plot.plot_report(rep, cm.system, plot_files[i])
            if not quiet:
                console.print(f"wrote {plot_files[i]}")
    peers = []
    if compare:
        from kcompiler.peers import compare_peers
        from kcompiler.threads import host_threads

        load = _loadavg()
        if load is not None and load > 0.5 * (os.cpu_count() or 1):
            err_console.print(f"kc: warning: this machine is busy (load average {load:.1f} on {os.cpu_count()} "
                              f"CPUs): the wall times measured for --compare will be slower than on a quiet "
                              "machine (the simulated figures do not change)", highlight=False, soft_wrap=True)
        with _status(f"measuring {compare} on this CPU ({host_threads()} threads)", quiet):
            peers = [{**r.to_dict(), "loadavg_1min": load}
                     for r in compare_peers(cm, [p.strip() for p in compare.split(",") if p.strip()])]
    doc = bench_document(results, peers)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=1))
    elif fmt == "csv":
        from kcompiler.runtime.report import comparison_csv

        click.echo(comparison_csv(reports, peers), nl=False)
    elif not quiet and (len(reports) > 1 or peers):
        if wide:
            from rich.console import Console

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
    from importlib.metadata import version

    from kcompiler.threads import host_threads

    try:
        load = list(os.getloadavg())
    except OSError:  # not on this platform (_loadavg)
        load = None
    return {"schema_version": BENCH_SCHEMA_VERSION, "kcompiler": version("kcompiler"),
            "host": {"cpus": os.cpu_count(), "threads": host_threads(), "loadavg": load},
            "results": results, "peers": peers}


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class _Progress:
    """Where a long command is: on a terminal a spinner with the step, its stage and detail and the
    time since the step began; otherwise one line per stage on stderr ("kc: compiling resnet50 for
    atom: passes (415 nodes)"); nothing with --quiet or KC_QUIET=1."""

    def __init__(self):
        self.quiet = False
        self.step = ""
        self.stage = ""
        self.t0 = 0.0
        self._status = None

    def begin(self, step: str, quiet: bool = False):
        import contextlib
        import time

        @contextlib.contextmanager
        def run():
            silent = quiet or self.quiet or os.environ.get("KC_QUIET") == "1"
            outer = (self.step, self.stage, self.t0, self.quiet)
            self.step, self.stage, self.t0, self.quiet = step, "", time.perf_counter(), silent
            if not silent and console.is_terminal and self._status is None:
                self._status = console.status(step)
                self._status.start()
                started = True
            else:
                started = False
            self.update("", "")
            try:
                yield self
            finally:
                if started:
                    self._status.stop()
                    self._status = None
                self.step, self.stage, self.t0, self.quiet = outer

        return run()

    def update(self, stage: str, detail: str = "") -> None:
        import time

        if self.quiet:
            return
        if self._status is not None:
            text = self.step + (f": {stage}" if stage else "") + (f" ({detail})" if detail else "")
            self._status.update(f"{escape(text)} [dim]{time.perf_counter() - self.t0:.1f} s[/]")
        elif not console.is_terminal and (stage != self.stage or not stage):
            # one line per stage (not per partition) where no spinner can be redrawn
            err_console.print(f"kc: {self.step}" + (f": {stage}" if stage else "") + (f" ({detail})" if detail else ""),
                              highlight=False, markup=False, soft_wrap=True)
        self.stage = stage


progress = _Progress()


def _status(text: str, quiet: bool):
    """Show a step of a command (see _Progress): `with _status("simulating ...", quiet):`."""
    return progress.begin(text, quiet)


def _artifact_table(art) -> Table:
    m = art.manifest
    t = Table(title=f"artifact {art.path.name}: {m['model']} for {m['system']['name']} ({m['mode']}), "
                    f"format {m['format_version']}, kcompiler {m['compiler_version']}, loaded in {art.load_s:.3f} s")
    for col in ("section", "offset", "bytes", "sha256"):
        t.add_column(col, justify="right" if col in ("offset", "bytes") else "left")
    for sec in art.sections:
        t.add_row(sec["name"], f"{sec['offset']:,}", f"{sec['length']:,}", sec["sha256"][:16] + "...")
    return t


@cli.command("inspect")
@click.argument("model")
@click.option("--target", "-t", default="host", show_default=True, help=TARGET_HELP)
@click.option("--asm", is_flag=True, help="Print each device's program in assembler form.")
@_shape_option
@_debug_option
def inspect_cmd(model, target, asm, shape_specs, debug):
    """Show MODEL's ops, shapes, parameters, FLOPs and placement."""
    from kcompiler import opinfo
    from kcompiler.runtime.partition import DEVICE_KEY, REASON_KEY

    cm = _load_or_compile(model, target, shape_specs)
    if cm.artifact is not None:
        console.print(_artifact_table(cm.artifact))
    g = cm.model.graph
    hist = Counter(n.op_type for n in g)
    st = cm.source_stats
    table = Table(title=f"{cm.name}: {len(g)} nodes after kcompiler's passes"
                  + (f" ({st['nodes']} as loaded)" if st else ""))
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("GFLOPs", justify="right")
    fl = Counter()
    for n in g:
        fl[n.op_type] += opinfo.flops(n)
    for op, c in hist.most_common():
        table.add_row(op, str(c), f"{fl[op] / 1e9:.3f}")
    console.print(table)
    for v in g.inputs:
        console.print(f"input  {v.name}: {opinfo.shape_of(v)} {v.dtype}", highlight=False)
    for v in g.outputs:
        console.print(f"output {v.name}: {opinfo.shape_of(v)} {v.dtype}", highlight=False)
    if st:
        console.print(f"model as loaded (as `kc zoo` counts it): {st['nodes']:,} nodes; parameters: "
                      f"{st['params']:,}; FLOPs: {st['flops']:,}; MACs: {st['macs']:,}", highlight=False)
    console.print(f"compiled graph: {len(g):,} nodes; parameters: {opinfo.parameter_count(cm.model):,}; "
                  f"FLOPs: {sum(fl.values()):,} (folding and fusion change what is counted)", highlight=False)
    if len(cm.system.devices) > 1:
        pt = Table(title="placement")
        for col in ("node", "op", "device", "why"):
            pt.add_column(col)
        for n in g:
            pt.add_row(n.name, n.op_type, n.metadata_props.get(DEVICE_KEY, "host"),
                       n.metadata_props.get(REASON_KEY, ""))
        console.print(pt)
    if asm:
        for sub, prog in zip(cm.parts, cm.programs):
            text = prog.asm()
            console.print(f"; ---- {sub.device}: {len(sub.nodes)} node(s) ----", highlight=False, markup=False)
            if text:  # one instruction per line, never wrapped: the text is an assembler's input
                console.print(text, highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(f"; runs with ONNX Runtime on the host: "
                              f"{', '.join(n.op_type for n in sub.nodes[:20])}", highlight=False, markup=False)


@cli.group("targets", invoke_without_command=True)
@click.pass_context
def targets_cmd(ctx):
    """List every chip with its headline figures (`kc targets show NAME` for all of them)."""
    if ctx.invoked_subcommand is not None:
        return
    from kcompiler.targets import list_targets

    table = Table(title="targets")
    for col in ("name", "kind", "aliases", "headline", "description"):
        table.add_column(col)
    for c in list_targets():
        table.add_row(c.name, c.kind, ", ".join(c.aliases), c.headline(), c.description)
    console.print(table)
    console.print("systems: combine chips with '+' (atom+aim) or repeat them with 'N x' (4xatom)")


@targets_cmd.command("show")
@click.argument("name")
@_debug_option
def targets_show(name, debug):
    """Print a chip's full description, or a system's (atom+aim, 4xatom): devices, links, chips; and
    the modelled die area with its breakdown (a system's: by accelerator, the host not counted)."""
    from kcompiler import targets as t
    from kcompiler.targets import area

    if t.is_system_name(name):
        system = t.resolve(name)
        console.print_json(json.dumps({**t.describe_system(system), "area": area.system_area(system).describe()}))
        return
    chip = t.chip(name)
    console.print_json(json.dumps({**t.describe(chip), "area": area.chip_area(chip).describe()}))


@cli.command("zoo")
def zoo_cmd():
    """List the models kcompiler can compile by name."""
    from kcompiler.zoo import entries

    from kcompiler.zoo.stats import cached_stats, entry_stats, human

    table = Table(title="model zoo (parameters and FLOPs at default options; LLMs: prefill, per token)")
    for col in ("name", "family", "params", "FLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs") else "left",
                         no_wrap=col != "description")
    for name, e in sorted(entries().items()):
        try:
            st = cached_stats(e)
            if st is None:
                with _status(f"counting {name} (once: the counts are cached)", False):
                    st = entry_stats(e)
            params, fl = human(st["params"]), f"{human(st['flops_per_unit'])}/{st['unit']}"
        except KCError as exc:
            params, fl = "?", f"? ({exc.message[:40]})"
        table.add_row(name, e.family, params, fl, e.description)
    console.print(table)


@cli.command("passes")
def passes_cmd():
    """List passes and pipelines (names for --disable-pass and --print-after)."""
    from kcompiler.passes import PIPELINES, list_passes

    for name, doc in list_passes().items():
        console.print(f"{name:24s} {doc}", highlight=False)
    for name, items in PIPELINES.items():
        console.print(f"pipeline {name}: {' -> '.join(items)}", highlight=False)


# `kc serve` (kcompiler/serve: the Open Inference Protocol); the module imports no server library
from kcompiler.serve.cli import serve_cmd  # noqa: E402

cli.add_command(serve_cmd)
# `kc sweep` (kcompiler/sweep: design-space exploration on Ray); Ray is imported only when it runs
from kcompiler.sweep.cli import sweep_cmd  # noqa: E402

cli.add_command(sweep_cmd)

# `kc cluster` (kcompiler/cluster: the K-Cloud fleet serving simulator)
from kcompiler.cluster.cli import cluster_cmd  # noqa: E402

cli.add_command(cluster_cmd)


def main(argv=None):
    # strip --debug wherever it appears so every subcommand accepts it
    cli.main(args=argv, prog_name="kc")


if __name__ == "__main__":
    main()
