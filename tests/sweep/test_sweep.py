"""kc sweep: specs, points, the results store, resume after SIGKILL, Ray against serial, Optuna."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcompiler import sweep, targets
from kcompiler.errors import KCError
from kcompiler.sweep import pareto
from kcompiler.sweep.point import system_for
from kcompiler.sweep.runner import run

SMALL = """
[sweep]
name = "small"
target = "atom"
objectives = ["latency", "energy", "area"]

[[models]]
name = "bert-tiny"
seq = 16

[[models]]
name = "llama-tiny"
phase = "decode"
kv = 32

[parameters]
"npu.array.rows" = [32, 64]
"npu.dram.bandwidth" = { start = 128e9, stop = 256e9, factor = 2.0 }
"""

FIGS = ("latency_s", "energy_j", "dram_bytes", "cycles", "macs", "area_mm2", "status")


def _figures(rows):
    return {r["point_id"]: tuple(r[f] for f in FIGS) for r in rows}


def test_spec_expands_ranges_and_names_every_point():
    s = sweep.parse(SMALL, "small.toml")
    assert s.grid_size == 2 * 2 * 2
    assert dict(s.parameters)["npu.dram.bandwidth"] == (128e9, 256e9)
    pts = s.points()
    assert len({p.id for p in pts}) == 8
    assert pts[0].model.name == "bert-tiny"  # models outermost: a worker's cache hits
    # a point's id depends on what it computes, not on its place in the spec
    again = sweep.parse(SMALL.replace('"npu.array.rows" = [32, 64]', '"npu.array.rows" = [64, 32]'), "x.toml")
    assert {p.id for p in again.points()} == {p.id for p in pts}


def test_a_model_may_sweep_its_own_values(tmp_path):
    text = SMALL.replace('kv = 32\n', 'kv = 32\n[models.parameters]\n"npu.array.rows" = [128]\ndevices = [1, 2]\n'
                         'parallel = ["tensor"]\n')
    s = sweep.parse(text, "s.toml")
    assert s.grid_size == 4 + 1 * 2 * 2
    llama = [p for p in s.points() if p.model.name == "llama-tiny"]
    assert {p.param("npu.array.rows") for p in llama} == {128} and {p.param("devices") for p in llama} == {1, 2}
    assert all(p.param("devices") is None for p in s.points() if p.model.name == "bert-tiny")
    assert s.keys == ["npu.array.rows", "npu.dram.bandwidth", "devices", "parallel"]
    assert s.hash != sweep.parse(SMALL, "s.toml").hash
    res = run(s, tmp_path / "r.duckdb", serial=True)
    assert res.failed == 0 and len(res.rows) == 8
    assert {r["devices"] for r in res.rows if r["model"].startswith("llama")} == {1, 2}
    assert all(r["parallel"] is None for r in res.rows if r["model"].startswith("bert"))
    with pytest.raises(KCError, match=r"models\[1\].parameters.npu.nope"):
        sweep.parse(text.replace("devices = [1, 2]", '"npu.nope" = [1]'), "s.toml")


@pytest.mark.parametrize("text,needle", [
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\n[parameters]\n'npu.sram' = [1]", "has no figure 'npu.sram'"),
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\n[parameters]\n'pim.chips' = [1]", "no chip or chip kind 'pim'"),
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\n[parameters]\n'npu.array' = [1]", "is a table"),
    ("[sweep]\ntarget='atom+aim'\n[[models]]\nname='resnet50'\n[parameters]\ndevices = [1, 2]", "single chip"),
    ("[sweep]\ntarget='atom'\nsearch='bayes'\n[[models]]\nname='resnet50'", "not one of"),
    ("[sweep]\ntarget='atom'\nsearch='nsga2'\n[[models]]\nname='resnet50'", "samples"),
    ("[sweep]\ntarget='atom'\nobjectives=['speed']\n[[models]]\nname='resnet50'", "unknown ['speed']"),
    ("[sweep]\ntarget='atom'\ncolour='red'\n[[models]]\nname='resnet50'", "unknown key(s) ['colour']"),
    ("[sweep]\ntarget='atom'\n", "missing [[models]]"),
    ("[[models]]\nname='resnet50'", "missing sweep.target"),
    ("[sweep]\ntarget='nosuchchip'\n[[models]]\nname='resnet50'\n[parameters]\n'npu.cores'=[1]", "unknown target"),
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\n[parameters]\n'npu.cores'={start=1}", "range"),
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\n[parameters]\n'npu.cores'=[]", "no values"),
    ("[sweep]\ntarget='atom'\n[[models]]\nname='resnet50'\nkv=0", "at least 1"),
    ("[sweep\n", "not valid TOML"),
])
def test_bad_specs_name_the_file_and_key(text, needle):
    with pytest.raises(KCError) as exc:
        sweep.parse(text, "bad.toml")
    assert needle in str(exc.value)
    assert "bad.toml" in str(exc.value)


def test_a_point_builds_the_variant_it_names():
    s = sweep.parse(SMALL.replace("target = \"atom\"", "target = \"atom+aim\"").replace(
        '"npu.dram.bandwidth"', '"aim.pim.chips" = [4, 8]\n#'), "s.toml")
    p = s.points()[0]
    system = system_for(p)
    atom, aim = system.device("atom").chip, system.device("aim").chip
    assert atom.spec.array.rows == p.param("npu.array.rows")
    assert aim.spec.chips == p.param("aim.pim.chips")
    assert targets.chip("atom").spec.array.rows == 64  # the built-in chip is untouched
    assert "aim.pim.chips" not in atom.source and "pim.chips=" in aim.source


def test_a_chip_file_target_takes_its_variants(tmp_path):
    builtin = Path(targets.__file__).with_name("atom.toml").read_text()
    (tmp_path / "mine.toml").write_text(builtin.replace('name = "atom"', 'name = "mine"'))
    s = sweep.parse(f"[sweep]\ntarget = '{tmp_path / 'mine.toml'}'\n[[models]]\nname = 'bert-tiny'\n"
                    "[parameters]\n'mine.npu.array.rows' = [16]\ndevices = [2]\n", "s.toml")
    system = system_for(s.points()[0])
    assert [(d.name, d.chip.spec.array.rows) for d in system.accelerators] == [("mine0", 16), ("mine1", 16)]


def test_impossible_points_are_recorded_and_the_sweep_goes_on(tmp_path):
    text = SMALL.replace('"npu.array.rows" = [32, 64]', '"npu.sram_bytes" = [4096, 4194304]')
    spec = sweep.parse(text, "s.toml")
    res = run(spec, tmp_path / "r.duckdb", serial=True)
    assert len(res.rows) == 8 and res.failed == 4
    bad = [r for r in res.rows if r["status"] != "ok"]
    assert all(r["status"] == "failed" and "too small" in r["error"] and r["npu.sram_bytes"] == 4096 for r in bad)
    assert all(r["latency_s"] > 0 and r["area_mm2"] > 0 for r in res.rows if r["status"] == "ok")
    assert all(r not in sum(res.front.values(), []) for r in bad)


def test_ray_gives_the_serial_rows_point_for_point(tmp_path):
    pytest.importorskip("ray")
    spec = sweep.parse(SMALL, "small.toml")
    serial = run(spec, tmp_path / "serial.duckdb", serial=True)
    ray_res = run(spec, tmp_path / "ray.duckdb", workers=2)
    assert ray_res.backend == "ray" and ray_res.workers == 2 and ray_res.evaluated == 8
    assert _figures(serial.rows) == _figures(ray_res.rows)
    assert all(r["status"] == "ok" for r in serial.rows)
    # every row carries the spec's hash and the version; parameters have their own columns
    r = ray_res.rows[0]
    assert r["spec_hash"] == spec.hash and r["kcompiler"] and r["npu.array.rows"] in (32, 64)
    # a re-run evaluates nothing
    again = run(spec, tmp_path / "ray.duckdb", serial=True)
    assert again.evaluated == 0 and again.skipped == 8 and _figures(again.rows) == _figures(serial.rows)


def test_sigkill_half_way_then_resume_gives_every_point_once(tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SMALL.replace('[32, 64]', '[16, 32, 64]'))
    out = tmp_path / "r.duckdb"
    cmd = [sys.executable, "-m", "kcompiler", "sweep", str(spec_file), "--serial", "--out", str(out)]
    env = {**os.environ, "KC_QUIET": "0", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = 0
    deadline = time.monotonic() + 300
    lines = []
    for line in proc.stderr:  # one line per finished point when stderr is not a terminal
        lines.append(line)
        if line.startswith("["):
            seen += 1
        if seen >= 5 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert seen >= 5, "".join(lines)
    spec = sweep.load(spec_file)
    res = subprocess.run([sys.executable, "-m", "kcompiler", "sweep", "--resume", "--out", str(out), "--quiet",
                          "--json", str(tmp_path / "r.json")], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["points"] == spec.grid_size == 12
    assert d["skipped"] >= 5 and d["evaluated"] + d["skipped"] == 12
    import duckdb

    con = duckdb.connect(str(out), read_only=True)
    ids = [r[0] for r in con.execute("SELECT point_id FROM results").fetchall()]
    con.close()
    assert sorted(ids) == sorted(p.id for p in spec.points())  # each exactly once


def test_optuna_nsga2_asks_new_points_and_resumes(tmp_path):
    pytest.importorskip("optuna")
    text = SMALL.replace('name = "small"', 'name = "opt"\nsearch = "nsga2"\nsamples = 5\nseed = 3').replace(
        '"npu.array.rows" = [32, 64]', '"npu.array.rows" = [16, 32, 64, 128]\n"npu.array.cols" = [32, 64, 128]')
    spec = sweep.parse(text, "o.toml")
    res = run(spec, tmp_path / "o.duckdb", serial=True)
    assert 5 <= len(res.rows) <= 10 and res.evaluated == len(res.rows)
    assert set(res.front) == {r["model"] for r in res.rows}
    again = run(spec, tmp_path / "o.duckdb", serial=True)  # same seed: the same asks, all stored
    assert again.evaluated == 0


def test_pareto_front_keeps_only_undominated_rows():
    def row(i, lat, en, area, status="ok"):
        return {"point_id": str(i), "model": "m", "status": status, "latency_s": lat, "energy_j": en,
                "area_mm2": area, "throughput_per_s": 1 / lat}

    rows = [row(0, 1, 5, 10), row(1, 2, 4, 10), row(2, 2, 6, 10), row(3, 1, 5, 10), row(4, 0.5, 9, 1, "failed"),
            row(5, 3, 3, 20)]
    fr = pareto.front(rows, ["latency", "energy", "area"])
    assert sorted(r["point_id"] for r in fr) == ["0", "1", "3", "5"]
    fr = pareto.front(rows, ["throughput", "area"])
    assert sorted(r["point_id"] for r in fr) == ["0", "3"]


def test_cli_prints_the_front_and_writes_json_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from kcompiler.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SMALL)
    r = CliRunner().invoke(cli, ["sweep", "s.toml", "--serial", "--json", "r.json", "--plot", "r.png"])
    assert r.exit_code == 0, r.output
    assert "Pareto front" in r.output and "bert-tiny" in r.output and "rows" in r.output
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema_version"] == 1 and d["points"] == 8 and len(d["rows"]) == 8 and d["out"] == "small.duckdb"
    assert set(d["pareto"]) == {"bert-tiny seq=16", "llama-tiny kv=32 phase=decode"}
    assert (tmp_path / "r.png").stat().st_size > 10_000
    r = CliRunner().invoke(cli, ["sweep", "s.toml", "--serial", "--workers", "2"])
    assert r.exit_code == 1 and "--serial" in r.output
    r = CliRunner().invoke(cli, ["sweep", "--resume"])
    assert r.exit_code == 1 and "--out" in r.output
    r = CliRunner().invoke(cli, ["sweep", "--resume", "--out", "none.duckdb"])
    assert r.exit_code == 1 and "no results store" in r.output
    r = CliRunner().invoke(cli, ["sweep", "s.toml", "--out", "x.parquet", "--serial"])
    assert r.exit_code == 1 and "DuckDB" in r.output


def test_example_specs_parse():
    root = Path(__file__).parents[2] / "examples" / "sweeps"
    specs = {p.name: sweep.load(p) for p in root.glob("*.toml")}
    assert specs["atom-small.toml"].grid_size <= 24
    assert specs["atom-1000.toml"].grid_size == 1000
