"""The 1,000-point sweep on local Ray against the same sweep run serially in one process.

    python benchmarks/sweep_scale.py                          # examples/sweeps/atom-1000.toml
    python benchmarks/sweep_scale.py --limit 40               # a seeded random subset, for a quick look
    python benchmarks/sweep_scale.py --plot front.png --keep results/   # keep the stores and the plot

Prints each run's wall time, the speed-up, the per-point overhead of the Ray run, i.e.
(workers x wall - sum of the points' own times) / sum of the points' own times, how much slower a
point runs beside another one (sum of own times on Ray / serial), and whether every point's
figures are equal. Run it on an otherwise idle machine: another job on the cores shows up as
overhead and as a lower speed-up.

Measured 2026-12-01 (2-core AMD EPYC, AVX2, otherwise idle; commit dc8a187): Ray, 2 workers,
1,020.8 s for the 1,000 points (1,027.8 s with start-up), overhead 4.1%; serial 1,864.9 s;
speed-up 1.83x (a point's own time on Ray is 1.09x its serial time); figures equal for all 1,000
points; 48 failed points (the tiler/codegen scratchpad disagreement at 1-2 MiB with wide arrays).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGS = ("latency_s", "energy_j", "dram_bytes", "cycles", "macs", "area_mm2", "status", "error")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "sweeps" / "atom-1000.toml"))
    ap.add_argument("--limit", type=int, default=0, help="a seeded random subset of this many points")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--keep", default=None, help="a folder to keep the two stores and the JSON in")
    ap.add_argument("--only", choices=("ray", "serial"), default=None, help="run one of the two")
    args = ap.parse_args()

    os.environ.setdefault("KC_QUIET", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from kcompiler import sweep
    from kcompiler.sweep import pareto, runner

    spec = sweep.load(args.spec)
    if args.limit:
        pts = random.Random(0).sample(spec.points(), min(args.limit, spec.grid_size))
        spec = dataclasses.replace(spec, search="random", samples=len(pts))
        print(f"{len(pts)} of {spec.grid_size} points (seeded random subset)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kc-sweep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for kind in ("ray", "serial"):
            if args.only and kind != args.only:
                continue
            out = work / f"{spec.name}-{kind}.duckdb"
            if out.exists():
                out.unlink()
            t0 = time.perf_counter()
            res = runner.run(spec, out, serial=kind == "serial", workers=args.workers)
            total = time.perf_counter() - t0
            results[kind] = res
            print(f"{kind:6s}: {len(res.rows)} points ({res.failed} failed) in {res.wall_s:.1f} s of points "
                  f"({total:.1f} s with start-up) on {res.workers} worker(s); sum of points' own time "
                  f"{res.busy_s:.1f} s; per-point overhead {100 * res.overhead:.1f}%", flush=True)
        if len(results) == 2:
            r, s = results["ray"], results["serial"]
            fr = {x["point_id"]: tuple(x[f] for f in FIGS) for x in r.rows}
            fs = {x["point_id"]: tuple(x[f] for f in FIGS) for x in s.rows}
            print(f"speed-up (serial wall / Ray wall): {s.wall_s / r.wall_s:.2f}x; a point's own time on Ray is "
                  f"{r.busy_s / s.busy_s:.2f}x its serial time")
            print(f"figures equal point for point: {fr == fs} ({len(fr)} points)")
        res = results.get("ray") or results.get("serial")
        by_model = {}
        for x in res.rows:
            if x["status"] == "ok":
                by_model.setdefault(x["model"], []).append(x["point_s"])
        for m, ts in by_model.items():
            ts.sort()
            print(f"  {m}: {len(ts)} points, own time median {ts[len(ts) // 2]:.2f} s, max {ts[-1]:.2f} s")
        for m, fr in res.front.items():
            print(f"  {m}: {len(fr)} points on the Pareto front ({', '.join(spec.objectives)})")
        if args.plot:
            pareto.plot(res.rows, spec.objectives, args.plot)
            print(f"plot: {args.plot}")
        if args.keep:
            (work / "summary.json").write_text(json.dumps(
                {k: {"wall_s": v.wall_s, "busy_s": v.busy_s, "workers": v.workers, "points": len(v.rows),
                     "failed": v.failed, "overhead": v.overhead} for k, v in results.items()}, indent=1))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
