"""INT8 accuracy against float32 on the host (ONNX Runtime): resnet50 with seeded random weights and bert-tiny.

    python benchmarks/quant_accuracy.py [--holdout 200] [--calib 32] [--method minmax|entropy|percentile|mse]
        [--out benchmarks/results/quant_accuracy.md]

resnet50: calibrated on `--calib` zoo-default images (seed 0), measured on `--holdout` other ones (seed 1):
top-1 agreement of the 1000-class output, per-layer SQNR. bert-tiny: the zoo's default token ids, argmax
agreement over the hidden axis of last_hidden_state and pooler_output (random weights have no vocabulary head).
Writes a markdown table with every layer's SQNR.

    python benchmarks/quant_accuracy.py --ocr [--ocr-lines 50] [--ocr-holdout 200] [--targets warboy,host]

PP-OCRv4 recogniser (rapidocr wheel, benchmarks/realmodels.py), the recipe of tests/quantize/test_ocr_int8.py:
calibrated on 16 rendered lines (seed 0, percentile, equalize), strings of 50 other lines (seed 1) from each
kcompiler target and from ORT on the same QDQ model, and of 200 more (seed 2) from ORT, against float32's; with
float32's own strings under input noise of half an 8-bit pixel step as the floor. Each compared three ways (raw,
line text, spaces ignored: realmodels.line_text). Writes benchmarks/results/quant_ocr.md.
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


#: how a recognised string is compared: as decoded, its line text (realmodels.line_text: the margins' spaces
#: dropped), every space ignored (PaddleOCR's RecMetric, ignore_space=True)
OCR_VIEWS = {"raw": lambda s: s, "line text": str.strip, "spaces ignored": lambda s: s.replace(" ", "")}


def ocr(args) -> str:
    """The PP-OCRv4 recogniser at INT8 (the recipe of tests/quantize/test_ocr_int8.py) against float32: strings
    from ORT on the QDQ model, from float32 with input noise (the floor), and from each kcompiler target."""
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    import realmodels as rm

    import kcompiler

    paths = rm.fetch_ocr_models()
    width = rm.REC_SHAPE[2]
    cal = rm.rec_batch([im for im, _ in rm.render_text_lines(args.ocr_calib, seed=0)], width=width)
    q = quantize(str(paths["rec"]), [{"x": c[None]} for c in cal], equalize=True, method=args.method)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    qs = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fs = rm.ort_session(paths["rec"])
    out = [f"Command: `{' '.join(['python benchmarks/quant_accuracy.py', *sys.argv[1:]])}`", "",
           f"PP-OCRv4 recogniser (rapidocr-onnxruntime 1.4.4), width {width}, calibrated on {args.ocr_calib} rendered "
           f"lines (seed 0), {args.method} with equalize. Strings identical to float32's (ORT, CPU):",
           "", "| lines (seed) | program | " + " | ".join(OCR_VIEWS) + " |", "|---|---|" + "---|" * len(OCR_VIEWS)]
    for seed, n in ((1, args.ocr_lines), (2, args.ocr_holdout)):
        x = rm.rec_batch([im for im, _ in rm.render_text_lines(n, seed=seed)], width=width)
        want = rm.ctc_decode(fs.run(None, {"x": x})[0], paths["keys"])
        noisy = (x + np.random.default_rng(7).normal(0, 0.004, x.shape)).astype(np.float32)
        runs = {"float32, input + N(0, 0.004)": fs.run(None, {"x": noisy})[0], "ORT on the INT8 QDQ model":
                qs.run(None, {"x": x})[0]}
        for target in args.targets.split(",") if args.targets and seed == 1 else []:
            cm = kcompiler.compile(q, target=target, shapes={"x": tuple(x.shape)})
            runs[f"kcompiler {target}"] = cm.run({"x": x}, simulate=False)[cm.outputs[0]]
        for name, logits in runs.items():
            got = rm.ctc_decode(np.asarray(logits), paths["keys"])
            cells = [f"{sum(v(a) == v(b) for a, b in zip(got, want))}/{n}" for v in OCR_VIEWS.values()]
            out.append(f"| {n} ({seed}) | {name} | " + " | ".join(cells) + " |")
            print(out[-1], flush=True)
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holdout", type=int, default=200)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_accuracy.md"))
    ap.add_argument("--models", default="resnet50,bert-tiny")
    ap.add_argument("--ocr", action="store_true", help="measure the PP-OCRv4 recogniser's strings instead")
    ap.add_argument("--ocr-lines", type=int, default=50)
    ap.add_argument("--ocr-holdout", type=int, default=200, help="a second set of lines (seed 2), ORT only")
    ap.add_argument("--ocr-calib", type=int, default=16)
    ap.add_argument("--targets", default="warboy", help="kcompiler targets the OCR lines also run on (comma list)")
    ap.add_argument("--method", default=None, choices=METHODS,
                    help="calibration: ONNX Runtime's minmax/entropy/percentile, or kcompiler's mse range search")
    args = ap.parse_args()
    if args.ocr:
        args.method = args.method or "percentile"  # (the OCR test's recipe)
        out = Path(args.out).with_name("quant_ocr.md") if args.out == ap.get_default("out") else Path(args.out)
        out.write_text(ocr(args))
        print(f"wrote {out}")
        return
    args.method = args.method or "minmax"
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
