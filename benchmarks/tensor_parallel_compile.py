"""Compile time of tensor-parallel plans, and the share of it spent choosing the column splits
(kcompiler.parallel.tensor.select_tensor_regions), timing mode, no weight data.

    python benchmarks/tensor_parallel_compile.py [--only llama7b-decode-4x,...] [--repeat N]
                                                 [--reference] [--check]

--reference also times the selection as it was first written (a whole re-analysis of the graph
for every group of seeds tried: quadratic), and --check asserts that it decides every group,
accepts the same seeds and returns the same analysis as the incremental one.

Before / after the incremental selection (2-core machine shared with other jobs, KC_NPU_THREADS=1,
best of 2; seconds of the whole compile / of the selection in it):

    case                       before           after
    llama7b-decode-2x           9.63 / 4.64      5.17 / 0.162
    llama7b-decode-4x          10.23 / 4.35      6.66 / 0.164
    llama7b-decode-8x          12.96 / 5.17      8.80 / 0.167
    bert-base-4x                1.39 / 0.234     1.22 / 0.017
    resnet50-4x                 0.87 / 0.002     0.88 / 0.003   (one seed: the classifier)
    gpt2-prefill-4x             1.51 / 0.282     1.24 / 0.017
    llama-tiny-prefill-4x       0.19 / 0.013     0.22 / 0.008
    llama-tiny-decode-auto-4x   0.99 / 0.077     0.90 / 0.033   (auto: a selection per tensor plan)

The selection now grows with the graph, not with its square: llama-7b decode with 8 / 16 / 32 / 64
layers on 4xatom, selection seconds before 0.28 / 1.22 / 4.51 / 16.8, after 0.035 / 0.072 / 0.157 / 0.330.
The seeds accepted, the rewritten graph, the reports and the plan summaries are identical.
"""

from __future__ import annotations

import argparse
import sys
import time

CASES = {
    "llama7b-decode-2x": ("llama-7b", {"phase": "decode", "kv": 2048}, "2xatom", "tensor"),
    "llama7b-decode-4x": ("llama-7b", {"phase": "decode", "kv": 2048}, "4xatom", "tensor"),
    "llama7b-decode-8x": ("llama-7b", {"phase": "decode", "kv": 2048}, "8xatom", "tensor"),
    "bert-base-4x": ("bert-base", {}, "4xatom", "tensor"),
    "resnet50-4x": ("resnet50", {}, "4xatom", "tensor"),
    "gpt2-prefill-4x": ("gpt2", {"phase": "prefill"}, "4xatom", "tensor"),
    "llama-tiny-prefill-4x": ("llama-tiny", {"phase": "prefill"}, "4xatom", "tensor"),
    "llama-tiny-decode-auto-4x": ("llama-tiny", {"phase": "decode"}, "4xatom", "auto"),
}


def reference_selection(model, system, group, seeds, cost):
    """The selection as first written: every group of seeds tried by a whole new analysis."""
    from kcompiler.parallel.spmd import Rewriter

    t = len(group)
    order = {id(n): i for i, n in enumerate(model.graph)}
    nodes = {id(n): n for n in model.graph}
    by_input: dict[int, list[int]] = {}
    for sid in sorted(seeds, key=lambda x: order[x]):
        by_input.setdefault(id(nodes[sid].inputs[0]), []).append(sid)
    accepted: set[int] = set()
    an, decisions = None, []

    def analyse(s):
        return Rewriter(model, system, [tuple(group)], intra="tensor", seeds=s, emit=False).run()

    for members in sorted(by_input.values(), key=lambda g: order[g[0]]):
        trial = accepted | set(members)
        res = analyse(trial)
        ok = True
        for root in {next((r for r, m in res.regions.items() if s in m), None) for s in members} if res.regions \
                else ():
            if root is None:
                continue
            events = [e for e in res.events if e.region == root and not e.graph_output]
            if any(e.op == "AllGather" for e in events):
                gain = (1 - 1 / t) * sum(cost.get(n, 0.0) for n in sorted(res.regions[root], key=order.get))
                if gain <= sum(e.seconds for e in events):
                    ok = False
        decisions.append(ok)
        if ok:
            accepted, an = trial, res
    if an is None or not accepted:
        an = analyse(accepted)
    return accepted, an, decisions


def _analysis_key(model, an):
    names = {id(n): n.name for n in model.graph}
    return (sorted(names[x] for x in an.sharded_nodes),
            [(e.op, e.nbytes, e.stage, names.get(e.region), e.seconds, e.graph_output) for e in an.events],
            sorted(sorted(names[x] for x in m) for m in an.regions.values()),
            sorted((v.name, str(an.layouts[id(v)])) for n in model.graph for v in n.outputs if id(v) in an.layouts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--repeat", type=int, default=1, help="compiles per case (the fastest is shown)")
    ap.add_argument("--reference", action="store_true", help="also time the whole-re-analysis selection")
    ap.add_argument("--check", action="store_true", help="assert the reference decides exactly the same")
    args = ap.parse_args(argv)

    import kcompiler
    from kcompiler.parallel import tensor as tensor_strategy  # the tensor strategy calls its own
    from kcompiler import zoo

    cases = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    incremental = tensor_strategy.select_tensor_regions
    spent = {"select": 0.0, "reference": 0.0}

    def timed(model, system, group, seeds, cost):
        t0 = time.perf_counter()
        accepted, an = incremental(model, system, group, seeds, cost)
        spent["select"] += time.perf_counter() - t0
        if args.reference or args.check:
            t0 = time.perf_counter()
            ref_accepted, ref_an, _ = reference_selection(model, system, group, seeds, cost)
            spent["reference"] += time.perf_counter() - t0
            if args.check:
                assert ref_accepted == accepted, "the reference accepts other seeds"
                assert _analysis_key(model, ref_an) == _analysis_key(model, an), "the reference analyses otherwise"
        return accepted, an

    tensor_strategy.select_tensor_regions = timed
    m, _ = zoo.resolve_model("llama-tiny", phase="decode")
    kcompiler.compile(m, target="2xatom", mode="timing", parallel="tensor")  # imports, caches
    print(f"{'case':27s} {'compile s':>10s} {'select s':>9s}" + (f" {'reference select s':>19s}" if
                                                                  args.reference or args.check else ""))
    for case in cases:
        name, opts, target, parallel = CASES[case]
        best = None
        for _ in range(max(1, args.repeat)):
            spent.update(select=0.0, reference=0.0)
            m, _ = zoo.resolve_model(name, **opts)
            t0 = time.perf_counter()
            kcompiler.compile(m, target=target, mode="timing", parallel=parallel, printer=lambda line: None)
            total = time.perf_counter() - t0 - spent["reference"]
            if best is None or total < best[0]:
                best = (total, spent["select"], spent["reference"])
        line = f"{case:27s} {best[0]:10.2f} {best[1]:9.3f}"
        if args.reference or args.check:
            line += f" {best[2]:19.3f}"
        print(line, flush=True)
    tensor_strategy.select_tensor_regions = incremental
    if args.check:
        print("check: the incremental selection decided like the whole re-analysis in every case")
    return 0


if __name__ == "__main__":
    sys.exit(main())
