"""The `kc` command line on valid inputs: compile, run --check, inspect, targets, zoo, bench --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from kcompiler.cli import cli
from kcompiler.zoo import BUNDLED


def kc(*args: str):
    """A command's stdout (progress lines go to stderr)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def tiny(tmp_path) -> Path:
    """y = relu(x @ w) with a symbolic batch dim."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
         helper.make_node("Relu", ["xw"], ["y"], name="relu")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.tobytes(), raw=True)])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_compile(tiny):
    out = kc("compile", str(tiny), "--shape", "x=2x4")
    assert "tiny" in out and "host" in out and "compiled in" in out


def test_compile_print_after_and_disable_pass(tiny):
    out = kc("compile", str(tiny), "--shape", "x=2x4", "--print-after", "dce", "--disable-pass", "cse")
    assert "// after dce" in out
    assert "MatMul" in out and "Relu" in out and "float[2,4] x" in out


def test_run_inputs_outputs_check(tiny, tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = kc("run", str(tiny), "--shape", "x=5x4", "--inputs", str(tmp_path / "in.npz"),
             "--outputs", str(tmp_path / "out.npz"), "--check")
    assert "match" in out and "MISMATCH" not in out
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        got = data["y"]
    # the host target runs ONNX Runtime, so the reference is numpy: y = relu(x @ w)
    w = numpy_helper.to_array(onnx.load(tiny).graph.initializer[0])
    np.testing.assert_allclose(got, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)


def test_inspect(tiny):
    out = kc("inspect", str(tiny), "--shape", "x=2x4")
    assert "MatMul" in out and "Relu" in out
    assert "input  x: (2, 4)" in out and "output y: (2, 3)" in out
    assert "parameters: 12" in out


def test_targets():
    out = kc("targets")
    assert "host" in out


def test_targets_show():
    out = kc("targets", "show", "host")
    data = json.loads(out)
    assert data["name"] == "host" and "peak_flops" in data["host"]
    # the modelled die area and its breakdown (kcompiler/targets/area.py)
    rngd = json.loads(kc("targets", "show", "rngd"))["area"]
    assert rngd["total_mm2"] == pytest.approx(sum(rngd["breakdown_mm2"].values()), abs=0.1)
    assert {"mac_array", "sram_core", "vector", "control"} <= set(rngd["breakdown_mm2"])


@pytest.mark.parametrize("name,chips", [("atom+aim", {"atom", "aim"}), ("4xatom", {"atom"})])
def test_targets_show_a_system(name, chips):
    """A system `kc targets` offers can be shown: its devices, the links between them, its chips."""
    data = json.loads(kc("targets", "show", name))
    assert data["system"] == name and set(data["chips"]) == chips
    assert {d["chip"] for d in data["devices"]} == chips | {"host"}
    assert data["links"] and all(x["bandwidth_GBps"] > 0 for x in data["links"])
    assert set(data["area"]["breakdown_mm2"]) == {d["name"] for d in data["devices"]} - {"host"}


def test_target_help_names_every_chip_and_says_it_repeats():
    from kcompiler.cli.options import TARGET_HELP
    from kcompiler.targets import list_targets

    assert all(c.name in TARGET_HELP for c in list_targets())
    out = kc("bench", "--help")
    assert "Repeat it" in " ".join(out.split()) and "atom+aim" in out


@pytest.mark.parametrize("args,note", [
    (["--target", "atom", "--devices", "2"], "atom1 of 2xatom run nothing"),
    (["--target", "4xatom"], "atom1, atom2, atom3 of 4xatom run nothing"),
    (["--target", "atom", "--parallel", "tensor"], "--parallel tensor on one chip splits nothing")])
def test_idle_chips_and_a_split_over_one_chip_are_said(args, note):
    out = " ".join(kc("bench", "bert-tiny", *args).split())
    assert note in out


def test_an_artifact_refuses_compile_options_and_random_inputs_are_said(tmp_path):
    path = str(tmp_path / "t.kcm")
    kc("compile", "bert-tiny", "--target", "atom", "-o", path)
    assert "inputs: random (seed 0)" in kc("run", path)
    for args in (["--target", "warboy"], ["--seq", "8"], ["--disable-pass", "cse"], ["--devices", "2"]):
        r = CliRunner().invoke(cli, ["run", path, *args])
        assert r.exit_code == 1 and "compiled artifact" in r.output and args[0] in r.output, r.output
    r = CliRunner().invoke(cli, ["inspect", path, "--target", "atom"])
    assert r.exit_code == 1 and "compiled artifact" in r.output


def test_progress_says_each_stage_on_stderr_when_piped():
    r = CliRunner().invoke(cli, ["bench", "bert-tiny", "--target", "atom+aim"])
    assert r.exit_code == 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("kc: ")]
    for stage in ("load", "passes", "place", "lower", "simulating"):
        assert any(stage in x for x in lines), (stage, lines)
    assert len(lines) < 12  # a line per stage, not per partition
    assert "kc: " not in r.stdout
    quiet = CliRunner().invoke(cli, ["bench", "bert-tiny", "--target", "atom", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_figures_agree_between_zoo_and_inspect(tmp_path):
    """Parameters, FLOPs and nodes of the model as loaded: the same in `kc zoo`, `kc inspect MODEL`
    and `kc inspect MODEL.kcm` (one function counts them: opinfo.model_stats)."""
    from kcompiler.zoo import entries
    from kcompiler.zoo.stats import entry_stats, human

    st = entry_stats(entries()["bert-tiny"])
    (row,) = [x for x in kc("zoo").splitlines() if x.startswith("│ bert-tiny ")]
    cells = [c.strip() for c in row.split("│")[3:5]]
    assert cells == [human(st["params"]), f"{human(st['flops_per_unit'])}/inference"]
    want = f"{st['nodes']:,} nodes; parameters: {st['params']:,}; FLOPs: {st['flops']:,}; MACs: {st['macs']:,}"
    assert want in " ".join(kc("inspect", "bert-tiny", "--target", "atom").split())
    path = str(tmp_path / "b.kcm")
    kc("compile", "bert-tiny", "--target", "atom", "-o", path)
    out = " ".join(kc("inspect", path).split())
    assert want in out and f"({st['nodes']} as loaded)" in out


def test_zoo_lists_the_bundled_models():
    out = kc("zoo")
    for name in BUNDLED:
        assert name in out


def test_passes_lists_cleanup():
    out = kc("passes")
    for name in ("fold-constants", "remove-identity", "dce", "cse", "toposort", "pipeline cleanup"):
        assert name in out


def test_passes_lists_every_step_of_the_compile_pipeline():
    out = kc("passes")
    assert "pipeline default: optimize -> parallelise -> placement -> partition -> lower" in out
    flat = " ".join(out.split())  # (rich wraps long lines)
    for step in ("parallelise", "placement", "partition", "lower"):
        assert re.search(rf"(^| ){step} [^:]{{0,160}}\(required: --disable-pass refuses it\)", flat), step


BENCH_KEYS = {"model", "target", "mode", "compile_s", "latency_s", "throughput_per_s", "cycles", "energy_j",
              "dram_bytes", "macs", "devices", "host_nodes", "ops"}
OP_KEYS = {"name", "op_type", "device", "start_s", "end_s", "cycles", "macs", "dram_bytes", "bound"}


@pytest.mark.parametrize("mode", ["timing", "functional"])
def test_bench_json_has_the_design_keys(tmp_path, mode):
    path = tmp_path / "bench.json"
    kc("bench", "squeezenet", "--target", "host", "--mode", mode, "--json", str(path))
    data = json.loads(path.read_text())
    assert len(data["results"]) == 1
    r = data["results"][0]
    assert BENCH_KEYS <= set(r), BENCH_KEYS - set(r)
    assert r["model"] == "squeezenet" and r["target"] == "host" and r["mode"] == mode
    assert r["latency_s"] > 0 and r["throughput_per_s"] == pytest.approx(1 / r["latency_s"])
    assert r["compile_s"] > 0 and r["macs"] > 0 and r["energy_j"] > 0 and r["dram_bytes"] > 0
    assert isinstance(r["cycles"], int) and isinstance(r["host_nodes"], int)
    for dev, info in r["devices"].items():
        assert {"nodes", "macs", "busy_s"} <= set(info), dev
    assert "host" in r["devices"]
    assert sum(d["macs"] for d in r["devices"].values()) == r["macs"]
    assert r["ops"]
    for op in r["ops"]:
        assert OP_KEYS <= set(op), OP_KEYS - set(op)
        assert op["end_s"] >= op["start_s"] >= 0
    assert max(op["end_s"] for op in r["ops"]) == pytest.approx(r["latency_s"], rel=1e-6)
    assert sum(op["macs"] for op in r["ops"]) == r["macs"]


def test_bench_trace(tmp_path):
    path = tmp_path / "trace.json"
    kc("bench", "squeezenet", "--trace", str(path))
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e["ph"] == "X" for e in events)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_matches_onnxruntime(name, random_cnn):
    """`kc run --check` on each bundled CNN, with random weights (the bundled constant fills
    give every class the same score whatever the input, so they would hide a wrong rewrite)."""
    out = kc("run", random_cnn(name), "--target", "host", "--check", "--rtol", "1e-3", "--atol", "1e-4")
    assert "match" in out and "MISMATCH" not in out


def test_python_dash_m_entry_point():
    run = subprocess.run([sys.executable, "-m", "kcompiler", "zoo"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "squeezenet" in run.stdout


def test_check_uses_a_16_bit_tolerance_where_values_are_16_bit():
    """On atom+aim the decode GEMVs run on AiM's BF16 multipliers: --check judges them at bf16's
    precision (and still catches a real mismatch), while an fp32 NPU run keeps 1e-3 / 1e-4."""
    from kcompiler.cli import cli

    r = CliRunner().invoke(cli, ["run", "llama-tiny", "--phase", "decode", "--kv", "16", "--target", "atom+aim",
                                 "--check"])
    assert r.exit_code == 0, r.output
    assert "reduced precision (aim multiplies in bfloat16)" in r.output and "match" in r.output
    strict = CliRunner().invoke(cli, ["run", "llama-tiny", "--phase", "decode", "--kv", "16", "--target",
                                      "atom+aim", "--check", "--rtol", "1e-6", "--atol", "1e-9"])
    assert strict.exit_code == 1 and "MISMATCH" in strict.output
    fp32 = CliRunner().invoke(cli, ["run", "llama-tiny", "--phase", "decode", "--kv", "16", "--target", "atom",
                                    "--check"])
    assert fp32.exit_code == 0 and "reduced precision" not in fp32.output and "rtol 0.001" in fp32.output


def test_run_check_with_random_weights(tmp_path, monkeypatch):
    """--weights random: the bundled CNN with seeded random weights, made once into KC_CACHE_DIR."""
    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path))
    out = kc("run", "squeezenet", "--weights", "random", "--target", "npu", "--check")
    assert "match" in out and "MISMATCH" not in out
    (made,) = list(tmp_path.iterdir())
    stamp = (made / "model.onnx").stat().st_mtime_ns
    kc("run", "squeezenet", "--weights", "random", "--target", "host")
    assert list(tmp_path.iterdir()) == [made] and (made / "model.onnx").stat().st_mtime_ns == stamp


def test_check_mismatch_on_constant_weights_says_to_use_random_ones(monkeypatch):
    """A bundled CNN's constant-fill outputs turn on rounding: a mismatch there points at
    --weights random instead of at the compiler alone."""
    import kcompiler.check as check

    real = check.compare_with_ort

    def failing(*args, **kwargs):
        worst = real(*args, **kwargs)
        worst.ok = False
        return worst

    monkeypatch.setattr(check, "compare_with_ort", failing)
    result = CliRunner().invoke(cli, ["run", "squeezenet", "--target", "host", "--check"])
    assert result.exit_code == 1
    assert "--weights random" in result.output and "constant-fill" in result.output
    result = CliRunner().invoke(cli, ["run", "bert-tiny", "--target", "host", "--check"])
    assert result.exit_code == 1 and "--weights random" not in result.output


def test_the_comparison_fits_80_columns_when_piped():
    """Piped (CliRunner is not a terminal: 80 columns), three targets' comparison is readable:
    no line over 80 columns and nothing cut short with an ellipsis."""
    out = kc("bench", "resnet50", "--target", "warboy", "--target", "atom", "--target", "atom+aim")
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    # (float32 resnet50: its GEMMs emulated in int8 / fp16 passes keep the matrix units busiest)
    for figure in ("latency (ms)", "area (mm²)", "busiest engines", "atom+aim", "core0.matrix", "atom.core",
                   "MACs by dtype", "fp32 as 10 int8"):
        assert figure in out, figure
    wide = kc("bench", "resnet50", "--target", "warboy", "--target", "atom", "--wide")
    assert "…" not in wide and max(len(line) for line in wide.splitlines()) > 80


def test_bench_csv_and_json_formats():
    import csv
    import io

    rows = list(csv.reader(io.StringIO(kc("bench", "bert-tiny", "--target", "atom", "--target", "warboy",
                                          "--format", "csv"))))
    assert rows[0][:2] == ["target", "latency (ms)"] and [r[0] for r in rows[1:]] == ["atom", "warboy"]
    doc = json.loads(kc("bench", "bert-tiny", "--target", "atom", "--format", "json"))
    assert doc["schema_version"] == 1 and doc["results"][0]["target"] == "atom"


def test_every_bench_json_key_is_documented():
    """docs/json.md names every key of the document and of a result (a new key needs its line)."""
    text = (Path(__file__).parents[2] / "docs" / "json.md").read_text()
    doc = json.loads(kc("bench", "bert-tiny", "--target", "atom+aim", "--format", "json", "--compare", "ort"))
    keys = set(doc) | set(doc["host"]) | set(doc["results"][0]) | set(doc["peers"][0]) \
        | set(doc["results"][0]["ops"][0]) | set(doc["results"][0]["transfers"][0])
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, missing


def test_small_energies_and_shares_are_not_shown_as_zero():
    from kcompiler.runtime.report import _mj, _pct

    assert _mj(1.2e-8) != "0.000" and float(_mj(1.2e-8)) == pytest.approx(1.2e-5)
    assert _pct(0.001) == "<1%" and _pct(0.0) == "0%" and _pct(0.5) == "50%"


def test_compare_says_threads_runs_and_compares_every_target():
    r = CliRunner().invoke(cli, ["bench", "bert-tiny", "--target", "atom", "--target", "warboy", "--compare", "ort",
                                 "--threads", "1", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (peer,) = doc["peers"]
    assert peer["threads"] == 1 and doc["host"]["threads"] == 1 and peer["runs"] >= 3
    assert "loadavg_1min" in peer
    out = kc("bench", "bert-tiny", "--target", "atom", "--target", "warboy", "--compare", "ort", "--threads", "1")
    flat = " ".join(out.split())
    # (the peer's header may wrap inside its column: "... runs, 1" / "thread)")
    assert "vs ort" in flat and "runs, 1" in flat and "thread)" in flat
    assert "KC_THREADS" not in os.environ or os.environ["KC_THREADS"] != "1"  # restored after the command


def test_host_fallback_is_reported_and_check_warns_when_the_chip_did_little(tiny):
    r = CliRunner().invoke(cli, ["run", str(tiny), "--shape", "x=2x4", "--target", "npu", "--place", "*=host",
                                 "--check"])
    assert r.exit_code == 0, r.output
    assert "host fallback: 1 of 1 nodes (100.0% of the FLOPs)" in " ".join(r.stdout.split())
    assert "this check says little about the chip" in " ".join(r.stderr.split())
    r = CliRunner().invoke(cli, ["run", str(tiny), "--shape", "x=2x4", "--target", "npu", "--check"])
    assert "host fallback" not in r.stdout and "says little" not in r.stderr


def test_print_after_placement_lists_each_node_with_its_device_and_reason():
    out = kc("compile", "bert-tiny", "--target", "atom+aim", "--print-after", "placement")
    text = out.split("// after placement", 1)[1]
    lines = [x for x in text.splitlines() if x.startswith(("atom ", "aim ", "host "))]
    assert len(lines) > 10 and any(x.startswith("aim ") for x in lines) and "latency-optimal" in text
