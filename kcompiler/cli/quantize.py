"""`kc quantize MODEL --calibrate DATA -o OUT.onnx`: quantise with ONNX Runtime's quantiser, optionally
report what it cost (--report, --holdout) and gate on it (--max-loss)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kcompiler.cli.options import debug_option, zoo_kwargs, zoo_options
from kcompiler.cli.output import console, status
from kcompiler.errors import KCError

#: kcompiler.quantize.METHODS, spelled out: the CLI imports the quantiser (and ONNX Runtime) only when it runs
METHODS = ("minmax", "entropy", "percentile", "mse")


@click.command("quantize")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Write the quantised .onnx here.")
@click.option("--method", type=click.Choice(list(METHODS)), default="minmax", show_default=True,
              help="Calibration (int8): ONNX Runtime's minmax, entropy or percentile calibrator, or mse (per "
                   "activation tensor, the clipping range of least quantisation error on the calibration data).")
@click.option("--activations", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="int8 activations: the type ONNX Runtime's CPU kernels compute exactly (its uint8 x int8 "
                   "kernels saturate on x86 without VNNI).")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--keep-float", "keep_float", multiple=True, metavar="NODE",
              help="Leave this Conv/MatMul/Gemm (node or output name) float; repeatable.")
@click.option("--fallback", type=click.IntRange(0, None), default=0, show_default=True, metavar="N",
              help="Keep float the N GEMMs whose float version gains the output SQNR most (sensitivity analysis "
                   "on the calibration set; the notes name them).")
@click.option("--equalize", is_flag=True,
              help="Before calibrating, equalise the per-channel ranges of the quantised activations (cross-layer "
                   "equalisation / SmoothQuant scales folded into neighbouring weights; the float function is "
                   "unchanged). Helps models whose channels differ by orders of magnitude (MobileNets).")
@click.option("--bias-correction", "bias_correction", is_flag=True,
              help="After quantising, correct each GEMM's bias by the mean per-channel error of its output against "
                   "float32 on the calibration set, layer after layer (empirical bias correction; int8).")
@click.option("--float-head/--int8-head", "float_head", default=True, show_default=True,
              help="Keep a float output on the last GEMMs, whose outputs reach the model's outputs through float "
                   "ops only (logits before Softmax), instead of requantising it to 8 bits.")
@click.option("--report", "report", is_flag=True, help="Print per-layer SQNR and output agreement with float32.")
@click.option("--report-json", "report_json", default=None, metavar="FILE", help="Write the report as JSON.")
@click.option("--holdout", default=None, metavar="DATA", help="Held-out inputs for the report (same forms as DATA).")
@click.option("--max-loss", "max_loss", type=click.FloatRange(0.0, 100.0), default=None, metavar="X",
              help="Fail (exit 1) when top-1 agreement with float32 is more than X percentage points below 100%.")
@zoo_options
@debug_option
def quantize_cmd(model, output, method, activations, per_tensor, keep_float, fallback, equalize, bias_correction,
                 float_head, report, report_json, holdout, max_loss, debug):
    """Quantise MODEL (an .onnx path or a zoo name) to --dtype int8 (default: QDQ, uint8 activations, int8
    per-channel weights), fp8 (QDQ float8e4m3fn) or int4 (4-bit MatMulNBits weights in blocks of 32, float
    activations, no calibration), calibrated on --calibrate DATA with ONNX Runtime's quantiser."""
    # (onnxruntime.quantization: not at kc's start-up)
    from kcompiler.quantize import accuracy_report, quant_info, quantize
    from kcompiler.quantize.report import quantised_tensors

    zoo = {k: v for k, v in zoo_kwargs().items() if v is not None}
    calibrate = zoo.pop("calibrate", None)
    qdtype = zoo.pop("dtype", None) or "int8"
    if qdtype not in ("int8", "fp8", "int4"):
        raise KCError(f"--dtype {qdtype}: kc quantize makes int8, fp8 or int4 models",
                      hint="give --dtype int8, fp8 or int4 (the model given is the float one)")
    if model in _zoo_cnns() and zoo.get("weights") is None:
        zoo["weights"] = "random"  # (the files' constant fills have nothing to calibrate)
    with status(f"quantising {model} to {qdtype}", False):
        q = quantize(model, calibrate, dtype=qdtype, method=method, per_channel=not per_tensor, output=output,
                     activations=activations, zoo_options=zoo or None, keep_float=keep_float, fallback=fallback,
                     equalize=equalize, bias_correction=bias_correction, float_head=float_head)
    info = quant_info(q) or {}
    console.print(f"wrote {output}: {qdtype}, {len(quantised_tensors(q))} quantised op(s); calibration "
                  f"{info.get('calibration') or 'none'} ({info.get('method')})", highlight=False)
    for note in info.get("notes", []):
        console.print(f"note: {note}", highlight=False)
    if not (report or report_json or max_loss is not None):
        return
    data = calibrate if calibrate is not None else _default_data(q)
    with status("measuring accuracy against float32", False):
        rep = accuracy_report(model, output, data, holdout, zoo_options=zoo or None)
    if report:
        console.print(rep.table())
    if report_json:
        Path(report_json).write_text(json.dumps(rep.to_dict(), indent=1))
        console.print(f"wrote {report_json}", highlight=False)
    if max_loss is not None:
        rep.check(max_loss)
        console.print(f"accuracy gate passed: top-1 agreement {rep.gate_set.top1:.2%} on the {rep.gate_set.label} "
                      f"set (--max-loss {max_loss:g})", highlight=False)


def _zoo_cnns() -> tuple[str, ...]:
    from kcompiler.zoo import BUNDLED

    return BUNDLED


def _default_data(q):
    """The data the report runs on when --calibrate was not given: the zoo's default set (the same seeded
    inputs quantize() calibrated on), or for int4 files synthetic inputs (the report says so)."""
    from kcompiler.quantize import CalibrationSet

    return CalibrationSet.generate(q, 32)
