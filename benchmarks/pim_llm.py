"""llama-7b on atom alone vs atom+aim (timing mode): decode (batch 1, KV 2048) and prefill (512 tokens).

The KV cache is device-resident state (kcompiler/frontend/state.py): a decode step reads it where it
is and appends the new token in place; nothing of it crosses PCIe. On atom+aim the placement puts
the weight GEMVs, the KV append and both attention products (q.K^T, p.V) on the AiM chips; the
NPU keeps norms, rotary, softmax and the embedding gather. In prefill every product is a GEMM and
stays on the NPU.

    python benchmarks/pim_llm.py [--model llama-7b] [--kv 2048] [--seq 512] [--json out.json]

Measured (`python benchmarks/pim_llm.py`, 2026-12-01):

    decode  kv=2048  atom       37.71 ms/token
    decode  kv=2048  atom+aim    1.96 ms/token   -> 19.25x (the weight GEMVs, KV appends and
                                                   attention products on aim)
    prefill seq=512  atom      104.15 ms
    prefill seq=512  atom+aim  104.15 ms         -> 1.00x  (same placement: every product on the NPU)

Before the KV cache was resident (the past cache delivered from the host every step and the new
one sent back: 2 x 2.1 GB over PCIe, ~136 ms), the same models gave 183.2 ms vs 70.8 ms (2.59x),
with the attention products on the NPU. The prefill cache (268 MB at 512 tokens) is written on the
NPU; handing it to the AiM chips for decode is a one-off ~1 ms over the card link, not counted here.

For reference, published speedups: NeuPIMs (ASPLOS 2024) 1.6x over a naive NPU+PIM and 2.4x over
NPU-only; AttAcc (ASPLOS 2024) up to 2.81x. Ours is far larger because batch is 1 and the `aim`
card here has 16 AiM chips: decode reads every weight once per token, ATOM at 256 GB/s (its
6.7 G weights charged at INT8, one byte each: ~26 ms of the 37.7) and the card's banks at
16 x ~580 GB/s achieved (BF16, two bytes each: ~1.5 ms). The KV append is in place on both
(under 30 us in total on atom; 0.5 us on aim since its commands are executed: the new token is
written to the cache's rows in append order, 1.964 -> 1.959 ms/token, where the step before
charged one masked burst per element), so the NPU baseline is not handicapped by cache copies. NeuPIMs
and AttAcc batch many requests, which turns the weight products back into GEMMs the NPU is
good at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import kcompiler


def run(model: str, target: str, **opts) -> dict:
    t0 = time.perf_counter()
    cm = kcompiler.compile(model, target=target, mode="timing", **opts)
    rep = cm.simulate()
    by = Counter()
    for o in rep.ops:
        by[(o.device, o.op_type)] += o.end_s - o.start_s
    moved = Counter()
    for t in rep.transfers:
        moved[f"{t.src}->{t.dst}"] += t.nbytes
    where = Counter()
    for n in cm.model.graph:
        if n.op_type in ("MatMul", "Concat", "Attention", "FusedMatMul"):
            where[(n.op_type, n.metadata_props.get("kcompiler.device", "?"))] += 1
    return {"model": model, "target": target, "options": opts, "latency_s": rep.latency_s,
            "compile_s": time.perf_counter() - t0, "placement": cm.placement,
            "top_ops": [(f"{d}:{op}", s) for (d, op), s in by.most_common(6)],
            "transfer_bytes": dict(moved), "where": {f"{op}@{d}": c for (op, d), c in where.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--kv", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = []
    for phase, opts in (("decode", {"phase": "decode", "kv": args.kv}), ("prefill", {"phase": "prefill", "seq": args.seq})):
        pair = {}
        for target in ("atom", "atom+aim"):
            r = run(args.model, target, **opts)
            results.append(r)
            pair[target] = r["latency_s"]
            print(f"{phase:7s} {target:9s} {r['latency_s'] * 1e3:9.2f} ms  (compile {r['compile_s']:.1f} s) "
                  f"placement {r['placement']}")
            print(f"        products/appends: {r['where']}")
            print("        busiest: " + ", ".join(f"{k} {s * 1e3:.2f} ms" for k, s in r["top_ops"]))
            print("        transfers: " + ", ".join(f"{k} {b / 1e6:.1f} MB" for k, b in r["transfer_bytes"].items()))
        print(f"{phase}: atom / atom+aim = {pair['atom'] / pair['atom+aim']:.2f}x\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
