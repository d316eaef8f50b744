"""The `kc` command line. User errors exit 1 with a one-paragraph message; --debug shows tracebacks.

One module per command or family: compile, run, bench, inspection, listing (targets, zoo, passes);
the options they share in options.py, compiling the model they name in driver.py, consoles and
progress in output.py, exit statuses in errors.py. `kc serve`, `kc sweep` and `kc cluster` are
their packages' cli modules, registered here.
"""

from __future__ import annotations

import click

from kcompiler.cli.bench import bench_cmd
from kcompiler.cli.compile import compile_cmd
from kcompiler.cli.errors import KCGroup
from kcompiler.cli.inspection import inspect_cmd
from kcompiler.cli.listing import passes_cmd, targets_cmd, zoo_cmd
from kcompiler.cli.quantize import quantize_cmd
from kcompiler.cli.run import run_cmd
# `kc cluster` (the K-Cloud fleet serving simulator), `kc serve` (the Open Inference Protocol: its module
# imports no server library), `kc sweep` (design-space exploration: Ray is imported only when it runs)
from kcompiler.cluster.cli import cluster_cmd
from kcompiler.serve.cli import serve_cmd
from kcompiler.sweep.cli import sweep_cmd


@click.group(cls=KCGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kcompiler")
def cli():
    """kcompiler: compile ONNX models for simulated NPU and PIM chips, and run them for values and time."""


for _command in (compile_cmd, run_cmd, bench_cmd, inspect_cmd, targets_cmd, zoo_cmd, passes_cmd, quantize_cmd,
                 serve_cmd, sweep_cmd, cluster_cmd):
    cli.add_command(_command)


def main(argv=None):
    """The console scripts `kc` and `kcompiler`, and `python -m kcompiler`."""
    cli.main(args=argv, prog_name="kc")
