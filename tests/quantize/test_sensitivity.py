"""Accuracy-aware quantisation: keep_float (named GEMMs left float), the sensitivity analysis that ranks
GEMMs by what their float version gains at the output, and fallback=N that keeps the N worst float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from kcompiler.errors import KCError
from kcompiler.quantize import quant_info, quantize
from kcompiler.quantize.quantizer import prepared
from kcompiler.quantize.sensitivity import keep_float, layer_sensitivity, output_sqnr, quantised_gemms


def chain(seed: int = 0) -> onnx.ModelProto:
    """MatMul "m1" -> Mul(per-column gains) -> MatMul "m2" -> MatMul "m3", random weights. The per-column
    gains make m1's output span ranges 1000x apart, and m2 multiplies the narrow columns back up: m2's
    per-tensor input quantisation turns them into amplified noise (m2 is the layer to keep float)."""
    rng = np.random.default_rng(seed)
    gains = np.where(np.arange(32) % 4 == 0, 1.0, 1e-3).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.3).astype(np.float32), "A"),
             numpy_helper.from_array(gains, "S"),
             numpy_helper.from_array((rng.standard_normal((32, 24)) * 0.3 / np.maximum(gains, 1e-3)[:, None]
                                      * np.where(gains < 1, 1.0, 0.02)[:, None]).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((24, 10)) * 0.3).astype(np.float32), "C")]
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h1"], name="m1"), helper.make_node("Mul", ["h1", "S"], ["s1"]),
             helper.make_node("MatMul", ["s1", "B"], ["h2"], name="m2"), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "C"], ["y"], name="m3")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", 1, [4, 16])],
                          [helper.make_tensor_value_info("y", 1, [4, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)]


def run(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [[np.asarray(v, np.float64) for v in s.run(None, f)] for f in feeds]


def gemm_names(q: onnx.ModelProto) -> set[str]:
    return {n.name for n in quantised_gemms(q)}


def test_keep_float_leaves_the_named_gemm_float_and_says_so():
    q = quantize(chain(), samples(16, 0), keep_float=["h2"])  # by output name; node names work too
    assert gemm_names(q) == {"m1", "m3"}
    m2 = next(n for n in q.graph.node if n.name == "m2")
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers.get(v) != "DequantizeLinear" for v in m2.input)
    assert any("kept float" in note and "m2" in note for note in quant_info(q)["notes"])


def test_keep_float_unknown_or_not_a_gemm_is_a_kcerror():
    with pytest.raises(KCError, match="nosuch"):
        quantize(chain(), samples(4, 0), keep_float=["nosuch"])
    with pytest.raises(KCError, match="a Mul, not a quantised GEMM"):
        quantize(chain(), samples(4, 0), keep_float=["s1"])
    with pytest.raises(KCError, match="negative"):
        quantize(chain(), samples(4, 0), fallback=-1)


#: the bypass surgery is the float model only where ORT removed no Relu into a zero point: GEMMs alone
GEMMS = ("Conv", "MatMul", "Gemm")


def test_bypassing_every_gemm_gives_the_float_model_and_one_gemm_only_its_share():
    f = prepared(chain())
    q = quantize(f, samples(16, 0), op_types=GEMMS)
    feeds = samples(6, 3)
    ref = run(f, feeds)
    everything = keep_float(q, f, gemm_names(q))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in everything.graph.node)
    assert output_sqnr(ref, run(everything, feeds)) > 100.0
    base = output_sqnr(ref, run(q, feeds))
    assert base < 40.0  # (the chain is built to lose accuracy at m2)
    assert output_sqnr(ref, run(keep_float(q, f, ["m2"]), feeds)) > base + 6.0


def test_sensitivity_ranks_the_amplifying_gemm_first_and_fallback_keeps_it_float():
    f = prepared(chain())
    q = quantize(f, samples(16, 0), op_types=GEMMS)
    base, sens = layer_sensitivity(f, q, samples(6, 3))
    assert [s.node for s in sens][0] == "m2" and sens[0].gain_db > 6.0
    assert sens[0].sqnr_db == pytest.approx(base + sens[0].gain_db)
    q1 = quantize(chain(), samples(16, 0), fallback=1)
    assert gemm_names(q1) == {"m1", "m3"}
    assert any(note.startswith("fallback:") and "m2" in note for note in quant_info(q1)["notes"])
    feeds = samples(6, 5)
    ref = run(chain(), feeds)
    assert output_sqnr(ref, run(q1, feeds)) > output_sqnr(ref, run(q, feeds)) + 6.0


def test_kc_quantize_keep_float_and_fallback_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from kcompiler.cli import cli

    onnx.save(chain(), tmp_path / "chain.onnx")
    np.savez(tmp_path / "cal.npz", x=np.stack([s["x"] for s in samples(12, 0)]))
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "chain.onnx"), "--calibrate", str(tmp_path / "cal.npz"),
                                   "-o", str(tmp_path / "q.onnx"), "--keep-float", "m3", "--fallback", "1"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "fallback:" in flat and "kept float (2 GEMMs" in flat, flat
    assert gemm_names(onnx.load(str(tmp_path / "q.onnx"))) == {"m1"}
