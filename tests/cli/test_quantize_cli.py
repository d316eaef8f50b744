"""`kc quantize` and `--dtype int8|fp8|int4 --calibrate DATA` on compile/run/bench: models written that
`kc run` runs, the accuracy gate, and user errors exit 1 with one paragraph and no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from kcompiler.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quantize"))

from test_quantize import cnn, images  # noqa: E402


def kc(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def user_error(result, *names: str) -> str:
    text = result.output
    assert result.exit_code == 1, f"exit {result.exit_code}: {text!r} {result.exception!r}"
    assert "Traceback" not in text and "internal error" not in text and text.startswith("kc: "), text
    flat = " ".join(text.split())
    for name in names:
        assert name in flat, f"message does not name {name!r}: {text}"
    return text


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    onnx.save(cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "cal.npz", x=images(12, 0))
    return tmp_path / "cnn.onnx", tmp_path / "cal.npz"


def test_quantize_report_json_and_run_on_host(files, tmp_path):
    model, cal = files
    out = tmp_path / "cnn.int8.onnx"
    r = kc("quantize", model, "--calibrate", cal, "-o", out, "--report", "--report-json", tmp_path / "rep.json",
           "--max-loss", "50")
    assert r.exit_code == 0, r.output
    assert "per-layer SQNR" in r.output and "accuracy gate passed" in r.output
    doc = json.loads((tmp_path / "rep.json").read_text())
    assert doc["dtype"] == "int8" and doc["sqnr_summary"]["min_db"] > 20.0
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    np.savez(tmp_path / "in.npz", x=images(1, 5)[0])
    r = kc("run", out, "--target", "host", "--inputs", tmp_path / "in.npz", "--check")
    assert r.exit_code == 0 and "match" in r.output, r.output


def test_max_loss_zero_fails_where_an_answer_changes(tmp_path):
    rng = np.random.default_rng(9)
    col = rng.standard_normal((64, 1))
    a = np.hstack([col, col + 0.01 * rng.standard_normal((64, 1))]).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "A"], ["y"])], "close",
                          [helper.make_tensor_value_info("x", 1, [1, 64])],
                          [helper.make_tensor_value_info("y", 1, [1, 2])], [numpy_helper.from_array(a, "A")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((64, 1, 64)).astype(np.float32))
    args = ("quantize", tmp_path / "m.onnx", "--calibrate", tmp_path / "cal.npz", "-o", tmp_path / "q.onnx",
            "--per-tensor", "--max-loss")
    user_error(kc(*args, "0"), "top-1 agreement", "more than --max-loss 0")
    assert kc(*args, "100").exit_code == 0


def test_compile_and_bench_quantise_a_file_first(files, tmp_path):
    model, cal = files
    r = kc("compile", model, "--dtype", "int8", "--calibrate", cal, "-t", "host")
    assert r.exit_code == 0, r.output
    r = kc("bench", model, "--dtype", "int8", "--calibrate", cal, "-t", "host", "-q", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["dtype"] == "int8" and doc["results"][0]["dtype"] == "int8"
    assert any("quantised to int8" in n for n in doc["results"][0].get("notes", []))
    # a timing-only bench of a file without data quantises with synthetic inputs, and says so
    r = kc("bench", model, "--dtype", "int8", "-t", "host", "-q", "--json", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    notes = " ".join(json.loads((tmp_path / "t.json").read_text())["results"][0].get("notes", []))
    assert "synthetic calibration" in notes
    r = kc("bench", model, "-t", "host", "-q", "--json", tmp_path / "f.json")
    assert json.loads((tmp_path / "f.json").read_text())["dtype"] == "fp32"


def test_user_errors_exit_1(files, tmp_path):
    model, cal = files
    np.savez(tmp_path / "bad.npz", y=images(2, 0))
    user_error(kc("quantize", model, "--calibrate", tmp_path / "bad.npz", "-o", tmp_path / "q.onnx"),
               "bad.npz", "['x']")
    user_error(kc("quantize", model, "-o", tmp_path / "q.onnx"), "need calibration data", "--calibrate")
    user_error(kc("quantize", model, "--calibrate", cal, "--dtype", "fp16", "-o", tmp_path / "q.onnx"), "--dtype fp16")
    user_error(kc("run", model, "--dtype", "int8", "--calibrate", tmp_path / "nope.npz"), "nope.npz")
    user_error(kc("compile", model, "--calibrate", cal), "--calibrate")
    user_error(kc("compile", model, "--dtype", "fp16"), "fp32 model")
    user_error(kc("quantize", model, "--dtype", "int4", "-o", tmp_path / "q.onnx"), "no op that int4")
