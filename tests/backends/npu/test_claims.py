"""The NPU claims only ops it completes: a node whose extra output is read (even only as a graph
output), a training-mode Dropout or an Attention with an attribute the kernel does not implement
goes to the host with its reason, and the model's values stay right."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from conftest import make_model, ort_run, rand

import kcompiler
from kcompiler.runtime.partition import REASON_KEY


def _placed(model):
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    return cm, {n.op_type: (n.metadata_props.get("kcompiler.device", ""), n.metadata_props.get(REASON_KEY, ""))
                for n in cm.model.graph}


def test_an_extra_output_that_is_only_a_graph_output_is_not_dropped():
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"], axis=-1)
    model = make_model([node], {"x": [4, 8]}, {"y": [4, 8], "mean": [4, 1], "inv": [4, 1]},
                       {"g": rand(8), "b": rand(8, seed=2)})
    cm, placed = _placed(model)
    dev, why = placed["LayerNormalization"]
    assert dev == "host" and "extra output 'mean'" in why
    x = rand(4, 8, seed=3)
    got = cm.run({"x": x}, simulate=False)
    want = ort_run(model, {"x": x})
    for k in ("y", "mean", "inv"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_training_dropout_is_not_the_identity():
    t = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    node = helper.make_node("Dropout", ["x", "", "t"], ["y"], seed=0)
    model = make_model([node], {"x": [4, 8]}, {"y": [4, 8]})
    model.graph.initializer.append(t)
    _, placed = _placed(model)
    dev, why = placed["Dropout"]
    assert dev == "host" and "training-mode" in why


def test_attention_with_an_attribute_the_kernel_lacks_goes_to_the_host():
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], left_window_size=1, right_window_size=1)
    model = make_model([node], {"q": [1, 2, 4, 8], "k": [1, 2, 4, 8], "v": [1, 2, 4, 8]}, {"y": [1, 2, 4, 8]},
                       opset=25)
    _, placed = _placed(model)
    dev, why = placed["Attention"]
    assert dev == "host" and "left_window_size" in why
