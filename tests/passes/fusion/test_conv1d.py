"""conv1d-as-2d: a 1-D Conv runs as a 2-D one of height 1, exactly, on the chip (silero-vad's encoder and
Whisper-style stems used to fall back to the host: "input 0 must have rank 4")."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.check import compare_with_ort

CASES = {  # name: (attributes, channels in, out, kernel, group, bias)
    "plain": ({}, 8, 16, 3, 1, False),
    "strided-padded-bias": ({"strides": [2], "pads": [1, 2]}, 8, 16, 5, 1, True),
    "dilated": ({"dilations": [2], "pads": [2, 2]}, 4, 8, 3, 1, True),
    "grouped-same": ({"auto_pad": "SAME_UPPER"}, 8, 8, 3, 4, False),
}


def _model(attrs, cin, cout, k, group, bias, length=40):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin // group, k)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        ins.append("b")
    conv = helper.make_node("Conv", ins, ["c"], name="conv", group=group, **attrs)
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    g = helper.make_graph([conv, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, length])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_1d_conv_runs_on_the_npu_with_onnx_runtimes_values(name):
    cm = kcompiler.compile(_model(*CASES[name]), target="npu")
    convs = {sub.device for sub in cm.parts for n in sub.nodes if n.op_type == "Conv"}
    assert convs == {"warboy"}, f"the Conv ran on {convs}"
    feeds = cm.random_inputs(1)
    c = compare_with_ort(cm, feeds, cm.run(feeds), rtol=1e-4, atol=1e-5)
    assert c.ok, c.describe()


def test_the_rule_can_be_disabled_and_then_the_conv_stays_1d():
    cm = kcompiler.compile(_model(*CASES["plain"]), target="npu", disable_passes=["conv1d-as-2d"])
    assert [n.op_type for sub in cm.parts for n in sub.nodes if n.op_type in ("Unsqueeze", "Squeeze")] == []
    assert {sub.device for sub in cm.parts for n in sub.nodes if n.op_type == "Conv"} == {"host"}


def test_a_single_output_window_that_skips_the_inputs_tail_stays_on_the_host():
    """16 taps at stride 49 over 64 samples give one output and leave 48 samples unread: the window
    feeder's CONFIG reserves a single output's stride, so the NPU does not claim it (it used to, and its
    simulator then refused the program)."""
    cm = kcompiler.compile(_model({"strides": [49]}, 1, 8, 16, 1, False, length=64), target="npu")
    (conv,) = [n for sub in cm.parts for n in sub.nodes if n.op_type == "Conv"]
    assert conv.metadata_props.get("kcompiler.device") == "host"
    assert "unread" in conv.metadata_props.get("kcompiler.reason", "")
    feeds = cm.random_inputs(2)
    c = compare_with_ort(cm, feeds, cm.run(feeds), rtol=1e-4, atol=1e-5)
    assert c.ok, c.describe()
