"""DRAM traffic and simulated latency on `npu` (timing mode) with every fusion rule off
(`--disable-pass fusion`) and on (the default pipeline), for resnet50, bert-base and
llama-1b prefill. Targets: resnet50 DRAM -30 % or more, bert-base -40 % or more.

    python benchmarks/fusion_effect.py [--target npu] [--models resnet50,bert-base,llama-1b]
"""

from __future__ import annotations

import argparse
import json

import kcompiler

MODELS = {"resnet50": {}, "bert-base": {}, "llama-1b": {"phase": "prefill"}}
TARGETS = {"resnet50": 0.30, "bert-base": 0.40}


def measure(model: str, target: str, disabled: tuple[str, ...], **opts) -> dict:
    cm = kcompiler.compile(model, target=target, mode="timing", disable_passes=disabled, **opts)
    rep = cm.simulate()
    return {"dram_bytes": rep.dram_bytes, "latency_s": rep.latency_s, "rules_fired": dict(rep.rules_fired),
            "compile_s": cm.compile_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="npu")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':10s} {'DRAM off':>12s} {'DRAM on':>12s} {'cut':>6s} {'latency off':>12s} {'latency on':>12s} {'cut':>6s}")
    for model in args.models.split(","):
        opts = MODELS.get(model, {})
        off = measure(model, args.target, ("fusion",), **opts)
        on = measure(model, args.target, (), **opts)
        cut_b = 1 - on["dram_bytes"] / off["dram_bytes"]
        cut_t = 1 - on["latency_s"] / off["latency_s"]
        ok = "" if model not in TARGETS else ("  (target %d%%: %s)" % (TARGETS[model] * 100,
                                                                        "met" if cut_b >= TARGETS[model] else "MISSED"))
        print(f"{model:10s} {off['dram_bytes'] / 1e6:10.1f}MB {on['dram_bytes'] / 1e6:10.1f}MB {cut_b:6.1%} "
              f"{off['latency_s'] * 1e3:10.3f}ms {on['latency_s'] * 1e3:10.3f}ms {cut_t:6.1%}{ok}")
        print(f"{'':10s} rules fired: {on['rules_fired']}")
        rows.append({"model": model, "target": args.target, "off": off, "on": on, "dram_cut": cut_b,
                     "latency_cut": cut_t})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
