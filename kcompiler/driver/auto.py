"""--parallel auto: search the plans (intra-stage split x degree x pipeline stages) for the
best latency or throughput, in the manner of Alpa's inter-/intra-operator search.

1. Every plan using 1, 2, 4, ... N chips is estimated from the backends' per-node costs and
   the collective formulas, without rewriting the graph (``kcompiler.parallel.estimate``).
2. The finalists are compiled and simulated for real: every fixed strategy at the full
   degree (what a user could have chosen by hand: data, tensor, pipeline over N chips), one
   chip, and the best-estimated others. The best simulated one is returned, so auto is
   never slower than a fixed strategy at full degree.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from kcompiler import parallel as kp
from kcompiler.driver.context import load, make_backends
from kcompiler.errors import KCError
from kcompiler.passes import CompileContext, run_pipeline
from kcompiler.passes.placement import place_nodes

#: plans beyond the fixed ones that are compiled and simulated, best estimates first
EXTRA_FINALISTS = 2


def _objective_value(rep, objective: str) -> float:
    return rep.latency_s if objective == "latency" else (1.0 / rep.throughput_per_s if rep.throughput_per_s else
                                                        float("inf"))


def compile_auto(compile_fn: Callable[..., Any], model, system, shapes, objective: str = "latency",
                 printer: Callable[[str], None] = print, options: Mapping[str, Any] | None = None):
    """Rank the plans for `system` and return the best finalist compiled by `compile_fn` (the
    driver's own compile, kcompiler.driver.compile)."""
    options = dict(options or {})
    accs = kp.accelerators(system)
    n = len(accs)
    t0 = time.perf_counter()
    # one analysis model: the driver's load and graph optimisations, then one-chip placement
    zoo_opts = {k: v for k, v in options.items() if k not in ("disable_passes", "print_after", "pipeline", "mode",
                                                               "name", "state", "allow_low_precision")}
    irm, _, _, _ = load(model, shapes, options.get("state"), **zoo_opts)
    ctx = CompileContext(system=system, backends=make_backends(system), mode="timing",
                         disabled=frozenset(options.get("disable_passes", ())), printer=lambda s: None)
    backends = ctx.chips
    run_pipeline(irm, ctx, "optimize")
    place_nodes(irm, {system.host.name: backends[system.host.name], accs[0].name: backends[accs[0].name]})
    cost = kp.node_costs(irm, backends)
    rows: list[dict[str, Any]] = []
    for plan in kp.candidate_plans(n):
        row = {"plan": plan.label, "intra": plan.intra, "t": plan.t, "k": plan.k, "chips": plan.devices}
        why = kp.skip_reason(irm, plan)
        if why:
            row["skipped"] = why
            rows.append(row)
            continue
        try:
            lat, interval, _ = kp.estimate(irm, system, backends, plan, cost)
        except KCError as exc:
            row["skipped"] = exc.message
            rows.append(row)
            continue
        row.update(est_latency_s=lat, est_interval_s=interval)
        rows.append(row)
    key = "est_latency_s" if objective == "latency" else "est_interval_s"
    fixed = set(kp.fixed_plans(n))
    viable = [r for r in rows if "skipped" not in r]
    ranked = sorted(viable, key=lambda r: r[key])
    fixed_rows = [r for r in viable if kp.Plan(r["intra"], r["t"], r["k"]) in fixed]
    finalists = fixed_rows + [r for r in ranked if r not in fixed_rows][:EXTRA_FINALISTS]
    best, best_val = None, float("inf")
    for r in finalists:
        plan = kp.Plan(r["intra"], r["t"], r["k"])
        try:
            cm = compile_fn(model, system, shapes, parallel=plan, objective=objective, printer=lambda s: None,
                            **options)
        except KCError as exc:
            r["skipped"] = exc.message
            continue
        rep = cm.simulate()
        r.update(latency_s=rep.latency_s, throughput_per_s=rep.throughput_per_s)
        val = _objective_value(rep, objective)
        if val < best_val:
            best, best_val = (cm, r), val
    if best is None:
        raise KCError("--parallel auto found no plan that compiles for this model and system")
    cm, chosen = best
    chosen["chosen"] = True
    cm.parallel.candidates = rows
    cm.parallel.objective = objective
    cm.parallel.notes.append(f"auto: weighed {len(rows)} plans, simulated {len(finalists)}, "
                             f"chose {chosen['plan']} for {objective}")
    cm.compile_s = time.perf_counter() - t0
    cm.report = None
    for line in format_candidates(rows, objective):
        printer(line)
    return cm


def format_candidates(rows: Sequence[dict[str, Any]], objective: str) -> list[str]:
    out = [f"parallel auto ({objective}): candidates weighed (estimated from backend costs; "
           f"'simulated' = compiled and simulated)"]
    out.append(f"  {'plan':28s} {'chips':>5s} {'est. latency':>14s} {'est. interval':>14s} "
               f"{'sim. latency':>13s} {'sim. thr/s':>11s}")
    for r in rows:
        if "skipped" in r and "est_latency_s" not in r:
            out.append(f"  {r['plan']:28s} {r['chips']:5d}  skipped: {r['skipped'][:60]}")
            continue
        sim_l = f"{r['latency_s'] * 1e3:10.4f} ms" if "latency_s" in r else " " * 13
        sim_t = f"{r['throughput_per_s']:11.1f}" if "throughput_per_s" in r else " " * 11
        mark = "  <- chosen" if r.get("chosen") else ""
        out.append(f"  {r['plan']:28s} {r['chips']:5d} {r['est_latency_s'] * 1e3:11.4f} ms "
                   f"{r['est_interval_s'] * 1e3:11.4f} ms {sim_l} {sim_t}{mark}")
    return out
