"""`kc run MODEL`: run a model for its values (from an .npz file or random), optionally checked
against ONNX Runtime with tolerances that follow the precision the values were computed in."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from kcompiler.cli.driver import load_or_compile
from kcompiler.cli.options import (TARGET_HELP, debug_option, given, parallel_options, partition_option,
                                   pass_options, shape_option, threads_option, zoo_kwargs)
from kcompiler.cli.output import console, err_console, status
from kcompiler.errors import InputError, KCError
from kcompiler.zoo import BUNDLED


def load_npz(path: str) -> dict:
    """The arrays of an .npz file, refusing pickles and anything that is not a zip of arrays."""
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


@click.command("run")
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
@shape_option
@pass_options
@parallel_options(with_devices=True)
@partition_option
@threads_option
@debug_option
def run_cmd(model, target, inputs_path, outputs_path, check, rtol, atol, shape_specs, disable, print_after, debug):
    """Run MODEL on a target for values (and simulated time)."""
    if (given("rtol") or given("atol")) and not check:
        raise KCError("--rtol and --atol are the tolerances of --check", hint="add --check, or drop them")
    cm = load_or_compile(model, target, shape_specs, disable, print_after)
    if inputs_path:
        feeds = load_npz(inputs_path)
    else:
        feeds = cm.random_inputs()
        console.print("inputs: random (seed 0); give your own with --inputs FILE.npz", highlight=False)
    with status(f"running {cm.name} on {cm.system.name}", False):
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
        check_outputs(cm, model, feeds, outs, rtol, atol)


def check_outputs(cm, model, feeds, outs, rtol, atol) -> None:
    """--check: compare the outputs with ONNX Runtime's, with --rtol/--atol or, for values computed in
    reduced precision, the tolerance kcompiler.check gives; a KCError on a mismatch."""
    from kcompiler.check import compare_with_ort, reduced_precision, reference_description  # (onnx, ORT)

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
        hint = None
        if model in BUNDLED and zoo_kwargs().get("weights") != "random":
            hint = (f"'{model}' as bundled has constant-fill weights: every class gets the same huge score, "
                    "so its softmax turns on one-ulp rounding differences between two correct "
                    "implementations; check it with --weights random")
        raise KCError(f"outputs of '{cm.name}' on {cm.system.name} differ from onnxruntime: "
                      f"{worst.describe()}", hint=hint)
