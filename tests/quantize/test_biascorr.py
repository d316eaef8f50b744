"""bias_correct(): the per-channel mean error of each corrected GEMM's output against the float model drops
(small random Conv -> Relu -> Conv -> MatMul + bias models, calibrated on few samples), the model stays an
int32-bias QDQ model, and what it cannot correct is refused with a KCError naming the model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kcompiler.errors import KCError
from kcompiler.quantize import quantize
from kcompiler.quantize.biascorr import bias_correct, targets


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _model(seed: int = 0) -> onnx.ModelProto:
    """x[1,4,10,10] -> Conv(16, 3x3) -> Relu -> Conv(16, 3x3) -> Relu -> GlobalAveragePool -> Flatten
    -> Gemm(6, transB, bias) -> y: channels of unequal ranges, so a per-tensor scale rounds the small ones
    coarsely and their means shift."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(1, 30, 16)
    inits = [_init("w1", rng.normal(size=(16, 4, 3, 3)) * spread[:, None, None, None]),
             _init("b1", rng.normal(size=16)), _init("w2", rng.normal(size=(16, 16, 3, 3)) * 0.3),
             _init("b2", rng.normal(size=16)), _init("wm", rng.normal(size=(6, 16))),
             _init("bm", rng.normal(size=6))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), n("Relu", ["c2"], ["r2"]),
             n("GlobalAveragePool", ["r2"], ["gp"]), n("Flatten", ["gp"], ["fl"]),
             n("Gemm", ["fl", "wm", "bm"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "bc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


def _linear(seed: int = 0) -> onnx.ModelProto:
    """x[1,12,8] -> MatMul(8x16) -> Add(bias) -> Relu -> MatMul(16x6) -> Add(bias) -> y: a transformer's Linear
    layers on 3-D tensors, whose bias Add ONNX Runtime leaves float after the quantised MatMul."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(size=(8, 16)) * np.geomspace(1, 20, 16)), _init("b1", rng.normal(size=16)),
             _init("w2", rng.normal(size=(16, 6)) * 0.3), _init("b2", rng.normal(size=(1, 1, 6)))]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["m1"]), n("Add", ["m1", "b1"], ["a1"]), n("Relu", ["a1"], ["r1"]),
             n("MatMul", ["r1", "w2"], ["m2"]), n("Add", ["m2", "b2"], ["y"])]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


def _samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.normal(size=(1, 4, 10, 10)) + 0.5).astype(np.float32)} for _ in range(n)]


def _outputs(m: onnx.ModelProto, samples: list[dict], names: list[str]) -> list[np.ndarray]:
    """Each of `names`, stacked over the samples (ORT at the basic level: the QDQ model's own function)."""
    c = onnx.ModelProto()
    c.CopyFrom(m)
    c.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(c.SerializeToString(), so, providers=["CPUExecutionProvider"])
    runs = [s.run(names, d) for d in samples]
    return [np.concatenate([r[i] for r in runs]) for i in range(len(names))]


def _channel_error(float_model, q, samples, qname: str, fname: str, axis: int) -> float:
    """The mean over channels of |mean over samples and positions of (quantised - float)|."""
    got, = _outputs(q, samples, [qname])
    want, = _outputs(float_model, samples, [fname])
    d = np.moveaxis(got.astype(np.float64) - want, axis, -1)
    return float(np.abs(d.reshape(-1, d.shape[-1]).mean(axis=0)).mean())


def test_bias_correction_lowers_the_per_channel_mean_error_of_every_corrected_gemm():
    f = _model()
    cal = _samples(6, seed=1)
    q = quantize(f, cal, float_head=False)  # (every GEMM requantised: each one corrected)
    qc = quantize(f, cal, bias_correction=True, float_head=False)
    found, skipped = targets(q, f)
    assert [t.node for t in found] == [n.name for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert not skipped
    _assert_halved(f, q, qc, cal, found)
    # the conv biases stay int32 read through their DequantizeLinear, and the notes say what was done
    dq_inputs = {n.input[0] for n in qc.graph.node if n.op_type == "DequantizeLinear"}
    biases = {t.name: numpy_helper.to_array(t) for t in qc.graph.initializer if t.name in dq_inputs}
    assert sum(b.dtype == np.int32 for b in biases.values()) == 3
    meta = dict((p.key, p.value) for p in qc.metadata_props)["kcompiler.quantize"]
    assert "bias correction: 3 GEMM biases corrected" in meta


def _assert_halved(f, q, qc, cal, found):
    for t in found:
        before = _channel_error(f, q, cal, t.output, t.reference, t.axis)
        after = _channel_error(f, qc, cal, t.output, t.reference, t.axis)
        assert after < 0.5 * before, f"{t.node}: per-channel mean error {before:.4g} -> {after:.4g}"


def test_linear_layers_int32_gemm_bias_and_float_bias_add_are_both_corrected(tmp_path):
    """ORT's pre-processing fuses the first MatMul + Add into a Gemm (int32 bias); the second, whose bias is not
    1-D, stays MatMul -> Q/DQ -> Add(float constant), and that constant absorbs the correction."""
    from kcompiler.quantize.quantizer import _pre_process

    f = _linear()
    onnx.save(f, str(tmp_path / "f.onnx"))
    pre = onnx.load(str(_pre_process(tmp_path / "f.onnx", tmp_path / "pre.onnx", False, [])))
    rng = np.random.default_rng(7)
    cal = [{"x": (rng.normal(size=(1, 12, 8)) + 0.3).astype(np.float32)} for _ in range(6)]
    q, qc = quantize(f, cal, float_head=False), quantize(f, cal, bias_correction=True, float_head=False)
    found, skipped = targets(q, pre)
    assert [n.op_type for n in q.graph.node if n.name in {t.node for t in found}] == ["Gemm", "MatMul"]
    assert not skipped and found[1].scale is None
    assert found[1].output == found[1].reference == "y"  # (where the float bias Add shows)
    _assert_halved(pre, q, qc, cal, found)


def test_bias_correction_also_helps_on_held_out_samples():
    """What it fits on the calibration set is a property of the quantised layers, not of those samples."""
    f = _model(seed=3)
    cal, held = _samples(8, seed=4), _samples(8, seed=5)
    q, qc = quantize(f, cal, float_head=False), quantize(f, cal, bias_correction=True, float_head=False)
    y_f, = _outputs(f, held, ["y"])
    err = [np.abs((_outputs(m, held, ["y"])[0] - y_f).mean(axis=0)).mean() for m in (q, qc)]
    assert err[1] < err[0], err


def test_a_corrected_layer_is_compared_with_the_float_gemm_before_its_removed_relu():
    """ORT removes the Relu after a Conv (the output zero point clamps) and names the Conv's output after the
    Relu's: the reference is then the float Conv's output (c1), not the Relu's (r1)."""
    f = _model()
    found, _ = targets(quantize(f, _samples(4, seed=1), float_head=False), f)
    assert [t.reference for t in found] == ["c1", "c2", "y"]


def test_refuses_without_samples_or_without_a_correctable_gemm():
    f = _model()
    q = quantize(f, _samples(4, seed=1), float_head=False)
    with pytest.raises(KCError, match="'bc'.*needs calibration samples"):
        bias_correct(f, q, [])
    # two runtime operands (attention's Q.K^T): no bias to correct
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "twoinputs",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 8]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [8, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    rng = np.random.default_rng(0)
    cal = [{"a": rng.normal(size=(4, 8)).astype(np.float32), "b": rng.normal(size=(8, 4)).astype(np.float32)}
           for _ in range(3)]
    with pytest.raises(KCError, match="'twoinputs'.*found no quantised Conv/Gemm"):
        quantize(m, cal, bias_correction=True)


def test_bias_correction_is_int8_only():
    with pytest.raises(KCError, match="bias correction applies to int8"):
        quantize(_model(), _samples(2, seed=1), dtype="fp8", bias_correction=True)


def test_kc_quantize_bias_correction_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from kcompiler.cli import cli

    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=np.concatenate([s["x"] for s in _samples(6, 0)]))
    args = ["quantize", str(tmp_path / "m.onnx"), "--calibrate", str(tmp_path / "cal.npz"),
            "-o", str(tmp_path / "q.onnx")]
    res = CliRunner().invoke(cli, [*args, "--bias-correction"])
    assert res.exit_code == 0, res.output
    assert "bias correction: 3 GEMM biases corrected" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, [*args, "--bias-correction", "--dtype", "fp8"])
    assert res.exit_code != 0 and "bias correction applies to int8" in res.output and "Traceback" not in res.output
