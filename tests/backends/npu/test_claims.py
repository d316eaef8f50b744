"""The NPU claims only ops it completes: a node whose extra output is read (even only as a graph
output), a training-mode Dropout or an Attention with an attribute the kernel does not implement
goes to the host with its reason, and the model's values stay right."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from conftest import make_model, ort_run, rand

import kcompiler
from kcompiler.backends.npu.backend import _layernorm_stats
from kcompiler.backends.npu.kernels.attention import attention_support
from kcompiler.passes.placement import REASON_KEY


def _placed(model):
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    return cm, {n.op_type: (n.metadata_props.get("kcompiler.device", ""), n.metadata_props.get(REASON_KEY, ""))
                for n in cm.model.graph}


def _layernorm(stash_type=1):
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"], axis=-1, epsilon=1e-3,
                            stash_type=stash_type)
    return make_model([node], {"x": [4, 8]}, {"y": [4, 8], "mean": [4, 1], "inv": [4, 1]},
                      {"g": rand(8), "b": rand(8, seed=2)}, opset=17)


def test_layernorm_mean_and_invstddev_that_are_only_graph_outputs_are_computed_on_the_npu():
    model = _layernorm()
    cm, placed = _placed(model)
    assert placed["LayerNormalization"][0] != "host"
    assert cm.report.host_nodes == 0
    x = rand(4, 8, seed=3) * 3 + 1
    got = cm.run({"x": x})
    want = ort_run(model, {"x": x})
    for k in ("y", "mean", "inv"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_layernorm_invstddev_alone_over_two_axes():
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y", "", "inv"], axis=1)
    model = make_model([node], {"x": [3, 4, 5]}, {"y": [3, 4, 5], "inv": [3, 1, 1]}, {"g": rand(4, 5)}, opset=17)
    cm, placed = _placed(model)
    assert placed["LayerNormalization"][0] != "host"
    x = rand(3, 4, 5, seed=4)
    got, want = cm.run({"x": x}), ort_run(model, {"x": x})
    for k in ("y", "inv"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_layernorm_statistics_in_another_stash_type_are_not_claimed():
    model = _layernorm(stash_type=16)  # bfloat16: the NPU computes the statistics in float32 only
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.BFLOAT16
    model.graph.output[2].type.tensor_type.elem_type = TensorProto.BFLOAT16
    node = ir.serde.deserialize_model(model).graph[0]
    why = _layernorm_stats(node)
    assert not why and "stash_type=16" in why.reason
    node.attributes["stash_type"] = ir.AttrInt64("stash_type", 1)
    assert "has dtype" in _layernorm_stats(node).reason


def test_training_dropout_is_not_the_identity():
    t = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    node = helper.make_node("Dropout", ["x", "", "t"], ["y"], seed=0)
    model = make_model([node], {"x": [4, 8]}, {"y": [4, 8]})
    model.graph.initializer.append(t)
    _, placed = _placed(model)
    dev, why = placed["Dropout"]
    assert dev == "host" and "training-mode" in why


def test_attention_with_an_attribute_the_kernel_lacks_is_not_claimed():
    """A sliding window (opset 25) is lowered now; an attribute the kernel does not know is refused."""
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], left_window_size=1, right_window_size=1)
    model = make_model([node], {"q": [1, 2, 4, 8], "k": [1, 2, 4, 8], "v": [1, 2, 4, 8]}, {"y": [1, 2, 4, 8]},
                       opset=25)
    cm, placed = _placed(model)
    assert placed["Attention"][0] != "host"
    feeds = {n: rand(1, 2, 4, 8, seed=i) for i, n in enumerate("qkv")}
    (want,) = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_allclose(cm.run(feeds)["y"], want, rtol=1e-5, atol=1e-6)
    irnode = ir.serde.deserialize_model(model).graph[0]
    irnode.attributes["future_window_mode"] = ir.AttrInt64("future_window_mode", 1)
    why = attention_support(irnode, None)
    assert not why and "future_window_mode" in why.reason


def test_maxpool_with_its_indices_read_goes_to_the_host():
    """The NPU's pool writes no Indices (an int64 argmax): a MaxPool whose Indices are a graph
    output is not claimed, and the host computes both outputs."""
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2])
    model = make_model([node], {"x": [1, 2, 4, 4]}, {"y": [1, 2, 2, 2]})
    model.graph.output.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 2, 2, 2]))
    cm, placed = _placed(model)
    dev, why = placed["MaxPool"]
    assert dev == "host" and "extra output 'idx'" in why
    x = rand(1, 2, 4, 4, seed=5)
    got, want = cm.run({"x": x}), ort_run(model, {"x": x})
    np.testing.assert_array_equal(got["idx"], want["idx"])
    np.testing.assert_allclose(got["y"], want["y"])
