"""Timing-mode compile and simulate seconds per (model, target): the cost of one point of a
design-space sweep (`kc sweep` compiles and simulates each point in timing mode).

    python benchmarks/timing_mode_speed.py [--cases llama-7b@atom,resnet50@warboy] [--repeat 3] [--profile CASE]

Each case is compiled with mode="timing" and then simulated (`cm.report`), in this process after a
warm-up compile (imports excluded). Printed: wall and CPU seconds of each step, best of --repeat
(CPU time of this process: other jobs on a shared machine inflate wall time), and the latency, so
a speed-up that changed the answer shows. llama models are decode steps at KV 2048.

Figures on the 2-core shared development machine (CPU seconds, best of 3, stores cleared before
each run), before (91314eb's NPU backend and executor, with today's everything else) and after the
commits that added this file: the NPU simulator replays repeated segments, the code generator
re-emits repeated GEMMs and attention steps, fields are read by position, the cyclic GC is paused
while simulating.

    case                       compile before -> after     simulate before -> after
    llama-7b@atom                  6.34 -> 2.17  (2.9x)        8.36 -> 1.45  (5.8x)
    llama-7b@4xatom:tensor         9.50 -> 3.38  (2.8x)       10.46 -> 2.07  (5.1x)
    llama-7b@atom+aim             25.43 -> 25.06               3.62 -> 3.68   (the PIM backend's
                                                                              lowering and timing)
    resnet50@warboy                0.36 -> 0.34                0.10 -> 0.06
    resnet50@atom                  0.46 -> 0.36                0.30 -> 0.13  (2.3x)
    resnet50@atom+aim              0.49 -> 0.37                0.31 -> 0.14  (2.2x)
    resnet50@4xatom:tensor         1.05 -> 0.46  (2.3x)        1.26 -> 0.32  (3.9x)
    bert-base@atom                 0.73 -> 0.52                0.45 -> 0.15  (3.0x)

What is left of llama-7b@atom's compile: loading and shape inference (~0.5 s), the pass pipeline
(~0.5 s), NPU lowering (~0.8 s). Of atom+aim's: the PIM backend (lowering ~20 s, its estimates in
placement and fusion ~4 s). Of resnet50's: loading (~0.17 s) and the pass pipeline (~0.1 s).
Every report is bit-identical to before (compile_s aside).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time

CASES = ("llama-7b@atom", "llama-7b@4xatom:tensor", "llama-7b@atom+aim", "resnet50@warboy", "resnet50@atom",
         "resnet50@atom+aim", "resnet50@4xatom:tensor", "bert-base@atom")


def parse(case: str) -> tuple[str, str, dict]:
    """'model@target[:parallel]' -> (model, target, compile options)."""
    model, _, rest = case.partition("@")
    target, _, parallel = rest.partition(":")
    opts: dict = {"mode": "timing"}
    if parallel:
        opts["parallel"] = parallel
    if model.startswith(("llama", "gpt2")):
        opts.update(phase="decode", kv=2048)
    return model, target or "atom", opts


def run(case: str, warm: bool = False) -> dict:
    import kcompiler
    from kcompiler import zoo

    model, target, opts = parse(case)
    zoo_opts = {k: opts.pop(k) for k in ("phase", "kv") if k in opts}
    m, _ = zoo.resolve_model(model, **zoo_opts)
    if not warm:  # as a sweep point on a chip variant of its own sees it: nothing kept from before
        try:
            from kcompiler.backends.npu import memo
        except ImportError:  # a kcompiler from before the stores (to measure the "before" figures)
            pass
        else:
            memo.clear()
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    cm = kcompiler.compile(m, target=target, **opts)
    w1, c1 = time.perf_counter(), time.process_time()
    rep = cm.report
    w2, c2 = time.perf_counter(), time.process_time()
    return {"compile_wall": w1 - w0, "compile_cpu": c1 - c0, "simulate_wall": w2 - w1, "simulate_cpu": c2 - c1,
            "latency_s": rep.latency_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="model@target[:parallel], comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", default="", help="profile one case (compile and simulate) instead")
    ap.add_argument("--warm", action="store_true",
                    help="keep the NPU backend's stores of GEMM streams and segment timelines between runs (as "
                         "compiling the same model for the same chip again does)")
    args = ap.parse_args(argv)
    import kcompiler

    kcompiler.compile("bert-tiny", target="atom", mode="timing").report  # warm imports and caches
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        run(args.profile, args.warm)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        return 0
    print(f"{'case':<24} {'compile s (cpu/wall)':>22} {'simulate s (cpu/wall)':>22}  latency", flush=True)
    for case in args.cases.split(","):
        best: dict = {}
        for _ in range(args.repeat):
            r = run(case, args.warm)
            best = {k: min(best.get(k, v), v) for k, v in r.items()}
        print(f"{case:<24} {best['compile_cpu']:>10.2f} /{best['compile_wall']:>6.2f}    "
              f"{best['simulate_cpu']:>10.2f} /{best['simulate_wall']:>6.2f}    {best['latency_s']:.6g} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
