"""How good is interpolating between compiled buckets? Compile the points halfway between them.

    python benchmarks/cluster_buckets.py                       # llama-7b fp16 on atom
    python benchmarks/cluster_buckets.py --model llama-tiny --dtype fp32

The fleet simulator compiles decode steps at batch sizes 1, 2, 4, ... and KV lengths 128, 256,
512, ... and prefills at prompt lengths 16, 32, ..., and interpolates in between
(kcompiler/cluster/latency.py). This compiles points between the buckets (batch 3, 6, 12;
KV 192, 384, 768; prompts 48, 96, 192, 384, 768) and prints the interpolated latency against the
compiled one. Last line: `worst interpolation error: X% (decode), Y% (prefill)`.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--target", default="atom")
    args = ap.parse_args()
    from kcompiler.cluster.latency import Hardware, Profiler, llm_profile

    prof = Profiler(log=print)
    hw = Hardware(args.target)
    opts = {"dtype": args.dtype}
    lp = llm_profile(prof, args.model, hw, 16, 1024, 1024, options=opts)
    worst_d = worst_p = 0.0
    for b in (3, 6, 12):
        for kv in (192, 384, 768):
            t, _ = lp.decode(b, kv)
            m = prof.measure(args.model, {**opts, "phase": "decode", "batch": b, "kv": kv}, hw)
            err = (t - m.latency_s) / m.latency_s * 100
            worst_d = max(worst_d, abs(err))
            print(f"decode batch {b:2d} kv {kv:4d}: interpolated {t * 1e3:8.3f} ms, compiled {m.latency_s * 1e3:8.3f} ms, "
                  f"{err:+.2f}%")
    for s in (48, 96, 192, 384, 768):
        t, _ = lp.prefill(s)
        m = prof.measure(args.model, {**opts, "phase": "prefill", "batch": 1, "seq": s}, hw)
        err = (t - m.latency_s) / m.latency_s * 100
        worst_p = max(worst_p, abs(err))
        print(f"prefill seq {s:4d}: interpolated {t * 1e3:8.3f} ms, compiled {m.latency_s * 1e3:8.3f} ms, {err:+.2f}%")
    print(f"worst interpolation error: {worst_d:.2f}% (decode), {worst_p:.2f}% (prefill)")


if __name__ == "__main__":
    main()
