"""Functional simulation of a model on the NPU vs ONNX Runtime's CPU inference, side by side
in one process (target: at most 3x ORT's wall time).

    python benchmarks/npu_functional_vs_ort.py [--model resnet50] [--target npu] [--blocks 4] [--runs 6]

The two run in alternating blocks (ORT `--runs` times, then the simulator `--runs` times,
`--blocks` times over), and the first run of every block is not timed. Both use every core,
and both keep their worker threads spinning for a while after a call (ORT's intra-op pool,
OpenBLAS's): run one right after the other and each finds the other's threads still spinning.
Interleaving single runs measured here ORT at 92-96 ms and the simulator at 88-92 ms, against
26 and 62 ms alone, which says nothing about either. Blocks time each as it runs by itself.

The simulator executes the generated instructions (backends/npu/sim/: the replay of the
reference walk), its host threads running the chip's cores side by side (KC_NPU_THREADS, default
every core), one BLAS call per MATMUL instruction, each on one thread (so that results do not
depend on the thread count, and the replay equals the instruction walk bit for bit).

Its GEMMs run on numpy's OpenBLAS, ORT's on its own MLAS kernels: the last line names the
OpenBLAS kernels. Where the environment pins OPENBLAS_CORETYPE (some machines here set Haswell,
the AVX2 kernels, on AVX-512 CPUs), unset it with OPENBLAS_L2_SIZE for this command alone to
measure what a current numpy does:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/npu_functional_vs_ort.py
Measured on an AMD EPYC (2 cores, AVX-512), 2026-12-01, the last figure before this simulator
executed the programs (b412bcc: whole-op kernels from the ONNX nodes, 2-thread BLAS) and now:
    SkylakeX kernels: ORT 18.6 ms, simulation 36.4 ms (1.96x) -> ORT 17.5 ms, 54.6 ms (3.13x)
    Haswell (pinned): ORT 19.5 ms, simulation 51.2 ms (2.63x) -> ORT 18.3 ms, 75.8 ms (4.15x)
On an AMD EPYC of family 25 (2 cores, AVX2 only: OpenBLAS picks Haswell), 2026-12-01, after the
GEMM tiles were written straight into their accumulators, two runs:
    ORT 65.1 ms, simulation 194.6 ms (2.99x); ORT 64.1 ms, simulation 197.3 ms (3.08x)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

import kcompiler
from kcompiler.backends.npu.blas import kernels
from kcompiler.check import compare
from kcompiler.zoo import bundled_path, with_random_weights


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--target", default="npu")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--runs", type=int, default=6, help="timed runs per block, after one untimed")
    ap.add_argument("--bundled-weights", action="store_true",
                    help="keep the bundled file's constant weights (every class then scores the same, "
                         "so the value check below shows little); default: seeded random weights")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = str(bundled_path(args.model)) if args.bundled_weights else \
        with_random_weights(args.model, Path(tmp.name) / f"{args.model}.onnx")
    cm = kcompiler.compile(path, target=args.target)
    feeds = cm.random_inputs()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(names, feeds)))
    got = cm.run(feeds, simulate=False)

    def block(fn, out):
        fn()  # untimed: lets the other library's threads go idle
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)

    t_ort, t_npu = [], []
    for _ in range(args.blocks):
        block(lambda: sess.run(names, feeds), t_ort)
        block(lambda: cm.run(feeds, simulate=False), t_npu)
    c = compare(ref, got, 1e-4, 0.0, 1e-5)
    o, n = statistics.median(t_ort), statistics.median(t_npu)
    print(f"{args.model} on {args.target}: ORT CPU {o * 1e3:.1f} ms, NPU functional simulation {n * 1e3:.1f} ms "
          f"(medians of {len(t_ort)} runs each, in {args.blocks} alternating blocks); ratio {n / o:.2f}x "
          f"(target <= 3x: {'PASS' if n / o <= 3 else 'FAIL'}); outputs match ORT: {c.ok} "
          f"(max abs err {c.max_abs:.3g}); numpy's OpenBLAS runs its {kernels() or 'unknown'} kernels")


if __name__ == "__main__":
    main()
