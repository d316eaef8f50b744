"""The head keeps a float output (kcompiler.quantize.head): the last GEMM's output pair goes, the others stay."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from test_quantize import cnn, images, mlp, rows

import kcompiler
from kcompiler.quantize import quant_info, quantize


def _pairs_after(model, op_types=("Conv", "MatMul", "Gemm")) -> list[bool]:
    """Per GEMM, in graph order: whether a QuantizeLinear reads its output."""
    readers = {i for n in model.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    return [n.output[0] in readers for n in model.graph.node if n.op_type in op_types]


def _run(model, x):
    """ONNX Runtime at its basic level: the QDQ model's own function (its fused x86 kernels without VNNI
    saturate 16-bit pair sums, see kcompiler.quantize.quantize's `activations`)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_the_classifier_keeps_a_float_output_and_the_rest_stays_int8():
    cal = [{"x": x} for x in images(16, 0)]
    q = quantize(cnn(), cal)
    pairs = _pairs_after(q)
    assert pairs == [True, False], pairs  # the Conv feeds int8 ops; the Gemm is the head
    assert any("the head keeps a float output" in n for n in quant_info(q)["notes"])
    q8 = quantize(cnn(), cal, float_head=False)
    assert _pairs_after(q8) == [True, True]
    # the float head is closer to float32 than the requantised one, on other inputs
    x = images(8, 1)
    ref = np.concatenate([_run(cnn(), xi) for xi in x])
    err = [np.abs(np.concatenate([_run(m, xi) for xi in x]) - ref).mean() for m in (q, q8)]
    assert err[0] < err[1], err


def test_a_head_that_is_a_graph_output_keeps_its_name_and_compiles():
    q = quantize(mlp(), [{"x": x} for x in rows(16, 0)])
    assert [o.name for o in q.graph.output] == ["y"]
    assert _pairs_after(q) == [True, False]
    cm = kcompiler.compile(q, target="atom", shapes={"x": [4, 64]})
    x = rows(1, 3)[0]
    np.testing.assert_allclose(cm.run({"x": x})["y"], _run(q, x), rtol=1e-4, atol=1e-4)
