"""Compile time against graph size: a chain of N nodes (Add, Relu, Add, Relu, ...) compiled for the
host in timing mode. Prints seconds per size and the 100k/10k ratio (target: < 12x, i.e. linear).

    python benchmarks/compile_scaling.py [--sizes 10000,100000] [--profile N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper


def chain(n: int, width: int = 16) -> onnx.ModelProto:
    nodes, prev = [], "x"
    for i in range(n):
        out = "y" if i == n - 1 else f"v{i}"
        if i % 2 == 0:
            nodes.append(helper.make_node("Add", [prev, "c"], [out], name=f"add{i}"))
        else:
            nodes.append(helper.make_node("Relu", [prev], [out], name=f"relu{i}"))
        prev = out
    c = helper.make_tensor("c", TensorProto.FLOAT, [width], np.linspace(-1, 1, width, dtype=np.float32))
    graph = helper.make_graph(nodes, f"chain{n}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=[c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def compile_seconds(n: int, target: str = "host") -> tuple[float, float, float, object]:
    """(compile wall s, compile CPU s, simulate CPU s, compiled model) for a chain of n nodes."""
    import kcompiler

    model = chain(n)
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    cm = kcompiler.compile(model, target=target, mode="timing")
    t1, c1 = time.perf_counter(), time.process_time()
    cm.simulate()
    return t1 - t0, c1 - c0, time.process_time() - c1, cm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--target", default="host")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--profile", type=int, default=0, help="profile compiling a chain of this many nodes")
    ap.add_argument("--gc-during-compile", action="store_true",
                    help="undo compile()'s pause of the cyclic GC (to measure what the pause saves)")
    args = ap.parse_args(argv)
    import kcompiler
    import kcompiler.driver.compile as kc_compiler

    if args.gc_during_compile and hasattr(kc_compiler.compile, "__wrapped__"):
        kc_compiler.compile = kc_compiler.compile.__wrapped__

    kcompiler.compile(chain(10), target=args.target, mode="timing")  # warm imports
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        compile_seconds(args.profile, args.target)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    # CPU time of this process, best of --repeat runs: other jobs on a shared machine inflate wall time
    cpu, wall, sim = {}, {}, {}
    for n in sizes:
        for _ in range(args.repeat):
            t, c, s_, cm = compile_seconds(n, args.target)
            cpu[n], wall[n], sim[n] = min(cpu.get(n, c), c), min(wall.get(n, t), t), min(sim.get(n, s_), s_)
            slow = ", ".join(f"{name} {x:.2f}" for name, x in cm.context.timings if x > 0.1 * t)
            del cm
        print(f"chain of {n:>7,} nodes: compile {cpu[n]:6.2f} s CPU, {wall[n]:6.2f} s wall "
              f"({cpu[n] / n * 1e6:.0f} us/node, best of {args.repeat}); then simulate {sim[n]:.2f} s CPU"
              + (f"; slow passes: {slow}" if slow else ""), flush=True)
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        print(f"wall-time ratio {wall[hi] / wall[lo]:.2f}x; compile+simulate CPU ratio "
              f"{(cpu[hi] + sim[hi]) / (cpu[lo] + sim[lo]):.2f}x")
        ratio = cpu[hi] / cpu[lo]
        print(f"compile CPU-time ratio {hi:,}/{lo:,} nodes: {ratio:.2f}x for {hi / lo:.0f}x the nodes "
              f"(target < {12 * (hi / lo) / 10:.0f}x): ", end="")
        ok = ratio < 12 * (hi / lo) / 10
        print("OK" if ok else "SUPERLINEAR")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
