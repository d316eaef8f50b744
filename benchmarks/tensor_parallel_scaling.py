"""Tensor-parallel scaling of an LLM decode step: llama-7b, one token, 1 vs N atoms (timing mode,
no weight data).

    python benchmarks/tensor_parallel_scaling.py [--target atom] [--devices 8] [--kv 512,2048]
                                                 [--batch 1] [--json out.json]

One row per (KV-cache length, chips): the latency of one decode step, the speed-up over one
chip, and the DRAM bytes each chip moves (the busiest chip; the total over all chips beside
it). A decode step is memory-bound: split by heads (Megatron), each chip reads 1/N of the
weights and 1/N of the KV cache, so the ideal is close to Nx and the total bytes stay one
chip's. The last line is the figure a regression check reads.

Figures (atom, PCIe Gen5 switch; before = commit 88caa4d, after = 78cbf63; `kc bench llama-7b --phase decode --kv K --target atom
--devices 8 --parallel tensor --mode timing`):

    before (the rotary embedding's FusedElementwise had no split rule, so Q and K were gathered
    and the K-cache append ran whole on every chip; the V append copied each chip's slice):
        KV 512   134.21 ms -> 22.93 ms  5.85x   DRAM 27.0 GB -> 32.6 GB in all
        KV 2048  141.99 ms -> 33.75 ms  4.21x   DRAM 28.6 GB -> 50.3 GB in all
        KV 2048, batch 4: 173.88 ms -> 77.48 ms 2.24x, DRAM 35.3 GB -> 122.0 GB
    after:
        KV 512   134.21 ms -> 18.70 ms  7.18x   DRAM 27.0 GB -> 27.2 GB in all
        KV 2048  141.99 ms -> 19.69 ms  7.21x   DRAM 28.6 GB -> 28.8 GB in all
        KV 2048, batch 4: 173.88 ms -> 23.95 ms 7.26x, DRAM 35.3 GB -> 35.9 GB
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict


def run(kv: int, chips: int, target: str, batch: int) -> dict:
    import kcompiler

    opts = dict(phase="decode", kv=kv, batch=batch, target=target, mode="timing")
    if chips > 1:
        opts.update(devices=chips, parallel="tensor")
    t0 = time.perf_counter()
    cm = kcompiler.compile("llama-7b", **opts)
    rep = cm.simulate()
    per_chip: dict[str, int] = defaultdict(int)
    for o in rep.ops:
        if o.engine != "comm":
            per_chip[o.device] += o.dram_bytes
    return {"kv": kv, "batch": batch, "chips": chips, "latency_s": rep.latency_s, "dram_bytes": rep.dram_bytes,
            "dram_bytes_per_chip": dict(per_chip), "comm_ops": cm.parallel.comm if cm.parallel else {},
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="atom")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--kv", default="512,2048")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    n = args.devices
    rows = []
    print(f"llama-7b decode, batch {args.batch}, tensor parallel on {args.target} (timing mode)")
    print(f"{'KV':>6s} {'chips':>5s} {'latency ms':>11s} {'speed-up':>9s} {'GB / chip':>10s} {'GB in all':>10s}")
    speedup = {}
    for kv in [int(x) for x in args.kv.split(",")]:
        one = None
        for chips in (1, n):
            r = run(kv, chips, args.target, args.batch)
            one = one or r
            r["speedup"] = one["latency_s"] / r["latency_s"]
            speedup[kv] = r["speedup"]
            rows.append(r)
            busiest = max(r["dram_bytes_per_chip"].values())
            print(f"{kv:6d} {chips:5d} {r['latency_s'] * 1e3:11.3f} {r['speedup']:8.2f}x {busiest / 1e9:10.3f} "
                  f"{r['dram_bytes'] / 1e9:10.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": args.target, "devices": n, "batch": args.batch, "results": rows}, f, indent=1)
    if 2048 in speedup:
        print(f"TP{n} speed-up at KV 2048: {speedup[2048]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
