"""Compile time of resnet50 for the NPU, import to program (target: under 3 s), and with
--tvm, side by side, TVM Relax's build of the same model for the host CPU (llvm).

    python benchmarks/npu_compile_resnet50.py [--target npu] [--repeat 3] [--tvm]
"""

from __future__ import annotations

import argparse
import time

import kcompiler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="npu")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tvm", action="store_true", help="also time TVM Relax builds (needs kcompiler[tvm])")
    args = ap.parse_args()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        cm = kcompiler.compile(args.model, target=args.target)
        times.append(time.perf_counter() - t0)
    prog = [p for p in cm.programs if hasattr(p, "instrs")]
    n = sum(len(p.instrs) for p in prog)
    print(f"{args.model} -> {args.target}: compile (import..program, functional) "
          f"best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s over {args.repeat}; "
          f"{n} instructions; target < 3 s: {'PASS' if min(times) < 3 else 'FAIL'}")
    for name, s in cm.context.timings:
        if s > 0.05:
            print(f"  pass {name}: {s:.3f} s")
    if args.tvm:
        from kcompiler.peers import build_tvm, frontend_proto

        proto = frontend_proto(cm)
        for pipeline in ("zero", "default"):
            t = min(build_tvm(proto, pipeline)[1] for _ in range(args.repeat))
            print(f"TVM Relax ({pipeline!r} pipeline) -> llvm: import..executable best {t:.2f} s over "
                  f"{args.repeat}: {t / min(times):.1f}x kcompiler's")


if __name__ == "__main__":
    main()
