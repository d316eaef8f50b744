"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss on the NPU (kernels/loss.py): integer targets
compared with each class index on the vector unit, class weights, ignore_index, the three reductions
and SoftmaxCrossEntropyLoss's log_prob output, against ONNX Runtime; what does not fit one core's
scratchpad goes to the host with its reason; a mutated field of the nll instruction changes the result."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run, rand

import kcompiler
from kcompiler.backends.npu import isa, mutate
from kcompiler.passes.placement import REASON_KEY


def _loss_model(op, xs, reduction, weight=False, ignore=None, log_prob=False):
    ins = ["x", "t"] + (["w"] if weight else [])
    outs = ["loss"] + (["lp"] if log_prob else [])
    attrs = {"reduction": reduction}
    if ignore is not None:
        attrs["ignore_index"] = ignore
    node = helper.make_node(op, ins, outs, **attrs)
    ts = [xs[0], *xs[2:]]
    out_shape = ts if reduction == "none" else []
    inits = [numpy_helper.from_array(np.abs(rand(xs[1], seed=9)) + 0.1, "w")] if weight else []
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs),
                                        helper.make_tensor_value_info("t", TensorProto.INT64, ts)],
                          [helper.make_tensor_value_info("loss", TensorProto.FLOAT, out_shape)]
                          + ([helper.make_tensor_value_info("lp", TensorProto.FLOAT, xs)] if log_prob else []), inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 10
    return m


def _feeds(xs, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, xs[1], size=[xs[0], *xs[2:]]).astype(np.int64)
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
    return {"x": rand(*xs, seed=seed + 1), "t": t}


@pytest.mark.parametrize("op,xs,reduction,weight,ignore", [
    ("NegativeLogLikelihoodLoss", [4, 5], "none", False, None),
    ("NegativeLogLikelihoodLoss", [3, 5, 2, 3], "mean", True, 2),
    ("NegativeLogLikelihoodLoss", [3, 6, 4], "sum", True, -1),
    ("SoftmaxCrossEntropyLoss", [3, 5, 4], "mean", False, 1),
    ("SoftmaxCrossEntropyLoss", [2, 7], "none", True, None)])
def test_loss_matches_onnx_runtime_with_every_node_on_the_npu(op, xs, reduction, weight, ignore):
    model = _loss_model(op, xs, reduction, weight, ignore)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0
    for seed in (0, 1):
        feeds = _feeds(xs, seed, ignore)
        got, want = cm.run(feeds), ort_run(model, feeds)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)


def test_softmax_cross_entropy_log_prob_output_is_the_stored_log_softmax():
    model = _loss_model("SoftmaxCrossEntropyLoss", [3, 5, 4], "sum", log_prob=True)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0
    feeds = _feeds([3, 5, 4], 3)
    got, want = cm.run(feeds), ort_run(model, feeds)
    for k in ("loss", "lp"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_loss_larger_than_one_cores_scratchpad_runs_on_the_host_with_its_reason():
    model = _loss_model("NegativeLogLikelihoodLoss", [64, 1000, 128], "mean")
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"}, mode="timing")
    (node,) = list(cm.model.graph)
    assert node.metadata_props["kcompiler.device"] == "host"
    assert "scratchpad" in node.metadata_props[REASON_KEY]


def test_mutated_nll_fields_change_the_loss():
    model = _loss_model("NegativeLogLikelihoodLoss", [4, 6, 3], "mean", weight=True, ignore=-1)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    assert any(i.opcode == isa.VECTOR and isa.VFN_NAMES[i.aux] == "nll" for i in prog.data.instrs)
    feeds = []
    for s in (0, 1):  # every class's weight read (a class no target names is a weight no result depends on)
        t = ((np.arange(12) * 5 + s) % 6).reshape(4, 3)
        t[s, 1] = -1
        feeds.append({"x": rand(4, 6, 3, seed=s), "t": t.astype(np.int64)})
    score = mutate.score_npu(prog, feeds, 40, seed=2)
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-200:]) for o in score.outcomes
                                 if o.result in ("survived", "crash")]
