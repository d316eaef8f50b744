"""`kc cluster DEPLOYMENT.toml --workload WORKLOAD.toml|TRACE.csv`: simulate a serving fleet
whose latencies come from compiled programs (docs/cluster.md)."""

from __future__ import annotations

import json
import os

import click
from rich.console import Console
from rich.table import Table

from kcompiler import cluster
from kcompiler.cluster import metrics, search
from kcompiler.cluster.latency import Profiler
from kcompiler.errors import KCError


@click.command("cluster")
@click.argument("deployment", metavar="DEPLOYMENT.toml")
@click.option("--workload", "-w", "workload", required=True, metavar="WORKLOAD.toml|TRACE.csv",
              help="Synthetic arrivals (TOML) or a trace (Azure LLM inference or SplitwiseSim CSV).")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=None,
              help="Override the workload's number of requests (a trace: its first N rows).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the arrival rate, requests per second (a trace is rescaled in time).")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write every figure as JSON.")
@click.option("--trace", "trace_path", default=None, metavar="FILE.json",
              help="Chrome/Perfetto trace of the fleet: one row per replica, one span per iteration.")
@click.option("--trace-limit", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Most spans written to --trace (the rest are counted).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Latency CDFs and utilisation over time (needs matplotlib).")
@click.option("--vary", multiple=True, metavar="[POOL.]KEY=V1,V2,...",
              help="Search: simulate every combination (keys: replicas, devices, max_batch, chunk, scheduler, "
                   "target, router, parallel, role) and print the cheapest fleets that meet the SLOs.")
@click.option("--no-cache", is_flag=True, help="Compile every latency bucket again (not from the cache).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines and no table (use --json).")
def cluster_cmd(deployment, workload, requests, rate, json_path, trace_path, trace_limit, plot_path, vary, no_cache,
                quiet):
    """Simulate a data-centre fleet serving a workload: TTFT, TPOT, latency percentiles,
    throughput, goodput under the SLOs, utilisation, memory and energy.

    Every iteration's latency comes from kcompiler's timing mode for its (model, hardware,
    batch, KV length) bucket, compiled once and cached. Examples: examples/cluster/."""
    quiet = quiet or os.environ.get("KC_QUIET") == "1"
    err = Console(stderr=True)

    def log(msg):
        if not quiet:
            err.print(msg, highlight=False, soft_wrap=True)

    if vary:
        if trace_path or plot_path:
            raise KCError("--trace and --plot describe one fleet; drop them with --vary")
        return _search(deployment, workload, requests, rate, vary, json_path, no_cache, quiet, log)
    run = cluster.run(deployment, workload, requests=requests, rate=rate,
                      trace_limit=trace_limit if trace_path else 0, cache=None if no_cache else "default", log=log)
    s = run.summary
    if json_path:
        with open(json_path, "w") as f:
            json.dump(s, f, indent=1)
    if trace_path:
        metrics.write_trace(run.result, trace_path)
    if plot_path:
        metrics.plot(run.result, plot_path)
    if s["completed"] == 0:
        raise KCError(f"no request completed ({s['rejected']} refused: larger than any replica's KV memory)",
                      hint="give the pool more memory (devices, a smaller dtype) or shorter requests")
    if not quiet:
        Console().print(summary_table(s, run.result.deployment.name))


def fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x * 1e6:,.1f} µs" if x < 1e-3 else f"{x * 1e3:,.1f} ms" if x < 10 else f"{x:,.2f} s"


def summary_table(s: dict, title: str):
    ms = fmt_s

    t = Table(title=f"{title}: {s['requests']:,} requests ({s['workload']['description']})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [("completed / refused", f"{s['completed']:,} / {s['rejected']:,}"),
            ("throughput", f"{s['throughput_rps']:.3f} req/s, {s['tokens_per_s']:,.1f} tok/s"),
            ("goodput (all SLOs met)", f"{s['goodput_rps']:.3f} req/s ({s['slo_met']:,} requests)"),
            ("TTFT p50 / p90 / p99", " / ".join(ms(s[f"ttft_{p}_s"]) for p in ("p50", "p90", "p99"))),
            ("TPOT p50 / p90 / p99", " / ".join(ms(s[f"tpot_{p}_s"]) for p in ("p50", "p90", "p99"))),
            ("end-to-end p50 / p90 / p99", " / ".join(ms(s[f"e2e_{p}_s"]) for p in ("p50", "p90", "p99"))),
            ("energy per request / token", f"{(s['energy_per_request_j'] or 0):.3f} J / "
                                           f"{(s['energy_per_token_j'] or 0) * 1e3:.2f} mJ"),
            ("preemptions", f"{s['preemptions']:,}")]
    util = s["utilisation"]
    if util:
        vals = list(util.values())
        rows.append(("utilisation mean / max", f"{sum(vals) / len(vals):.1%} / {max(vals):.1%}"))
    mem = [m["kv_peak_fraction"] for m in s["memory"].values()]
    if mem:
        rows.append(("KV memory peak (max replica)", f"{max(mem):.1%}"))
    for name, p in s["pools"].items():
        rows.append((f"pool {name}", f"{p['replicas']} x {p['hardware']}, {p['scheduler']}"
                                     + (f", {p['role']}" if p["role"] != "both" else "")))
    sim = s["simulation"]
    rows.append(("buckets compiled / cached", f"{sim['buckets_compiled']} ({sim['compile_s']:.0f} s) / "
                                              f"{sim['buckets_cached']}"))
    rows.append(("simulated in", f"{sim['wall_s']:.2f} s ({sim['events']:,} events)"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def _search(deployment, workload, requests, rate, vary, json_path, no_cache, quiet, log):
    dep = cluster.load_deployment(deployment)
    wl = cluster.load_workload(workload, requests=requests, rate=rate)
    spec = search.parse_vary(list(vary))
    rows = search.search(dep, wl, spec, Profiler(None if no_cache else "default", log=log), log=log)
    front = search.frontier(rows)
    good = sorted((r for r in rows if r.meets), key=lambda r: (r.packages, -r.summary["goodput_rps"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": search.as_json(rows), "frontier": search.as_json(front),
                       "cheapest_meeting_slo": search.as_json(good[:1]), "slo": dep.slo}, f, indent=1)
    if quiet:
        return
    t = Table(title=f"{dep.name}: {len(rows)} fleets for {len(wl):,} requests at {wl.rate:.3g}/s "
                    f"(* frontier: fewest packages for the goodput)")
    for col in ("setting", "packages", "goodput req/s", "TTFT p99", "TPOT p99", "meets SLOs"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    for r in sorted(rows, key=lambda r: (r.packages, str(r.setting))):
        s = r.summary
        mark = "*" if r in front else ""
        if not s:
            t.add_row(", ".join(f"{k}={v}" for k, v in r.setting.items()), str(r.packages), "-", "-", "-",
                      f"[red]{(r.error or '')[:40]}")
            continue
        t.add_row(mark + ", ".join(f"{k}={v}" for k, v in r.setting.items()), str(r.packages),
                  f"{s['goodput_rps']:.3f}", fmt_s(s["ttft_p99_s"]), fmt_s(s["tpot_p99_s"]), "yes" if r.meets else "no")
    Console().print(t)
    if good:
        g = good[0]
        Console().print(f"cheapest fleet meeting the SLOs ({', '.join(f'{k} <= {v:g} s' for k, v in dep.slo.items())}"
                        f" at p99): {', '.join(f'{k}={v}' for k, v in g.setting.items())} on {g.packages} packages",
                        highlight=False)
    else:
        Console().print("no fleet tried meets the SLOs", highlight=False)
