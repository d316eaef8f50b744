"""What kcompiler knows by name: `kc targets` (and `kc targets show NAME`), `kc zoo`, `kc passes`."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from kcompiler import targets
from kcompiler.cli.options import debug_option
from kcompiler.cli.output import console, status
from kcompiler.errors import KCError
from kcompiler.targets import list_targets
from kcompiler.zoo import entries


@click.group("targets", invoke_without_command=True)
@click.pass_context
def targets_cmd(ctx):
    """List every chip with its headline figures (`kc targets show NAME` for all of them)."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="targets")
    for col in ("name", "kind", "aliases", "headline", "description"):
        table.add_column(col)
    for c in list_targets():
        table.add_row(c.name, c.kind, ", ".join(c.aliases), c.headline(), c.description)
    console.print(table)
    console.print("systems: combine chips with '+' (atom+aim) or repeat them with 'N x' (4xatom)")


@targets_cmd.command("show")
@click.argument("name")
@debug_option
def targets_show(name, debug):
    """Print a chip's full description, or a system's (atom+aim, 4xatom): devices, links, chips; and
    the modelled die area with its breakdown (a system's: by accelerator, the host not counted)."""
    from kcompiler.targets import area  # (area and zoo.stats: ~10 ms of kc's start-up, measured)

    if targets.is_system_name(name):
        system = targets.resolve(name)
        console.print_json(json.dumps({**targets.describe_system(system),
                                       "area": area.system_area(system).describe()}))
        return
    chip = targets.chip(name)
    console.print_json(json.dumps({**targets.describe(chip), "area": area.chip_area(chip).describe()}))


@click.command("zoo")
def zoo_cmd():
    """List the models kcompiler can compile by name."""
    from kcompiler.zoo.stats import cached_stats, entry_stats, human

    table = Table(title="model zoo (parameters and FLOPs at default options; LLMs: prefill, per token)")
    for col in ("name", "family", "params", "FLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs") else "left",
                         no_wrap=col != "description")
    for name, e in sorted(entries().items()):
        try:
            st = cached_stats(e)
            if st is None:
                with status(f"counting {name} (once: the counts are cached)", False):
                    st = entry_stats(e)
            params, fl, desc = human(st["params"]), f"{human(st['flops_per_unit'])}/{st['unit']}", e.description
        except KCError as exc:  # the reason goes in the wrapping column (in FLOPs' it squeezed the others),
            # escaped: rich would take a shape such as [batch,sequence] in it for markup and drop it
            params, fl, desc = "?", "?", escape(f"{e.description} (not counted: {exc.message})")
        table.add_row(name, e.family, params, fl, desc)
    console.print(table)


@click.command("passes")
def passes_cmd():
    """List passes and pipelines (names for --disable-pass and --print-after)."""
    # (onnxscript, onnx_ir: seconds of kc's start-up); the driver registers every step of the pipeline
    from kcompiler.driver import compile as _registers_every_step  # noqa: F401
    from kcompiler.passes import PIPELINES, list_passes

    for name, doc in list_passes().items():
        console.print(f"{name:24s} {doc}", highlight=False)
    for name, items in PIPELINES.items():
        console.print(f"pipeline {name}: {' -> '.join(items)}", highlight=False)
