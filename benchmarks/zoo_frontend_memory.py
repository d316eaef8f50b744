"""Peak RSS after each frontend/compile stage for a large zoo model in timing mode, and whether
anything opened its weights file: the ONNX checker, version converter, onnx_ir deserialisation,
shape inference (onnx_ir ShapeInferencePass), passes, placement and lowering must not read or copy
external data.

    python benchmarks/zoo_frontend_memory.py [MODEL] [--target T] [--phase decode --kv 2048]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", nargs="?", default="llama-13b")
    ap.add_argument("--target", default="host")
    ap.add_argument("--phase", default="decode")
    ap.add_argument("--kv", type=int, default=2048)
    args = ap.parse_args(argv)

    opened: list[str] = []

    def hook(event, a):
        if event in ("open", "os.open", "mmap.__new__") and a and "weights.bin" in str(a[0]):
            opened.append(f"{event} {a[0]}")

    sys.addaudithook(hook)
    from kcompiler import targets
    from kcompiler.driver import make_backends
    from kcompiler.frontend import loader as L
    from kcompiler.passes import CompileContext, run_pipeline
    from kcompiler.zoo import transformers as T

    rows = []
    t0 = time.perf_counter()

    def stage(name: str):
        rows.append((name, time.perf_counter() - t0, rss_mib(), len(opened)))

    stage("imports")
    kw = {"phase": args.phase, "kv": args.kv} if args.phase == "decode" else {}
    path = T.build(args.model, **kw)
    stage("build (writes the sparse file once)")
    opened.clear()  # writing it is not reading it
    proto, src = L.read_model_proto(path)
    stage("parse + structure checks")
    proto = L.check_and_convert(proto, src)
    stage("onnx checker + version converter")
    irm = L.to_ir(proto, src)
    stage("onnx_ir deserialise")
    L.bind_shapes(irm, None, src)
    L.infer_shapes(irm, src)
    stage("shape inference")
    system = targets.resolve(args.target, None)
    ctx = CompileContext(system=system, backends=make_backends(system), mode="timing")
    run_pipeline(irm, ctx, "optimize")
    stage("passes")
    run_pipeline(irm, ctx, "placement")
    stage("placement")
    run_pipeline(irm, ctx, "partition")
    run_pipeline(irm, ctx, "lower")
    progs = ctx.programs
    stage(f"lower ({len(progs)} programs)")
    size = (path.parent / T.WEIGHTS_FILE).stat().st_size if not isinstance(path, type(proto)) else 0
    print(f"{args.model} {args.phase} kv={args.kv} on {args.target}: {len(irm.graph)} nodes, "
          f"weights file {size / 2**30:.1f} GiB (sparse)")
    print(f"{'stage':36s} {'t (s)':>7s} {'peak RSS (MiB)':>15s} {'weight-file opens':>18s}")
    for name, t, rss, n in rows:
        print(f"{name:36s} {t:7.2f} {rss:15.0f} {n:18d}")
    for o in opened[:5]:
        print("opened:", o)
    return 0 if not opened else 1


if __name__ == "__main__":
    sys.exit(main())
