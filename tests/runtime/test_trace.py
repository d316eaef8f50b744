"""Chrome traces: valid JSON, one track per engine the report lists, spanning exactly the latency."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

import kcompiler


def _tracks(trace: dict) -> tuple[dict, dict]:
    procs = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    busy: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            key = f"{procs[e['pid']]}.{threads[(e['pid'], e['tid'])]}"
            busy[key] += e["dur"] * 1e-6
            count[key] += 1
    return busy, count


@pytest.fixture(scope="module")
def resnet50_atom(tmp_path_factory):
    rep = kcompiler.compile("resnet50", target="atom", mode="timing").simulate()
    path = tmp_path_factory.mktemp("trace") / "resnet50-atom.json"
    path.write_text(json.dumps(rep.chrome_trace()))
    with open(path) as f:
        trace = json.load(f)  # what Perfetto / chrome://tracing get
    return rep, trace


def test_trace_is_trace_event_json(resnet50_atom):
    rep, trace = resnet50_atom
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert e["dur"] >= 0 and e["ts"] >= 0 and isinstance(e["name"], str)
    assert trace["otherData"]["latency_s"] == rep.latency_s


def test_trace_covers_every_engine_with_its_busy_time(resnet50_atom):
    rep, trace = resnet50_atom
    busy, count = _tracks(trace)
    engines = {e for e, s in rep.engine_busy_s.items() if s > 0}
    # eight cores x (dma_in, matrix, vector, dma_out) and the DRAM channel
    assert len(engines) == 33 and "atom.dram" in engines and "atom.core7.matrix" in engines
    for engine in engines:
        assert count[engine] > 0, f"no event on {engine}"
        assert busy[engine] == pytest.approx(rep.engine_busy_s[engine], rel=1e-9), engine
    assert count["atom.ops"] == len(rep.ops)
    # the input's and the output's trips over PCIe
    assert count["links.host->atom"] >= 1 and count["links.atom->host"] >= 1


def test_trace_span_equals_latency(resnet50_atom):
    rep, trace = resnet50_atom
    ev = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    start = min(e["ts"] for e in ev)
    end = max(e["ts"] + e["dur"] for e in ev)
    assert start == 0.0
    assert (end - start) * 1e-6 == pytest.approx(rep.latency_s, rel=1e-12, abs=1e-15)


def test_host_ops_are_on_the_cpu_track():
    rep = kcompiler.compile("squeezenet", target="host", mode="timing").simulate()
    busy, count = _tracks(rep.chrome_trace())
    assert count["host.cpu"] == len(rep.ops)
    assert busy["host.cpu"] == pytest.approx(rep.engine_busy_s["host.cpu"], rel=1e-9)


def test_bench_writes_the_trace(tmp_path):
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "kcompiler", "bench", "squeezenet", "--target", "npu", "--quiet",
                        "--trace", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trace = json.loads(out.read_text())
    assert trace["otherData"]["target"] == "npu"
    busy, _ = _tracks(trace)
    assert "warboy.dram" in busy  # npu is an alias of warboy
