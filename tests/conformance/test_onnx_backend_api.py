"""kcompiler.onnx_backend as an onnx.backend.base.Backend: input mapping, errors, run_node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kcompiler import onnx_backend
from kcompiler.errors import InputError, KCError, TargetError


def _model(ir_version: int = 10, symbolic: bool = False, init_as_input: bool = False) -> onnx.ModelProto:
    """y = (a - b) * w, z = a + b; w is an initializer."""
    dim = "N" if symbolic else 3
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [dim])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [dim])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])
    inputs = [w, a, b] if init_as_input else [a, b]  # IR 3 style: the initializer listed first
    graph = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Mul", ["d", "w"], ["y"]),
         helper.make_node("Add", ["a", "b"], ["z"])],
        "g", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [dim])],
        initializer=[numpy_helper.from_array(np.array([2.0], np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=ir_version)


A = np.array([1.0, 2.0, 3.0], np.float32)
B = np.array([0.5, 0.5, 0.5], np.float32)


@pytest.mark.parametrize("ir_version,init_as_input", [(10, False), (3, True)])
def test_positional_inputs_skip_initializers_and_outputs_keep_graph_order(ir_version, init_as_input):
    rep = onnx_backend.prepare(_model(ir_version, init_as_input=init_as_input), "CPU", target="host")
    assert rep.input_names == ["a", "b"]
    y, z = rep.run([A, B])
    np.testing.assert_allclose(y, (A - B) * 2)
    np.testing.assert_allclose(z, A + B)
    out = rep.run({"b": B, "a": A})
    np.testing.assert_allclose(out["z"], A + B)  # namedtuple, also indexable by output name


def test_symbolic_dims_compile_at_run_for_each_shape():
    rep = onnx_backend.prepare(_model(symbolic=True))
    assert rep.compiled is None
    np.testing.assert_allclose(rep.run([A, B])[1], A + B)
    a4 = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(rep.run([a4, a4])[0], np.zeros(4, np.float32))


def test_ir_version_above_ort_max_is_lowered():
    model = _model(ir_version=onnx.IR_VERSION)  # 14 with onnx 1.23: above ORT_MAX_IR_VERSION (10, from ORT 1.31)
    np.testing.assert_allclose(onnx_backend.run_model(model, [A, B])[1], A + B)


def test_errors_are_kcerrors():
    rep = onnx_backend.prepare(_model())
    with pytest.raises(InputError, match="2 input"):
        rep.run([A])
    with pytest.raises(KCError):
        rep.run([A.astype(np.float64), B])
    with pytest.raises(TargetError):
        onnx_backend.prepare(_model(), "CUDA")
    with pytest.raises(KCError):
        onnx_backend.prepare(_model(), target="no-such-chip")
    assert onnx_backend.supports_device("CPU")
    assert not onnx_backend.supports_device("CUDA")
    assert not onnx_backend.supports_device("TPU")


def test_run_node():
    node = helper.make_node("Relu", ["x"], ["y"])
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    (y,) = onnx_backend.run_node(node, [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    node = helper.make_node("Add", ["p", "q"], ["r"])
    (r,) = onnx_backend.run_node(node, [x, x], opset_version=14)
    np.testing.assert_array_equal(r, x + x)


def test_backend_class_is_an_onnx_backend():
    from onnx.backend.base import Backend

    assert issubclass(onnx_backend.KCBackend, Backend)
