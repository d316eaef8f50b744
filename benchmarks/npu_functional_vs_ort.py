"""Functional simulation of a model on the NPU vs ONNX Runtime's CPU inference, side by side
(target: at most 3x ORT's wall time).

    python benchmarks/npu_functional_vs_ort.py [--model resnet50] [--target npu] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import onnxruntime as ort

import kcompiler
from kcompiler.check import compare
from kcompiler.zoo import bundled_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--target", default="npu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cm = kcompiler.compile(args.model, target=args.target)
    feeds = cm.random_inputs()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(bundled_path(args.model)), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    # warm up both
    ref = dict(zip(names, sess.run(names, feeds)))
    got = cm.run(feeds, simulate=False)
    t_ort, t_npu = [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits both alike
        t0 = time.perf_counter()
        sess.run(names, feeds)
        t_ort.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cm.run(feeds, simulate=False)
        t_npu.append(time.perf_counter() - t0)
    c = compare(ref, got, 1e-3, 1e-4)
    o, n = statistics.median(t_ort), statistics.median(t_npu)
    print(f"{args.model} on {args.target}: ORT CPU {o * 1e3:.1f} ms, NPU functional simulation {n * 1e3:.1f} ms "
          f"(medians of {args.repeat}); ratio {n / o:.2f}x (target <= 3x: {'PASS' if n / o <= 3 else 'FAIL'}); "
          f"outputs match ORT: {c.ok} (max abs err {c.max_abs:.3g})")


if __name__ == "__main__":
    main()
