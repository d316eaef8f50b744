"""Pooling in every shape detectors and the ONNX suite use: 3-D pools as two 2-D window ops, ceil_mode
pools, and RNN and LpPool left to the host with a reason placement reports. (A ceil_mode
pool whose last window would start past the input, ONNX's test_maxpool_2d_ceil_output_size_reduce_by_one,
runs natively in the conformance benchmark.)"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run

import kcompiler
from kcompiler.passes.placement import REASON_KEY


def _pool(op, xs, **attrs):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(xs))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


@pytest.mark.parametrize("op,xs,attrs", [
    ("MaxPool", [1, 2, 5, 6, 7], dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1])),
    ("AveragePool", [2, 2, 6, 5, 5], dict(kernel_shape=[3, 2, 2], strides=[2, 2, 1], pads=[1, 1, 0, 1, 0, 1],
                                          count_include_pad=1)),
    ("AveragePool", [1, 3, 7, 6, 5], dict(kernel_shape=[3, 3, 3], strides=[2, 2, 2], dilations=[2, 1, 1],
                                          pads=[2, 1, 1, 2, 1, 1], ceil_mode=1)),
    ("AveragePool", [1, 4, 7, 7], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
])
def test_pools_run_natively_and_match_onnxruntime(op, xs, attrs):
    model = _pool(op, xs, **attrs)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0, [(s.device, [n.op_type for n in s.nodes]) for s in cm.parts]
    x = np.random.default_rng(1).standard_normal(xs).astype(np.float32)
    np.testing.assert_allclose(cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_rnn_and_lppool_stay_on_the_host_with_a_reason():
    rng = np.random.default_rng(0)
    rnn = helper.make_node("RNN", ["x", "w", "r"], ["y"], hidden_size=4)
    g = helper.make_graph([rnn], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 1, 1, 4])],
                          [numpy_helper.from_array(rng.standard_normal((1, 4, 2)).astype(np.float32), "w"),
                           numpy_helper.from_array(rng.standard_normal((1, 4, 4)).astype(np.float32), "r")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    for m, op, why in ((model, "RNN", "the NPU has no RNN kernel"),
                       (_pool("LpPool", [1, 2, 4, 4], kernel_shape=[2, 2]), "LpPool", "no p-norm window")):
        cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
        (node,) = [n for n in cm.model.graph if n.op_type == op]
        assert node.metadata_props.get("kcompiler.device") == "host"
        assert why in node.metadata_props.get(REASON_KEY, "")
