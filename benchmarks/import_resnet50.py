"""Import time of resnet50: ONNX file to ready-to-lower onnx_ir (frontend load + default pass
pipeline), best of N runs after one warm-up. Target: under 1 s.

    python benchmarks/import_resnet50.py [--model resnet50] [--repeat 5] [--target host] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time


def import_once(path, target: str) -> tuple[float, dict[str, float], int]:
    """Seconds for load + default pipeline; per-stage seconds; nodes left."""
    from kcompiler import targets
    from kcompiler.driver import make_backends
    from kcompiler.frontend import load_model
    from kcompiler.passes import CompileContext, run_pipeline

    system = targets.resolve(target)
    t0 = time.perf_counter()
    model, _ = load_model(path)
    t1 = time.perf_counter()
    # the same context compile() gives the passes (fusion rules may read the target's backends)
    ctx = CompileContext(system=system, backends=make_backends(system))
    run_pipeline(model, ctx, "optimize")
    t2 = time.perf_counter()
    stages = {"frontend": t1 - t0, "passes": t2 - t1}
    stages.update({f"  {name}": s for name, s in ctx.timings})
    return t2 - t0, stages, len(model.graph)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50", help="a bundled zoo CNN or an .onnx path")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target", default="host")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one import")
    args = ap.parse_args(argv)
    from kcompiler import zoo

    path, _ = zoo.resolve_model(args.model)
    import_once(path, args.target)  # warm-up: imports onnxscript, onnxruntime, the targets
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        import_once(path, args.target)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
    runs = [import_once(path, args.target) for _ in range(args.repeat)]
    best, stages, nodes = min(runs, key=lambda r: r[0])
    for name, seconds in stages.items():
        print(f"{name:24s} {seconds:8.4f} s")
    print(f"import {args.model}: best of {args.repeat}: {best:.3f} s ({nodes} nodes ready to lower); "
          f"target < 1 s: {'ok' if best < 1.0 else 'SLOW'}")
    return 0 if best < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
