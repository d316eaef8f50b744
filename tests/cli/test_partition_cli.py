"""`--partition INDEX/COUNT` on kc compile, run and bench; the target name `warboy[1/2]`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kcompiler.cli import cli


def kc(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_compile_and_run_a_partition(tmp_path):
    art = tmp_path / "m.kcm"
    out = kc("compile", "llama-tiny", "--layers", "1", "-t", "warboy", "--partition", "1/2", "-o", str(art))
    assert "warboy[1/2]" in out and "wrote" in out
    out = kc("run", str(art), "--check")
    assert "on warboy[1/2]" in out and "match" in out
    out = kc("run", str(art), "--partition", "0/2", code=1)  # an artifact's partition is fixed
    assert "--partition" in out and "compiled artifact" in out


def test_bench_says_the_partition(tmp_path):
    path = tmp_path / "b.json"
    kc("bench", "llama-tiny", "--layers", "1", "-t", "warboy", "-t", "warboy[1/2@1]", "--partition", "1/2",
       "--json", str(path), "-q", code=1)  # both ways at once is refused
    kc("bench", "llama-tiny", "--layers", "1", "-t", "atom", "--partition", "1/4", "--json", str(path), "-q")
    (r,) = json.loads(path.read_text())["results"]
    assert r["target"] == "atom[1/4]" and r["partition"]["cores"] == 2 and r["partition"]["count"] == 4
    kc("bench", "llama-tiny", "--layers", "1", "-t", "warboy", "-t", "warboy[1/2]", "--json", str(path), "-q")
    whole, part = json.loads(path.read_text())["results"]
    assert whole["partition"] == {} and part["partition"]["label"] == "warboy[1/2]"
    assert part["latency_s"] > whole["latency_s"] and part["area_mm2"] < whole["area_mm2"]


def test_impossible_partition_is_a_user_error():
    out = kc("compile", "llama-tiny", "--layers", "1", "-t", "warboy", "--partition", "0/3", code=1)
    assert "0/3 of 'warboy'" in out and "Traceback" not in out
    out = kc("compile", "llama-tiny", "--layers", "1", "-t", "aim", "--partition", "0/2", code=1)
    assert "no cores to partition" in out
