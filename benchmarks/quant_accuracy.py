"""INT8 accuracy against float32 on the host (ONNX Runtime): resnet50 with seeded random weights and bert-tiny.

    python benchmarks/quant_accuracy.py [--holdout 200] [--calib 32] [--method minmax|entropy|percentile|mse]
        [--out benchmarks/results/quant_accuracy.md]

resnet50: calibrated on `--calib` zoo-default images (seed 0), measured on `--holdout` other ones (seed 1):
top-1 agreement of the 1000-class output, per-layer SQNR. bert-tiny: the zoo's default token ids, argmax
agreement over the hidden axis of last_hidden_state and pooler_output (random weights have no vocabulary head).
Writes a markdown table with every layer's SQNR.

    python benchmarks/quant_accuracy.py --ocr [--ocr-lines 50] [--method percentile] [--fallback 4]

PP-OCRv4 recogniser (rapidocr wheel, benchmarks/realmodels.py): calibrated on 32 rendered lines (seed 0),
strings of 50 other lines (seed 1) from the INT8 QDQ model (ORT) against float32's; prints, writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort

from kcompiler.quantize import METHODS, CalibrationSet, accuracy_report, quantize
from kcompiler.quantize.quantizer import float_model, prepared


def measure(name: str, zoo_options: dict, calib: int, holdout: int, method: str = "minmax") -> tuple[object, float]:
    t0 = time.perf_counter()
    proto = prepared(float_model(name, zoo_options)[0])
    cal = CalibrationSet.generate(proto, calib, seed=0)
    hold = CalibrationSet.generate(proto, holdout, seed=1)
    q = quantize(proto, cal, dtype="int8", method=method)
    rep = accuracy_report(proto, q, cal, hold)
    rep.model = name
    return rep, time.perf_counter() - t0


def markdown(reports: list[tuple[object, float]], args) -> str:
    lines = ["# INT8 accuracy against float32 (host, ONNX Runtime)", "",
             f"`python benchmarks/quant_accuracy.py --calib {args.calib} --holdout {args.holdout} --method "
             f"{args.method}`: kcompiler.quantize (ONNX Runtime quantize_static, QDQ, int8 activations, int8 symmetric "
             f"per-channel weights, {args.method} calibration); the zoo's default (seeded, synthetic) inputs, calibration seed 0, held-out seed 1. "
             "The quantised model runs at ORT's basic optimisation level (the QDQ model's own function).", "",
             "| model | set | inputs | output | top-1 agreement | max abs err | mean abs err | SQNR dB |",
             "|---|---|---|---|---|---|---|---|"]
    for rep, _ in reports:
        for s in rep.sets:
            for o in s.outputs:
                lines.append(f"| {rep.model} | {s.label} | {s.samples} | {o.output} | "
                             f"{'-' if o.top1 is None else f'{o.top1:.2%}'} | {o.max_abs:.4g} | {o.mean_abs:.4g} | "
                             f"{o.sqnr_db:.1f} |")
    lines += ["", "## Per-layer SQNR summary", "", "| model | layers | min dB | median dB | mean dB | time s |",
              "|---|---|---|---|---|---|"]
    for rep, secs in reports:
        s = rep.sqnr_summary()
        lines.append(f"| {rep.model} | {s['layers']} | {s['min_db']:.1f} | {s['median_db']:.1f} | {s['mean_db']:.1f} "
                     f"| {secs:.0f} |")
    for rep, _ in reports:
        lines += ["", f"## {rep.model}: every quantised layer", "", "| tensor | op | SQNR dB |", "|---|---|---|"]
        lines += [f"| {lay.tensor} | {lay.op_type} | {lay.sqnr_db:.1f} |" for lay in rep.layers]
    return "\n".join(lines) + "\n"


def ocr(lines: int, method: str, fallback: int, calib: int = 32) -> dict:
    """INT8 PP-OCRv4 recogniser strings against float32's on `lines` rendered lines (rapidocr's batch width)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import realmodels as rm

    paths = rm.fetch_ocr_models()
    imgs = [im for im, _ in rm.render_text_lines(calib, seed=0)] + [im for im, _ in rm.render_text_lines(lines, 1)]
    x = rm.rec_batch(imgs)
    t0 = time.perf_counter()
    q = quantize(str(paths["rec"]), [{"x": x[i:i + 1]} for i in range(calib)], method=method, fallback=fallback)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    qs = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    test = x[calib:]
    want = rm.ctc_decode(rm.ort_session(paths["rec"]).run(None, {"x": test})[0], paths["keys"])
    got = rm.ctc_decode(qs.run(None, {"x": test})[0], paths["keys"])
    return {"same": sum(a == b for a, b in zip(got, want)), "lines": lines, "method": method, "fallback": fallback,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holdout", type=int, default=200)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_accuracy.md"))
    ap.add_argument("--models", default="resnet50,bert-tiny")
    ap.add_argument("--ocr", action="store_true", help="measure the PP-OCRv4 recogniser's strings instead")
    ap.add_argument("--ocr-lines", type=int, default=50)
    ap.add_argument("--method", default="minmax", choices=METHODS,
                    help="calibration: ONNX Runtime's minmax/entropy/percentile, or kcompiler's mse range search")
    ap.add_argument("--fallback", type=int, default=0)
    args = ap.parse_args()
    if args.ocr:
        print(ocr(args.ocr_lines, args.method, args.fallback))
        return
    options = {"resnet50": {"weights": "random"}, "bert-tiny": {}}
    reports = []
    for name in args.models.split(","):
        rep, secs = measure(name, options.get(name, {}), args.calib, args.holdout, args.method)
        s = rep.gate_set
        print(f"{name}: top-1 agreement {s.top1:.2%} on {s.samples} held-out inputs; SQNR {rep.sqnr_summary()} "
              f"({secs:.0f} s)", flush=True)
        reports.append((rep, secs))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(reports, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
