"""`kc compile MODEL`: compile a model for a target, say how it was placed, and write the artifact."""

from __future__ import annotations

import click
from rich.table import Table

from kcompiler.cli.driver import compile_model
from kcompiler.cli.options import (TARGET_HELP, debug_option, parallel_options, partition_option, pass_options,
                                   shape_option)
from kcompiler.cli.output import console


@click.command("compile")
@click.argument("model")
@click.option("--target", "-t", default="host", show_default=True, help=TARGET_HELP)
@shape_option
@pass_options
@click.option("--devices", type=int, default=None, help="Number of chips.")
@parallel_options(with_devices=False)
@partition_option
@click.option("--mode", type=click.Choice(["functional", "timing"]), default="functional", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the artifact here.")
@debug_option
def compile_cmd(model, target, shape_specs, disable, print_after, devices, mode, output, debug):
    """Compile MODEL (an .onnx path or a zoo name) for a target."""
    cm = compile_model(model, target, shape_specs, disable, print_after, mode, devices)
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
        from kcompiler.artifact import save  # (onnx_ir: not at kc's start-up)

        save(cm, output)
        console.print(f"wrote {output}")
