"""K-Cloud fleet simulator (kcompiler/cluster): the event engine against queueing theory, the
schedulers against each other, the deployment/workload readers against bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from kcompiler import cluster
from kcompiler.cluster import engine as E
from kcompiler.cluster import fleet, metrics
from kcompiler.cluster.latency import Profiler
from kcompiler.cluster.spec import ClusterSpecError
from kcompiler.errors import KCError


# ---- the event engine: one FCFS server with deterministic service ------------------------------

class _Pool:
    name, model, max_batch, max_delay, completed, rejected, hardware, index = "q", "m", 1, 0.0, 0, 0, "", 0


def _md1(rho: float, n: int, seed: int = 0, service: float = 1.0):
    """M/D/1 through the engine (a dynamic batcher of batch 1 is a FCFS server). Exponential gaps
    from stratified uniforms (each 1/n-quantile once, in random order): exactly exponential
    marginals, so the realised load is the asked one."""
    rng = np.random.default_rng(seed)
    u = (rng.permutation(n) + rng.random(n)) / n
    gaps = -np.log1p(-u) * service / rho
    arrival = np.cumsum(gaps) - gaps[0]
    sim = E.Sim(n, arrival.tolist(), [0] * n, [0] * n)
    pool = _Pool()
    rep = E.DynamicBatcher(sim, pool, 0, 0, None, ([0.0, service], [0.0, 0.0]))
    pool.router = E.Router("round-robin", [rep])
    sim.model_of = [0] * n
    E.route_all(sim, [pool], n)
    sim.run()
    return arrival, np.asarray(sim.finish)


def test_engine_equals_lindley_recursion():
    """Every departure is the one the Lindley recursion gives for the same arrivals (exact)."""
    arrival, finish = _md1(0.8, 20_000, seed=3)
    expect = np.empty_like(arrival)
    t = -np.inf
    for i, a in enumerate(arrival):
        t = max(t, a) + 1.0
        expect[i] = t
    np.testing.assert_allclose(finish, expect, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho):
    """Ten independent runs of 10^5 requests each: their mean waiting time is within 2% of
    Pollaczek-Khinchine. (One run is not enough at 0.8: the waits are so autocorrelated that a
    10^5-request estimate has a ~2% standard deviation — benchmarks/cluster_queueing.py shows it.)"""
    pk = rho / (2 * (1 - rho))  # deterministic service of 1
    runs = []
    for seed in range(10):
        arrival, finish = _md1(rho, 100_000, seed=seed)
        runs.append(float((finish - arrival - 1.0).mean()))
    assert abs(np.mean(runs) - pk) / pk < 0.02, (runs, pk)


def _little(arrival, finish, lo_frac=0.1, hi_frac=0.9, samples=100_000):
    """L (time-average number in system, sampled on a grid) against lambda * W over a window."""
    t0, t1 = arrival[int(len(arrival) * lo_frac)], arrival[int(len(arrival) * hi_frac)]
    grid = np.linspace(t0, t1, samples)
    fin_sorted = np.sort(finish)
    n_sys = np.searchsorted(arrival, grid, "right") - np.searchsorted(fin_sorted, grid, "right")
    L = n_sys.mean()
    sel = (arrival >= t0) & (arrival < t1)
    lam = sel.sum() / (t1 - t0)
    W = (finish[sel] - arrival[sel]).mean()
    return L, lam * W


def test_littles_law_single_server():
    arrival, finish = _md1(0.8, 100_000)
    L, lw = _little(arrival, finish)
    assert abs(L - lw) / lw < 0.01, (L, lw)


# ---- LLM fleets on llama-tiny (timing-mode compiles, cached for the module) ----------------------

@pytest.fixture(scope="module")
def prof(tmp_path_factory):
    return Profiler(tmp_path_factory.mktemp("cluster") / "latency.json")


def _dep(tmp_path, body: str, name="dep.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def _run(prof, dep_path, wl, trace_limit=0):
    dep = cluster.load_deployment(dep_path)
    res = fleet.simulate(dep, wl, prof, trace_limit=trace_limit)
    return res, metrics.summary(res)


def _wl(n=600, rate=3000.0, prompt=(16, 100), output=(2, 24), seed=0):
    return cluster.synthetic(rate, n, seed=seed, prompt=("uniform", *prompt), output=("uniform", *output))


def _pool(scheduler, extra=""):
    return f"""
    [slo]
    ttft = "2 ms"
    tpot = "100 us"
    [[pool]]
    model = "llama-tiny"
    target = "atom"
    replicas = 2
    scheduler = "{scheduler}"
    max_batch = 8
    {extra}
    """


def test_continuous_batching_beats_static_on_goodput(prof, tmp_path):
    wl = _wl()
    _, s_static = _run(prof, _dep(tmp_path, _pool("static", 'max_delay = "1 ms"'), "s.toml"), wl)
    res, s_cont = _run(prof, _dep(tmp_path, _pool("continuous"), "c.toml"), wl)
    assert s_static["completed"] == s_cont["completed"] == len(wl)
    assert s_cont["goodput_rps"] > s_static["goodput_rps"]
    assert s_cont["ttft_p99_s"] < s_static["ttft_p99_s"]
    # every request's times are ordered, and every replica gave its KV blocks back
    assert np.all(res.first >= res.arrival) and np.all(res.finish >= res.first)
    assert all(r.blocks_free == r.blocks_total for r in res.replicas)


def test_little_law_holds_for_an_llm_fleet(prof, tmp_path):
    res, _ = _run(prof, _dep(tmp_path, _pool("continuous")), _wl(n=4000, rate=2500.0))
    L, lw = _little(res.arrival, res.finish)
    assert abs(L - lw) / lw < 0.01, (L, lw)


def test_chunked_prefill_keeps_decodes_flowing(prof, tmp_path):
    """Long prompts: vLLM's prefill-first iterations stall every running decode; Sarathi's token
    budget does not, so the TPOT tail drops."""
    wl = _wl(n=400, rate=1500.0, prompt=(100, 120), output=(16, 32))
    _, cont = _run(prof, _dep(tmp_path, _pool("continuous"), "c.toml"), wl)
    _, chunk = _run(prof, _dep(tmp_path, _pool("chunked", "chunk = 64"), "k.toml"), wl)
    assert chunk["completed"] == cont["completed"] == len(wl)
    assert chunk["tpot_p99_s"] < cont["tpot_p99_s"]


def test_kv_pressure_preempts_and_recomputes(prof, tmp_path, monkeypatch):
    """A tiny KV budget forces preemptions; every request still completes with the right number
    of tokens' time, and the blocks all come back."""
    monkeypatch.setattr(fleet, "kv_blocks", lambda *a, **k: 24)
    res, s = _run(prof, _dep(tmp_path, _pool("continuous")), _wl(n=300, rate=5000.0, prompt=(60, 100),
                                                                   output=(20, 40)))
    assert s["preemptions"] > 0
    assert s["completed"] == 300
    assert all(r.blocks_free == r.blocks_total for r in res.replicas)


def test_requests_larger_than_memory_are_refused(prof, tmp_path, monkeypatch):
    monkeypatch.setattr(fleet, "kv_blocks", lambda *a, **k: 4)  # 64 tokens
    wl = _wl(n=50, prompt=(16, 100), output=(2, 4))
    _, s = _run(prof, _dep(tmp_path, _pool("continuous")), wl)
    too_big = int(((wl.prompt + wl.output) > 64).sum())
    assert s["rejected"] == too_big and s["completed"] == 50 - too_big


@pytest.mark.parametrize("router", ["round-robin", "least-loaded", "kv-aware"])
def test_routers(prof, tmp_path, router):
    res, s = _run(prof, _dep(tmp_path, _pool("continuous", f'router = "{router}"')), _wl(n=300))
    assert s["completed"] == 300
    per = np.bincount(res.placed, minlength=2)
    assert per.min() > 50  # both replicas serve


def test_disaggregated_prefill_and_decode_pools(prof, tmp_path):
    body = """
    [[pool]]
    name = "prefill"
    model = "llama-tiny"
    target = "atom"
    role = "prefill"
    decode_pool = "decode"
    [[pool]]
    name = "decode"
    model = "llama-tiny"
    target = "atom"
    role = "decode"
    replicas = 2
    """
    res, s = _run(prof, _dep(tmp_path, body), _wl(n=300))
    assert s["completed"] == 300
    dec = {r.index for r in res.replicas if r.pool.name == "decode"}
    assert set(np.unique(res.placed)) <= dec  # decode replicas finish every request
    assert np.all(res.finish > res.first)


def test_cnn_tenants_on_partitions_contend_for_bandwidth(prof, tmp_path):
    """squeezenet and bert-tiny, one per Warboy PE: each runs at full bandwidth while alone and at
    half while the other is busy (spans marked contended); on their own chips nothing contends."""
    shared = """
    [chips.w]
    target = "warboy"
    count = 1
    [[pool]]
    model = "squeezenet"
    chips = "w"
    partition = "0/2"
    max_batch = 4
    max_delay = "1 ms"
    [[pool]]
    model = "bert-tiny"
    chips = "w"
    partition = "1/2"
    max_batch = 4
    max_delay = "1 ms"
    """
    own = """
    [[pool]]
    model = "squeezenet"
    target = "warboy"
    max_batch = 4
    max_delay = "1 ms"
    [[pool]]
    model = "bert-tiny"
    target = "warboy"
    max_batch = 4
    max_delay = "1 ms"
    """
    wl = cluster.synthetic(400.0, 400, seed=1)
    res, s = _run(prof, _dep(tmp_path, shared, "shared.toml"), wl, trace_limit=10_000)
    _, s_own = _run(prof, _dep(tmp_path, own, "own.toml"), wl)
    assert s["completed"] == s_own["completed"] == 400
    assert s["chips"]["w/0"]["contended_s"] > 0
    spans = metrics.chrome_trace(res)["traceEvents"]
    # a batch run while the other tenant is busy takes longer than the same batch run alone
    for tid in (0, 1):
        by = {}
        for e in spans:
            if e["ph"] == "X" and e["tid"] == tid:
                by.setdefault((e["name"], bool(e.get("args", {}).get("contended"))), []).append(e["dur"])
        both = [n for n, c in by if c and (n, False) in by]
        assert both
        assert all(min(by[(n, True)]) > max(by[(n, False)]) for n in both)
    # the same requests served on one chip instead of two
    assert len(s["chips"]) == 1 and s_own["chips"] == {}


#: squeezenet and bert-tiny time-sharing one Warboy (no partitions)
TIME_SHARED = """
[chips.w]
target = "warboy"
[[pool]]
model = "squeezenet"
chips = "w"
[[pool]]
model = "bert-tiny"
chips = "w"
"""


def test_deployment_from_text_equals_the_file(tmp_path):
    from kcompiler.cluster import deployment

    text, path = deployment.loads(TIME_SHARED), cluster.load_deployment(_dep(tmp_path, TIME_SHARED))
    assert text.pools == path.pools and text.chips == path.chips and text.slo == path.slo


def test_temporal_sharing_charges_switches(prof, tmp_path):
    body = TIME_SHARED
    res, s = _run(prof, _dep(tmp_path, body), cluster.synthetic(300.0, 300, seed=2))
    assert s["completed"] == 300
    chip = s["chips"]["w/0"]
    assert chip["sharing"] == "temporal" and chip["switches"] > 0
    # both models' weights stay in Warboy's 16 GB: a switch reloads nothing
    assert chip["switch_s"] == 0.0
    # one tenant at a time: busy spans of the two never overlap
    a, b = res.replicas
    assert a.busy_s + b.busy_s <= s["makespan_s"] * 1.0001


def test_temporal_sharing_is_fair_under_load(prof, tmp_path):
    """Both tenants always have work: the chip alternates between them (FCFS between tenants),
    neither starves while the other keeps it."""
    body = TIME_SHARED
    wl = cluster.synthetic(50_000.0, 2000, seed=3)  # far above the chip's rate: queues never empty
    res, s = _run(prof, _dep(tmp_path, body), wl)
    assert s["completed"] == 2000
    a, b = (np.median(res.finish[res.pool_of == k]) for k in (0, 1))
    assert abs(a - b) < 0.25 * s["makespan_s"]
    assert s["chips"]["w/0"]["switches"] > 100


# ---- files and the command line ----------------------------------------------------------------

def test_traces_azure_and_splitwise(tmp_path):
    az = tmp_path / "az.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                  "2023-11-16 18:15:50.9951690,396,109\n")
    w = cluster.load_workload(az)
    assert w.prompt.tolist() == [374, 396] and w.output.tolist() == [44, 109]
    assert w.arrival[1] == pytest.approx(4.314579, abs=1e-6)
    sw = tmp_path / "sw.csv"
    sw.write_text("request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size\n"
                  "0,2,0,1,1,4096,32\n1,2,0,3,1,2048,8\n")
    w = cluster.load_workload(sw)
    assert w.arrival.tolist() == [0.0, 2.0] and w.prompt.tolist() == [4096, 2048]


@pytest.mark.parametrize("rows,needle", [
    ("1,10,5\n-3,10,5\n", "az.csv:3: TIMESTAMP -3 is negative"),
    ("5,10,5\n2,10,5\n", "az.csv:3: TIMESTAMP 2 is earlier than the row before"),
    ("1,ten,5\n", "az.csv:2: ContextTokens 'ten' is not a whole number"),
])
def test_bad_traces(tmp_path, rows, needle):
    p = tmp_path / "az.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    with pytest.raises(ClusterSpecError, match=needle):
        cluster.load_workload(p)


@pytest.mark.parametrize("body,needle", [
    ('[[pool]]\nmodel = "llama-70b"\ntarget = "atom"\n', r"dep.toml:2: pool\[0\].model: model 'llama-70b'"),
    ('[[pool]]\nmodel = "llama-tiny"\ntarget = "tpu9"\n', r"dep.toml:3: pool\[0\].target: target 'tpu9'"),
    ('[chips.w]\ntarget = "warboy"\n[[pool]]\nmodel = "squeezenet"\nchips = "w"\npartition = "0/4"\n',
     r"dep.toml:6: pool\[0\].partition: 'warboy' has 2 cores"),
    ('[slo]\nttft = 2\n[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\n', r"dep.toml:2: slo.ttft: 2 has no unit"),
    ('[slo]\nttft = "2 parsecs"\n[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\n',
     r"dep.toml:2: slo.ttft: '2 parsecs' is not a duration"),
    ('[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\n[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\nreplica = 2\n',
     r"dep.toml:7: pool\[1\].replica: unknown key"),
    ('[[pool]]\nmodel = "squeezenet"\ntarget = "atom"\nscheduler = "continuous"\n',
     r"dep.toml:4: pool\[0\].scheduler: 'continuous' batches LLM decoding"),
    ('name = "x"\n', r"dep.toml: pool: missing"),
    ('[[pool\nmodel=1', r"dep.toml: not valid TOML"),
])
def test_bad_deployments_name_file_line_and_key(tmp_path, body, needle):
    with pytest.raises(ClusterSpecError, match=needle):
        cluster.load_deployment(_dep(tmp_path, body))


def test_model_that_does_not_fit_is_a_clear_error(prof, tmp_path):
    body = '[[pool]]\nmodel = "llama-7b"\ntarget = "warboy"\npartition = "0/2"\nchips = "w"\n' \
           '[chips.w]\ntarget = "warboy"\n'
    with pytest.raises(KCError, match="leaves no room for a KV cache"):
        _run(prof, _dep(tmp_path, body), _wl(n=10))


def test_cli_json(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kcompiler.cli import cli

    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path / "cache"))
    dep = _dep(tmp_path, _pool("continuous"))
    wl = tmp_path / "w.toml"
    wl.write_text('[arrivals]\nrate = 2000.0\nrequests = 200\n[prompt]\ndistribution = "uniform"\nmin = 16\n'
                  'max = 64\n[output]\ndistribution = "fixed"\nvalue = 8\n')
    out = tmp_path / "o.json"
    r = CliRunner().invoke(cli, ["cluster", str(dep), "--workload", str(wl), "--json", str(out),
                                 "--trace", str(tmp_path / "t.json"), "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    for key in ("requests", "throughput_rps", "goodput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
                "e2e_p99_s", "energy_per_request_j", "utilisation"):
        assert s[key] is not None, key
    assert s["requests"] == 200 and set(s["utilisation"]) == {"llama-tiny/0", "llama-tiny/1"}
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    bad = CliRunner().invoke(cli, ["cluster", str(dep), "--workload", str(tmp_path / "nope.csv")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_search_finds_the_cheapest_fleet_meeting_the_slo(prof, tmp_path):
    """More replicas cut the TTFT tail; the search reports the fewest that meet p99 TTFT."""
    from kcompiler.cluster import search as S

    dep = cluster.load_deployment(_dep(tmp_path, _pool("continuous").replace('ttft = "2 ms"', 'ttft = "300 us"')))
    wl = _wl(n=600, rate=6000.0)
    rows = S.search(dep, wl, S.parse_vary(["replicas=1,2,4"]), prof)
    p99 = {r.setting["replicas"]: r.summary["ttft_p99_s"] for r in rows}
    assert p99[1] > p99[2] > p99[4]
    good = [r for r in rows if r.meets]
    assert good and min(r.packages for r in good) == min(
        n for n, t in p99.items() if t <= 300e-6 and rows[[1, 2, 4].index(n)].summary["tpot_p99_s"] <= 100e-6)
    with pytest.raises(KCError, match="cannot be varied"):
        S.parse_vary(["memory=1,2"])


def test_compiled_artifact_pool(prof, tmp_path):
    """A pool may serve a .kcm artifact, named relative to the deployment file: its shapes are
    fixed, so one run serves up to its batch (2) at the same cost however full."""
    import kcompiler

    cm = kcompiler.compile("squeezenet", target="warboy", mode="timing", batch=2)
    cm.save(tmp_path / "sq.kcm")
    body = '[[pool]]\nmodel = "sq.kcm"\ntarget = "warboy"\nmax_batch = 8\nmax_delay = "1 ms"\n'
    res, s = _run(prof, _dep(tmp_path, body), cluster.synthetic(200.0, 200, seed=0))
    assert s["completed"] == 200 and s["pools"]["sq"]["max_batch"] == 2
    assert s["pools"]["sq"]["buckets"][0]["latency_s"] == [pytest.approx(cm.report.latency_s)] * 2


@pytest.mark.parametrize("body,needle", [
    ('[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\nreplicas = 1000000000\n', "more than the simulator takes"),
    ('[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\nmax_batch = 10000000\n', "more than the simulator takes"),
])
def test_hostile_sizes_are_refused_not_allocated(tmp_path, body, needle):
    with pytest.raises(ClusterSpecError, match=needle):
        cluster.load_deployment(_dep(tmp_path, body))


def test_hostile_workloads_are_refused(tmp_path):
    p = tmp_path / "w.toml"
    p.write_text("[arrivals]\nrate = 1.0\nrequests = 1000000000000\n")
    with pytest.raises(ClusterSpecError, match=r"w.toml:1: arrivals: 1,000,000,000,000 requests exceed"):
        cluster.load_workload(p)
    p.write_text('[arrivals]\nrate = 1.0\nrequests = 3\n[prompt]\ndistribution = "fixed"\nvalue = 999999999\n')
    with pytest.raises(ClusterSpecError, match=r"prompt.value: 999,999,999 tokens exceed"):
        cluster.load_workload(p)


def test_tensor_parallel_replicas(prof, tmp_path):
    """A replica over two chips (tensor parallel): its buckets are compiled for 2xatom and its KV
    budget spans both chips' DRAM."""
    body = '[[pool]]\nmodel = "llama-tiny"\ntarget = "atom"\ndevices = 2\nreplicas = 2\nmax_batch = 4\n'
    res, s = _run(prof, _dep(tmp_path, body), _wl(n=200))
    one, _ = _run(prof, _dep(tmp_path, body.replace("devices = 2\n", ""), "one.toml"), _wl(n=200))
    assert s["completed"] == 200
    assert s["pools"]["llama-tiny"]["hardware"] == "2xatom (tensor)"
    assert res.pools[0].kv_blocks > 1.9 * one.pools[0].kv_blocks  # two chips' DRAM
    assert s["devices"]["llama-tiny/0"]["chips"] == 2
