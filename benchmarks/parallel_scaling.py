"""Scaling of the parallel strategies on 1/2/4/8 simulated chips (timing mode, no weight data).

    python benchmarks/parallel_scaling.py [--target atom] [--devices 1,2,4,8] [--only resnet50-data,...]
                                          [--interconnect pcie-gen5] [--json out.json]

Rows (the issue's scaling table):
  resnet50-data      images/s, data parallel: a batch of N images split over N chips
                     (the bundled model fixes batch 1, so its batch dimension is rewritten to N)
  resnet50-pipeline  images/s, pipeline parallel with batch-1 micro-batches (steady state)
  bert-large-tensor  latency of one sequence (batch 1, 128 tokens), Megatron tensor parallel
  llama-7b-decode    latency of one decode step (batch 1, KV cache 512), tensor parallel
  llama-7b-prefill   prompts/s (128 tokens), pipeline parallel (steady state)
Throughput is the steady state (1 / the busiest device or link, report.throughput_per_s);
speedups are against the same strategy on one chip.
Targets: llama-7b decode on 8 chips >= 4x one chip; resnet50 pipeline on 4 chips >= 3x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import onnx

ROWS = {
    "resnet50-data": ("resnet50", "data", "throughput", {}),
    "resnet50-pipeline": ("resnet50", "pipeline", "throughput", {}),
    "bert-large-tensor": ("bert-large", "tensor", "latency", {}),
    "llama-7b-decode": ("llama-7b", "tensor", "latency", {"phase": "decode", "kv": 512}),
    "llama-7b-prefill": ("llama-7b", "pipeline", "throughput", {"phase": "prefill", "seq": 128}),
}


def resnet50_batch(n: int) -> onnx.ModelProto:
    """The bundled resnet50 with its batch dimension set to n (kcompiler's `--batch` on bundled CNNs)."""
    from kcompiler.zoo import bundled

    return bundled("resnet50", batch=n)


def run_row(key: str, n: int, target: str, interconnect: str | None) -> dict:
    import kcompiler

    model, strategy, metric, opts = ROWS[key]
    src = resnet50_batch(n) if key == "resnet50-data" else model
    samples = n if key == "resnet50-data" else 1
    t0 = time.perf_counter()
    cm = kcompiler.compile(src, target=target, devices=n, parallel=strategy, mode="timing",
                           interconnect=interconnect, name=model, **opts)
    rep = cm.simulate()
    return {"row": key, "model": model, "strategy": strategy, "chips": n, "metric": metric,
            "latency_s": rep.latency_s, "throughput_per_s": rep.throughput_per_s * samples,
            "bottleneck": rep.parallel.get("bottleneck", ""), "comm_ops": cm.parallel.comm,
            "stages": len(cm.parallel.stages), "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="atom")
    ap.add_argument("--devices", default="1,2,4,8")
    ap.add_argument("--only", default=",".join(ROWS))
    ap.add_argument("--interconnect", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    degrees = [int(x) for x in args.devices.split(",")]
    results = []
    for key in args.only.split(","):
        base = None
        for n in degrees:
            r = run_row(key, n, args.target, args.interconnect)
            value = r["latency_s"] if r["metric"] == "latency" else r["throughput_per_s"]
            if base is None:
                base = value
            r["speedup"] = (base / value) if r["metric"] == "latency" else (value / base)
            results.append(r)
            shown = (f"{r['latency_s'] * 1e3:10.3f} ms" if r["metric"] == "latency"
                     else f"{r['throughput_per_s']:10.1f} /s")
            print(f"{key:18s} {n} chip(s): {shown}  x{r['speedup']:.2f}  (latency {r['latency_s'] * 1e3:.3f} ms, "
                  f"bottleneck {r['bottleneck']}, comm {r['comm_ops']}, {r['wall_s']:.1f} s)", flush=True)
    checks = []
    for key, n, need in (("llama-7b-decode", 8, 4.0), ("resnet50-pipeline", 4, 3.0)):
        got = [r for r in results if r["row"] == key and r["chips"] == n]
        if got:
            checks.append({"row": key, "chips": n, "speedup": got[0]["speedup"], "target": need,
                           "ok": got[0]["speedup"] >= need})
            print(f"target {key} on {n} chips >= {need}x: x{got[0]['speedup']:.2f} "
                  f"{'ok' if got[0]['speedup'] >= need else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": args.target, "results": results, "checks": checks}, f, indent=1)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
