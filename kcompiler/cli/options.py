"""Options shared by several commands, and reading them back.

The zoo, parallel, placement, partition and device (Backend.options) options are not passed to the
command function: a wrapper keeps them on the click context (ctx.meta), where kcompiler.cli.driver
reads them when it compiles the model. --threads sets KC_THREADS around the command.
"""

from __future__ import annotations

import functools
import os

import click

from kcompiler.targets.kinds import backend_class, known_kinds

#: --target's help: what it takes
TARGET_HELP = ("A chip (warboy, atom, rngd, npu, aim, hbm-pim, hermes, hermes-1p, isaac, host: `kc targets`), "
               "a system of chips joined by '+' or repeated by 'N x' (atom+aim, 4xatom, atom+hermes), a partition "
               "of a chip (warboy[1/2]), or a chip TOML file.")


def threads_option(f):
    """--threads N: the host threads of the simulators and of the measured peers (KC_THREADS)."""

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


def debug_option(f):
    """--debug: show tracebacks (KCGroup reads it from sys.argv, wherever it appears)."""
    return click.option("--debug", is_flag=True, hidden=False, help="Show tracebacks.")(f)


def backend_option_table() -> dict[str, tuple[str, str]]:
    """Every option the installed chip kinds declare (Backend.options): name -> (metavar, help)."""
    table: dict[str, tuple[str, str]] = {}
    for kind in known_kinds():
        cls = backend_class(kind)
        table.update(getattr(cls, "options", {}) if cls is not None else {})
    return table


def device_options(f):
    """--cim-time and the other options chip kinds declare (Backend.options), kept on the click
    context and given to kcompiler.compile as device_options (or to a loaded artifact's configure)."""
    table = backend_option_table()

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.device"] = {k: kwargs.pop(k, None) for k in table}
        return f(*args, **kwargs)

    for name, (metavar, text) in reversed(table.items()):
        wrapper = click.option("--" + name.replace("_", "-"), name, default=None, metavar=metavar, help=text)(wrapper)
    return wrapper


def device_kwargs() -> dict:
    """The backend options (device_options) of the command being run, those given."""
    ctx = click.get_current_context(silent=True)
    return {k: v for k, v in (ctx.meta.get("kc.device", {}) if ctx is not None else {}).items() if v is not None}


def shape_option(f):
    """--shape NAME=DIMS (repeatable), with the zoo, --place and --bind options every model-taking command has."""
    return bind_option(device_options(place_option(zoo_options(click.option(
        "--shape", "shape_specs", multiple=True, metavar="NAME=1x3x224x224",
        help="Bind an input's shape (repeatable).")(f)))))


def bind_option(f):
    """--bind NAME=VALUE (repeatable): fix an input to a compile-time constant, kept on the click context
    (kc.bind) and given to kcompiler.compile as bind={name: text}; the frontend (kcompiler.frontend.bind)
    reads the text as the input's dtype and refuses what does not fit."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from kcompiler.frontend.bind import parse_bind_spec  # (numpy and onnx_ir: not at kc's start-up)

        bound = {}
        for spec in kwargs.pop("bind_specs", ()):
            name, value = parse_bind_spec(spec)
            bound[name] = value
        click.get_current_context().meta["kc.bind"] = bound or None
        return f(*args, **kwargs)

    return click.option("--bind", "bind_specs", multiple=True, metavar="NAME=VALUE",
                        help="Fix an input to a constant at compile time (repeatable), e.g. --bind sr=16000: it "
                             "leaves the compiled model's inputs, and an If it decides is folded away so its "
                             "branch can run on a chip. VALUE: a number, true/false, or a list like [1,0,1].")(wrapper)


def bind_kwarg():
    """The --bind values of the command being run ({name: text}, or None without any)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("kc.bind") if ctx is not None else None


def place_option(f):
    """--place KEY=DEVICE pins nodes (by node name, op type or *) to a device name or kind;
    --allow-low-precision lets placement put the ops a 16-bit format changes on a 16-bit device."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.allow_low_precision"] = kwargs.pop("allow_low_precision", False)
        pins = {}
        for spec in kwargs.pop("place_specs", ()):
            key, sep, dev = spec.rpartition("=")
            if not sep or not key or not dev:
                raise click.BadParameter(f"'{spec}': expected KEY=DEVICE, e.g. MatMul=npu or *=atom",
                                         param_hint="--place")
            pins[key] = dev
        click.get_current_context().meta["kc.place"] = pins or None
        return f(*args, **kwargs)

    wrapper = click.option("--allow-low-precision", "allow_low_precision", is_flag=True, default=False,
                           help="Let a 16-bit device (a PIM computing BF16/FP16) take the ops a 16-bit format "
                                "changes: normalisations, softmax inputs, sums of over 256 elements and the "
                                "element-wise ops feeding them (by default they stay in FP32; `kc inspect` "
                                "lists them).")(wrapper)
    return click.option("--place", "place_specs", multiple=True, metavar="KEY=DEVICE",
                        help="Pin nodes (a node name, an op type, or *) to a device or device kind "
                             "(repeatable); the rest are placed for the lowest latency. A pin also allows "
                             "16-bit for the nodes it names (see --allow-low-precision).")(wrapper)


ZOO_OPTIONS = ("batch", "seq", "kv", "phase", "dtype", "layers", "weights", "calibrate")

#: --dtype's choices: the float types and the quantised ones (kcompiler.quantize)
DTYPE_CHOICES = ("fp32", "fp16", "bf16", "int8", "fp8", "int4")

CALIBRATE_HELP = ("With --dtype int8|fp8: calibration data, an .npz with a leading sample axis per input or a "
                  "folder of .npz files (one sample each); 'synthetic' for seeded random inputs (timing only). "
                  "Zoo models default to their own set; timing-only runs of files to synthetic inputs.")


def zoo_options(f):
    """--batch/--seq/--kv/--phase/--dtype/--layers/--weights for zoo models, and --dtype/--calibrate for any
    model, kept on the click context (not passed to the command) and given to kcompiler.compile by
    kcompiler.cli.driver (--dtype int8|fp8|int4 quantises the model first: kcompiler.driver.quantise)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.zoo"] = {k: kwargs.pop(k, None) for k in ZOO_OPTIONS}
        return f(*args, **kwargs)

    for name, kind, text in reversed((
            ("batch", int, "Zoo models: batch size."),
            ("seq", int, "Zoo models: sequence length (new tokens in the decode phase)."),
            ("kv", int, "Zoo LLMs: KV-cache length (decode phase)."),
            ("phase", click.Choice(["prefill", "decode"]), "Zoo LLMs: prefill or decode."),
            ("dtype", click.Choice(DTYPE_CHOICES),
             "Weight and activation type: fp32/fp16/bf16 (zoo models are built so; a file must be at it), or "
             "int8 / fp8 (QDQ, calibrated with --calibrate) / int4 (4-bit weights, float activations), "
             "quantised with ONNX Runtime's quantiser unless the zoo builds the model so."),
            ("layers", int, "Zoo models: override the number of layers."),
            ("weights", click.Choice(["bundled", "random", "external"]),
             "Zoo models' weights. Bundled CNNs: the file's constant fills (bundled, default) or seeded "
             "random ones, whose outputs depend on the input (use these with --check). Transformers: "
             "random (default below 100M parameters) or external (an all-zero sparse file)."),
            ("calibrate", str, CALIBRATE_HELP))):
        wrapper = click.option(f"--{name}", name, type=kind, default=None, help=text,
                               metavar="DATA" if name == "calibrate" else None)(wrapper)
    return wrapper


def parallel_options(with_devices: bool):
    """--parallel/--objective/--interconnect/--topology (and --devices) kept on the click context
    like the zoo options and given to kcompiler.compile by kcompiler.cli.driver."""

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


def partition_option(f):
    """--partition INDEX/COUNT, kept on the click context like --place and given to kcompiler.compile."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["kc.partition"] = kwargs.pop("partition", None)
        return f(*args, **kwargs)

    return click.option("--partition", "partition", default=None, metavar="INDEX/COUNT",
                        help="Compile for one of COUNT equal partitions of the chip (a virtual NPU): its cores, "
                             "its share of SRAM, DRAM and DRAM bandwidth; 1/2 is the second of two "
                             "(1/2@1.0: with all of the chip's bandwidth). A target may say it too: "
                             "warboy[1/2].")(wrapper)


def parallel_kwargs() -> dict:
    """--parallel/--objective/--interconnect/--topology (and --devices) of the command being run."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("kc.parallel", {})) if ctx is not None else {}


def zoo_kwargs() -> dict:
    """The zoo options (ZOO_OPTIONS) of the command being run."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("kc.zoo", {})) if ctx is not None else {}


def pass_options(f):
    """--disable-pass and --print-after (repeatable)."""
    f = click.option("--disable-pass", "disable", multiple=True, metavar="NAME",
                     help="Skip a pass, rule or pipeline (repeatable).")(f)
    f = click.option("--print-after", "print_after", multiple=True, metavar="NAME",
                     help="Print the graph after a pass or pipeline (repeatable).")(f)
    return f


def shapes(specs) -> dict:
    """{input name: shape} of the --shape specs."""
    from kcompiler.frontend import parse_shape_spec  # (onnx and onnx_ir: not at kc's start-up)

    return dict(parse_shape_spec(s) for s in specs)


def given(name: str) -> bool:
    """Whether the user typed option `name` (its parameter name) on the command line."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def allow_low_precision_kwarg() -> bool:
    """Whether the command being run was given --allow-low-precision."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx.meta.get("kc.allow_low_precision")) if ctx is not None else False


def place_kwarg():
    """The --place pins of the command being run (None without any)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("kc.place") if ctx is not None else None
