"""kcompiler.quantize: calibration sets, quantize() for each dtype and method, the accuracy report and its gate,
and every bad input a KCError naming it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from kcompiler.errors import InputError, KCError
from kcompiler.quantize import CalibrationSet, accuracy_report, model_dtype, quant_info, quantize


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv(pads 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, random weights."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.5).astype(np.float32), "G")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", 1, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", 1, [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def mlp(seed: int = 1) -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul with random weights (K = 64: two 4-bit blocks)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 96)) * 0.2).astype(np.float32), "A"),
             numpy_helper.from_array((rng.standard_normal((96, 8)) * 0.2).astype(np.float32), "C")]
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "C"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, ["batch", 64])],
                          [helper.make_tensor_value_info("y", 1, ["batch", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 3, 12, 12)).astype(np.float32)


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, 64)).astype(np.float32)


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_int8_cnn_each_method_agrees_with_float(tmp_path, method):
    np.savez(tmp_path / "cal.npz", x=images(16, 0))
    q = quantize(cnn(), tmp_path / "cal.npz", method=method, output=tmp_path / "q.onnx")
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert model_dtype(q) == "int8" and quant_info(q)["method"] == method and quant_info(q)["samples"] == 16
    weights = {t.name: t for t in q.graph.initializer}
    assert weights["W_quantized"].data_type == onnx.TensorProto.INT8  # symmetric int8 weights, per channel
    assert numpy_helper.to_array(weights["W_scale"]).shape == (16,)
    assert onnx.load(str(tmp_path / "q.onnx")).ir_version == 10
    hold = images(24, 7)
    f = np.stack([run(cnn(), x) for x in hold])
    g = np.stack([run(q, x) for x in hold])
    assert (f.argmax(-1) == g.argmax(-1)).mean() >= 0.95
    rep = accuracy_report(cnn(), q, tmp_path / "cal.npz", holdout=[{"x": x} for x in hold])
    summary = rep.sqnr_summary()
    assert summary["layers"] >= 2 and 20.0 < summary["min_db"] < 90.0, summary
    assert rep.gate_set.label == "holdout" and rep.gate_set.samples == 24
    assert rep.to_dict()["top1_agreement"] == pytest.approx((f.argmax(-1) == g.argmax(-1)).mean())


def test_int8_mlp_per_tensor_and_folder_calibration(tmp_path):
    folder = tmp_path / "cal"
    folder.mkdir()
    for i, x in enumerate(rows(6, 2)):
        np.savez(folder / f"{i}.npz", x=x)
    q = quantize(mlp(), folder, per_channel=False)
    assert quant_info(q)["samples"] == 6
    assert numpy_helper.to_array({t.name: t for t in q.graph.initializer}["A_scale"]).shape == ()
    rep = accuracy_report(mlp(), q, folder)
    assert all(lay.sqnr_db > 20.0 for lay in rep.layers) and "MatMul" in {lay.op_type for lay in rep.layers}


def test_fp8_keeps_the_relu_and_tracks_float():
    cal = [{"x": x} for x in images(8, 3)]
    q = quantize(cnn(), cal, dtype="fp8")
    assert model_dtype(q) == "fp8" and "Relu" in {n.op_type for n in q.graph.node}
    assert any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in q.graph.initializer)
    rep = accuracy_report(cnn(), q, cal)
    assert rep.sqnr_summary()["min_db"] > 10.0  # (ORT's extended level, dropping the Relu, gives ~0 dB)


def test_int4_matmulnbits_needs_no_calibration_and_says_so():
    q = quantize(mlp(), [{"x": rows(1, 4)[0]}], dtype="int4")
    assert [n.op_type for n in q.graph.node if n.domain == "com.microsoft"] == ["MatMulNBits"] * 2
    assert model_dtype(q) == "int4" and "needs no calibration" in " ".join(quant_info(q)["notes"])
    x = rows(1, 5)[0]
    f, g = run(mlp(), x), run(q, x)
    assert 10 * np.log10((f ** 2).sum() / ((f - g) ** 2).sum()) > 12.0


def test_gate_fails_where_int8_changes_an_answer_and_passes_loosely():
    # two classes whose weights differ by 1%: the margins are below int8's step, so some answers flip
    rng = np.random.default_rng(9)
    col = rng.standard_normal((64, 1))
    a = numpy_helper.from_array(np.hstack([col, col + 0.01 * rng.standard_normal((64, 1))]).astype(np.float32), "A")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "A"], ["y"])], "close",
                          [helper.make_tensor_value_info("x", 1, [1, 64])], [helper.make_tensor_value_info("y", 1, [1, 2])], [a])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    data = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(64)]
    rep = accuracy_report(m, quantize(m, data, per_channel=False), data)
    assert rep.gate_set.top1 < 1.0
    with pytest.raises(KCError, match="top-1 agreement .* more than --max-loss 0"):
        rep.check(0.0)
    rep.check(100.0)


def test_bundled_style_model_with_initializers_as_inputs(tmp_path):
    m = cnn()
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in m.graph.initializer)
    m.ir_version = 3
    q = quantize(m, [{"x": x} for x in images(4, 1)])
    assert [i.name for i in q.graph.input] == ["x"]


def test_synthetic_sets_are_realistic_and_seeded():
    cs = CalibrationSet.generate(cnn(), 3, seed=5)
    assert len(cs) == 3 and cs.synthetic
    x = cs.samples[0]["x"]
    assert x.shape == (1, 3, 12, 12) and -2.2 < x.min() < x.max() < 2.7  # ImageNet-normalised [0, 1] images
    assert np.array_equal(x, CalibrationSet.generate(cnn(), 3, seed=5).samples[0]["x"])
    g = helper.make_graph([helper.make_node("Gather", ["E", "input_ids"], ["y"])], "emb",
                          [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, 8]),
                           helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, [1, 8])],
                          [helper.make_tensor_value_info("y", 1, None)],
                          [numpy_helper.from_array(np.zeros((50, 4), np.float32), "E")])
    s = CalibrationSet.generate(helper.make_model(g), 4).samples
    ids = np.stack([d["input_ids"] for d in s])
    assert ids.dtype == np.int64 and ids.max() < 50 and len(np.unique(ids)) > 5
    assert (s[0]["attention_mask"] == 1).all()


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, match", [
    ([{"y": np.zeros((1, 3, 12, 12), np.float32)}], r"do not match the model's inputs \['x'\]"),
    ([{"x": np.zeros((1, 3, 10, 12), np.float32)}], "input 'x' has shape .*dim 2 differs"),
    ([{"x": np.zeros((3, 12, 12), np.float32)}], "input 'x' has rank 3"),
    ([{"x": np.zeros((1, 3, 12, 12), np.float64)}], "input 'x' is float64, the model wants float32"),
    ([], "the calibration set is empty"),
    ("/nonexistent/cal.npz", "no such calibration file"),
])
def test_bad_calibration_is_an_input_error(data, match):
    with pytest.raises(InputError, match=match):
        quantize(cnn(), data)


def test_bad_files_and_options(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .npz"):
        quantize(cnn(), tmp_path / "empty")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not an .npz"):
        quantize(cnn(), tmp_path / "junk.npz")
    with pytest.raises(KCError, match="method 'sqnr'"):
        quantize(cnn(), [], method="sqnr")
    with pytest.raises(KCError, match="dtype 'int2'"):
        quantize(cnn(), [], dtype="int2")
    with pytest.raises(KCError, match="need calibration data"):
        quantize(cnn(), None)


def test_a_model_with_no_quantisable_op_is_refused():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [helper.make_tensor_value_info("x", 1, [4])],
                          [helper.make_tensor_value_info("y", 1, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(KCError, match="model 'relu' has no op"):
        quantize(m, [{"x": np.ones(4, np.float32)}])
    with pytest.raises(KCError, match="no op that int4"):
        quantize(cnn(), None, dtype="int4")
