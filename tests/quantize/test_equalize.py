"""equalize(): the rewritten float model computes the same function, and the channels of the tensors int8
quantisation gives one scale span closer ranges (small random models built in the PP-LCNet pattern:
Conv -> per-channel-or-scalar affine -> Hardswish -> affine -> depthwise Conv -> ... -> MatMul)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kcompiler.quantize import quantize
from kcompiler.quantize.equalize import equalize


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(8, channels scaled 1..300x apart) -> *a+b -> Hardswish (x*Clip(x+3)/6) -> +d -> depthwise Conv
    -> Relu -> Conv(8) -> Swish (x*Sigmoid(x)) -> Conv(8) -> GlobalAveragePool -> Flatten -> MatMul -> y."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(1, 300, 8).astype(np.float32)
    w1 = rng.normal(size=(8, 3, 3, 3)) * spread[:, None, None, None]
    inits = [_init("w1", w1), _init("b1", rng.normal(size=8)), _init("a", [1.3]), _init("b", [0.2]),
             _init("d", rng.uniform(-0.2, 0.2, size=(1, 8, 1, 1))),
             _init("three", 3.0), _init("zero", 0.0), _init("six", 6.0),
             _init("wd", rng.normal(size=(8, 1, 3, 3))), _init("bd", rng.normal(size=8)),
             _init("w2", rng.normal(size=(8, 8, 1, 1))), _init("b2", rng.normal(size=8)),
             _init("w4", rng.normal(size=(8, 8, 1, 1))), _init("b4", rng.normal(size=8)),
             _init("wm", rng.normal(size=(8, 5)))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             n("Mul", ["c1", "a"], ["m1"]), n("Add", ["m1", "b"], ["a1"]),
             n("Add", ["a1", "three"], ["h0"]), n("Clip", ["h0", "zero", "six"], ["h1"]),
             n("Mul", ["a1", "h1"], ["h2"]), n("Div", ["h2", "six"], ["hs"]),
             n("Add", ["hs", "d"], ["a2"]),
             n("Conv", ["a2", "wd", "bd"], ["c2"], group=8, pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"]), n("Conv", ["r2", "w2", "b2"], ["c3"]),
             n("Sigmoid", ["c3"], ["s3"]), n("Mul", ["c3", "s3"], ["sw"]),
             n("Conv", ["sw", "w4", "b4"], ["c4"]), n("GlobalAveragePool", ["c4"], ["gp"]), n("Flatten", ["gp"], ["fl"]), n("MatMul", ["fl", "wm"], ["y"])]
    g = helper.make_graph(nodes, "eq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


def _samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _run(m: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    if outputs:
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in outputs)
        m = m2
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(outputs or None, feeds)


def _spread(a: np.ndarray) -> float:
    r = np.abs(a).max(axis=(0, 2, 3))
    return float(r.max() / r.min())


def test_equalised_model_computes_the_same_function():
    m = _model()
    eq, summary = equalize(m, _samples(4, 0))
    onnx.checker.check_model(eq)
    for feeds in _samples(3, 1):
        want, got = _run(m, feeds)[0], _run(eq, feeds)[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert summary.outputs and summary.inputs and summary.inserted, summary


def test_channel_ranges_of_quantised_tensors_come_closer():
    m = _model()
    eq, summary = equalize(m, _samples(4, 0))
    feeds = _samples(1, 2)[0]
    c1, a2 = _run(m, feeds, ["c1", "a2"])
    assert "c1" in summary.outputs and "a2" in summary.inputs
    # (the Conv's output rows and the depthwise input are free moves, equalised fully)
    e1, e2 = _run(eq, feeds, ["c1", "a2"])
    assert _spread(c1) > 100 and _spread(e1) < _spread(c1) / 10
    assert _spread(e2) < _spread(a2) / 2


def test_shared_constants_are_not_changed_for_their_other_users():
    """'six' is Clip's bound and Div's divisor: the fold into the Div must not move the Clip."""
    m = _model()
    eq, _ = equalize(m, _samples(4, 0))
    clip = next(n for n in eq.graph.node if n.op_type == "Clip")
    six = next(t for t in eq.graph.initializer if t.name == clip.input[2])
    assert float(numpy_helper.to_array(six)) == 6.0


@pytest.mark.parametrize("insert", [False, True])
def test_without_insertion_only_exact_folds_are_made(insert):
    m = _model()
    eq, summary = equalize(m, _samples(4, 0), insert=insert)
    muls = sum(n.op_type == "Mul" for n in eq.graph.node) - sum(n.op_type == "Mul" for n in m.graph.node)
    assert muls == (len(summary.inserted) if insert else 0)
    assert bool(summary.inserted) == insert


def test_quantize_with_equalize_notes_it_and_stays_close_to_float():
    m = _model()
    cal = _samples(8, 0)
    q = quantize(m, cal, equalize=True)
    info = next(p.value for p in q.metadata_props if p.key == "kcompiler.quantize")
    assert "equalised per-channel ranges" in info
    feeds = _samples(1, 3)[0]
    want, got = _run(m, feeds)[0], _run(q, feeds)[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_kc_quantize_equalize_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from kcompiler.cli import cli

    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=np.concatenate([s["x"] for s in _samples(8, 0)]))
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m.onnx"), "--calibrate", str(tmp_path / "cal.npz"),
                                   "-o", str(tmp_path / "q.onnx"), "--equalize"])
    assert res.exit_code == 0, res.output
    assert "equalised per-channel ranges" in " ".join(res.output.split())
