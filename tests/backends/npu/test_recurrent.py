"""LSTM and GRU on the NPU (kernels/recurrent.py): forward, reverse and bidirectional, with and
without initial states and biases (GRU: both linear_before_reset), match ONNX Runtime on every
output; LSTM peepholes stay on the host."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run

import kcompiler
from kcompiler.passes.placement import REASON_KEY


def _lstm(t, b, i, h, direction="forward", bias=True, init=True, outs=("y", "yh", "yc"), peepholes=False):
    rng = np.random.default_rng(3)
    d = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array((rng.standard_normal((d, 4 * h, i)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((d, 4 * h, h)) * 0.5).astype(np.float32), "r")]
    names = ["x", "w", "r", "b" if bias else ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((d, 8 * h)).astype(np.float32), "b"))
    vis = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, b, i])]
    if init or peepholes:
        names += ["", "h0", "c0"]
        vis += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, b, h]) for n in ("h0", "c0")]
    if peepholes:
        names.append("p")
        inits.append(numpy_helper.from_array(rng.standard_normal((d, 3 * h)).astype(np.float32), "p"))
    node = helper.make_node("LSTM", names, list(outs), hidden_size=h, direction=direction)
    shapes = {"y": [t, d, b, h], "yh": [d, b, h], "yc": [d, b, h]}
    g = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o])
                                             for o in outs if o], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)


def _gru(t, b, i, h, direction="forward", init=True, lbr=0):
    rng = np.random.default_rng(5)
    d = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array((rng.standard_normal((d, 3 * h, i)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((d, 3 * h, h)) * 0.5).astype(np.float32), "r"),
             numpy_helper.from_array(rng.standard_normal((d, 6 * h)).astype(np.float32), "b")]
    names, vis = ["x", "w", "r", "b"], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, b, i])]
    if init:
        names += ["", "h0"]
        vis.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [d, b, h]))
    node = helper.make_node("GRU", names, ["y", "yh"], hidden_size=h, direction=direction, linear_before_reset=lbr)
    g = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t, d, b, h]),
                                             helper.make_tensor_value_info("yh", TensorProto.FLOAT, [d, b, h])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)


def _feeds(model):
    rng = np.random.default_rng(4)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


@pytest.mark.parametrize("op,kw", [("LSTM", dict()), ("LSTM", dict(direction="reverse")),
                                   ("LSTM", dict(direction="bidirectional", init=False)),
                                   ("LSTM", dict(bias=False, outs=("", "yh", ""))), ("GRU", dict()),
                                   ("GRU", dict(direction="bidirectional", init=False, lbr=1))])
def test_recurrent_ops_run_natively_and_match_onnxruntime(op, kw):
    model = (_lstm if op == "LSTM" else _gru)(4, 2, 3, 5, **kw)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0, [(s.device, [n.op_type for n in s.nodes]) for s in cm.parts]
    feeds = _feeds(model)
    got, want = cm.run(feeds), ort_run(model, feeds)
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)


def test_lstm_with_peepholes_stays_on_the_host_with_a_reason():
    cm = kcompiler.compile(_lstm(2, 1, 2, 3, peepholes=True), target="npu", place={"*": "npu"})
    (node,) = [n for n in cm.model.graph if n.op_type == "LSTM"]
    assert node.metadata_props.get("kcompiler.device") == "host"
    assert "peepholes" in node.metadata_props.get(REASON_KEY, "")
