"""The Reduce* ops beyond sum/mean/max/min (L1, L2, SumSquare, LogSum, LogSumExp, Prod), Clip with
run-time bounds, and the ONNX backend's compiling of shape operands (a reduction's axes given as an
input) as the constants they are at run time: values against ONNX Runtime, every node on the NPU."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import check_on, make_model, ort_run, rand

import kcompiler
from kcompiler import onnx_backend
from kcompiler.backends.npu import isa, mutate


def _reduce(op, axes, keepdims):
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    x = np.zeros((3, 4, 5), np.float32)
    out = list(np.sum(x, axis=tuple(a % 3 for a in axes), keepdims=bool(keepdims)).shape)
    return make_model([node], {"x": [3, 4, 5]}, {"y": out}, {"axes": np.array(axes, np.int64)})


@pytest.mark.parametrize("op,axes,keepdims", [
    ("ReduceL1", [1], 1), ("ReduceL2", [0, 2], 0), ("ReduceSumSquare", [-1], 1), ("ReduceLogSumExp", [1, 2], 1),
    ("ReduceProd", [2], 0)])
def test_reduction_matches_onnx_runtime_on_the_npu(op, axes, keepdims):
    check_on(_reduce(op, axes, keepdims))


def test_log_sum_of_positive_values_and_log_sum_exp_of_large_ones():
    for op, x in (("ReduceLogSum", np.abs(rand(3, 4, 5)) + 0.5), ("ReduceLogSumExp", rand(3, 4, 5) * 40 + 60)):
        model = _reduce(op, [1], 1)
        cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
        assert cm.report.host_nodes == 0
        got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=op)


def _clip(bounds):
    names = ["x"] + [b if b else "" for b in bounds]
    node = helper.make_node("Clip", names, ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])] + [
        helper.make_tensor_value_info(b, TensorProto.FLOAT, []) for b in bounds if b],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("bounds,values", [(("lo", "hi"), (-0.5, 0.7)), (("lo", "hi"), (0.9, -0.2)),
                                           (("lo",), (0.1,)), (("", "hi"), (0.3,))])
def test_clip_with_run_time_bounds_reads_them_from_memory(bounds, values):
    model = _clip(bounds)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0
    feeds = {"x": rand(4, 6, seed=5)}
    feeds.update({b: np.array(v, np.float32) for b, v in zip([b for b in bounds if b], values)})
    np.testing.assert_array_equal(cm.run(feeds)["y"], ort_run(model, feeds)["y"])
    # the same program with other bounds: they are data, not compiled in
    feeds2 = {k: (v if k == "x" else np.array(v + 0.25, np.float32)) for k, v in feeds.items()}
    np.testing.assert_array_equal(cm.run(feeds2)["y"], ort_run(model, feeds2)["y"])


def test_onnx_backend_compiles_axes_given_as_an_input_once_per_value():
    node = helper.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5]),
                                        helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    rep = onnx_backend.prepare(m, "CPU", target="npu", place={"*": "npu"})
    assert rep.specialised == {"axes"}
    x = rand(3, 4, 5, seed=2)
    for ax in (1, 2, 1):
        (y,) = rep.run([x, np.array([ax], np.int64)])
        np.testing.assert_allclose(y, np.sqrt((x * x).sum(axis=ax)), rtol=1e-5)
        assert rep.compiled.report.host_nodes == 0
    assert len(rep._compiled) == 2  # compiled once per distinct value


def test_a_mutated_reduction_function_or_clip_bound_address_changes_the_result():
    nodes = [helper.make_node("ReduceLogSumExp", ["x", "axes"], ["r"], keepdims=1),
             helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Add", ["c", "r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
                                       helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
                                       helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    vecs = [i for i in prog.data.instrs if i.opcode == isa.VECTOR]
    assert {isa.VFN_NAMES[i.aux] for i in vecs} >= {"reduce_logsumexp", "max", "min"}
    rng = np.random.default_rng(0)
    feeds = [{"x": rand(4, 8, seed=s), "lo": np.array(-0.3, np.float32), "hi": np.array(rng.random(), np.float32)}
             for s in (0, 1)]
    score = mutate.score_npu(prog, feeds, 40, seed=5)
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-200:]) for o in score.outcomes
                                 if o.result in ("survived", "crash")]


@pytest.mark.parametrize("p,axis", [(1, 1), (2, -1), (2, 0)])
def test_lp_normalization_with_a_zero_row_gives_zero_there(p, axis):
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
    model = make_model([node], {"x": [3, 4, 5]}, {"y": [3, 4, 5]})
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0
    x = rand(3, 4, 5, seed=7)
    x[1, 2, 3] = x[1, 2, 4] = 0.0
    x[0, :, 1] = x[0, 2, :] = x[:, 3, 2] = 0.0  # a zero row along each axis tried
    got = cm.run({"x": x})["y"]
    norm = np.sum(np.abs(x) ** p, axis=axis, keepdims=True) ** (1.0 / p)
    want = np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batch_normalization_with_run_time_parameters_reads_them_per_channel():
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "sbmv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 10
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0
    for seed in (0, 1):  # other parameters, the same program
        feeds = {"x": rand(2, 3, 4, 5, seed=seed), "s": rand(3, seed=seed + 2), "b": rand(3, seed=seed + 3),
                 "m": rand(3, seed=seed + 4), "v": np.abs(rand(3, seed=seed + 5)) + 0.2}
        np.testing.assert_allclose(cm.run(feeds)["y"], ort_run(m, feeds)["y"], rtol=1e-5, atol=1e-5)
