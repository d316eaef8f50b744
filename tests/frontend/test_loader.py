"""The frontend: shape binding, opset conversion, lazy external data, old IR versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kcompiler
from kcompiler.errors import ShapeError
from kcompiler.frontend import CANONICAL_OPSET, load_model, parse_shape_spec
from kcompiler.zoo import BUNDLED, bundled_path

from hostile_cases import matmul_model

FLOAT = TensorProto.FLOAT


def ort_run(model: onnx.ModelProto | str, feeds: dict) -> list[np.ndarray]:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


# ---- shape binding ------------------------------------------------------------------------------
def two_symbolic_inputs(b_rows: str = "k") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "two",
        [helper.make_tensor_value_info("a", FLOAT, ["batch", "k"]),
         helper.make_tensor_value_info("b", FLOAT, [b_rows, 5])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_symbolic_dims_are_bound_and_propagated():
    irm, _ = load_model(two_symbolic_inputs(), shapes={"a": (3, 4), "b": (4, 5)})
    assert [tuple(v.shape) for v in irm.graph.inputs] == [(3, 4), (4, 5)]
    assert tuple(irm.graph.outputs[0].shape) == (3, 5)  # shape inference ran on the bound shapes


def test_bound_model_runs_with_the_bound_shape():
    cm = kcompiler.compile(two_symbolic_inputs(), shapes={"a": [2, 4], "b": [4, 5]})
    assert cm.inputs["a"][0] == (2, 4)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4), np.float32), rng.standard_normal((4, 5), np.float32)
    np.testing.assert_allclose(cm.run({"a": a, "b": b})["y"], a @ b, rtol=1e-5)


def test_shapes_accept_text_and_numpy_ints():
    irm, _ = load_model(two_symbolic_inputs(), shapes={"a": "3x4", "b": (np.int64(4), np.int32(5))})
    assert [tuple(v.shape) for v in irm.graph.inputs] == [(3, 4), (4, 5)]


def test_unbound_error_lists_every_input_to_bind():
    with pytest.raises(ShapeError) as info:
        load_model(two_symbolic_inputs())
    text = str(info.value)
    assert "a [batch,k]" in text and "b [k,5]" in text and "--shape" in text


def test_partly_bound_error_lists_the_rest():
    with pytest.raises(ShapeError) as info:
        load_model(two_symbolic_inputs(b_rows="m"), shapes={"a": (3, 4)})
    text = str(info.value)
    assert "b [m,5]" in text and "a [" not in text


def test_a_named_dim_bound_once_sizes_every_input_sharing_it():
    irm, _ = load_model(two_symbolic_inputs(), shapes={"a": (3, 4)})  # 'k' = 4 reaches b
    assert [tuple(v.shape) for v in irm.graph.inputs] == [(3, 4), (4, 5)]


def test_fixed_dims_need_no_binding():
    irm, _ = load_model(matmul_model(n=2))
    assert tuple(irm.graph.inputs[0].shape) == (2, 4)


@pytest.mark.parametrize("spec,expected", [("x=1x3x224x224", ("x", (1, 3, 224, 224))),
                                           ("input:0=2,3", ("input:0", (2, 3))),
                                           ("a=b=4X5", ("a=b", (4, 5)))])
def test_parse_shape_spec(spec, expected):
    assert parse_shape_spec(spec) == expected


# ---- opset conversion ---------------------------------------------------------------------------
def old_squeeze_model() -> onnx.ModelProto:
    """Opset 11: Squeeze takes `axes` as an attribute (an input since opset 13)."""
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x"], ["s"], axes=[1], name="sq"),
         helper.make_node("Relu", ["s"], ["y"], name="relu")], "old",
        [helper.make_tensor_value_info("x", FLOAT, [2, 1, 3])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)


def test_old_opset_is_converted_to_canonical():
    irm, src = load_model(old_squeeze_model())
    assert irm.opset_imports[""] == CANONICAL_OPSET == 23
    squeeze = next(n for n in irm.graph if n.op_type == "Squeeze")
    assert len(squeeze.inputs) == 2 and "axes" not in squeeze.attributes
    assert not src.notes


def test_converted_model_computes_the_same():
    x = np.random.default_rng(0).standard_normal((2, 1, 3)).astype(np.float32)
    (want,) = ort_run(old_squeeze_model(), {"x": x})
    got = kcompiler.compile(old_squeeze_model()).run({"x": x})["y"]
    np.testing.assert_allclose(got, want)


def test_current_opset_is_kept():
    irm, _ = load_model(matmul_model(opset=CANONICAL_OPSET + 1))
    assert irm.opset_imports[""] == CANONICAL_OPSET + 1


# ---- external data ------------------------------------------------------------------------------
def save_with_external_data(folder: Path, name: str = "ext.onnx") -> tuple[Path, onnx.ModelProto]:
    model = matmul_model()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path, matmul_model()  # save_model strips the data from `model`; return a fresh copy


def test_external_data_is_loaded_lazily(tmp_path):
    path, _ = save_with_external_data(tmp_path / "m")
    assert (tmp_path / "m" / "weights.bin").stat().st_size == 4 * (12 + 3)
    assert len(path.read_bytes()) < 300  # the weights are not in the model file
    irm, _ = load_model(path)
    w = irm.graph.initializers["w"].const_value
    assert isinstance(w, ir.ExternalTensor)  # nothing read yet: an offset into weights.bin
    assert Path(w.base_dir).resolve() == (tmp_path / "m").resolve()


# the host backend hands ORT the subgraph as bytes; these check it points ORT at the weights'
# folder (not the current directory)
def test_external_data_values_are_correct(tmp_path, monkeypatch):
    path, reference = save_with_external_data(tmp_path / "m")
    monkeypatch.chdir(tmp_path)  # the data is found beside the model, not in the current directory
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    (want,) = ort_run(reference, {"x": x})
    cm = kcompiler.compile(str(path))
    np.testing.assert_allclose(cm.run({"x": x})["y"], want, rtol=1e-6)
    w = np.frombuffer(reference.graph.initializer[0].raw_data, np.float32).reshape(4, 3)
    np.testing.assert_allclose(want, x @ w + np.frombuffer(reference.graph.initializer[1].raw_data, np.float32),
                               rtol=1e-5)


def test_external_data_in_subfolder_is_allowed(tmp_path):
    folder = tmp_path / "m"
    (folder / "data").mkdir(parents=True)
    model = matmul_model()
    onnx.save_model(model, folder / "sub.onnx", save_as_external_data=True, location="data/w.bin",
                    size_threshold=0)
    x = np.ones((2, 4), np.float32)
    (want,) = ort_run(matmul_model(), {"x": x})
    np.testing.assert_allclose(kcompiler.compile(str(folder / "sub.onnx")).run({"x": x})["y"], want, rtol=1e-6)


def test_timing_mode_needs_no_weight_data(tmp_path):
    """Timing-only compiles never read the weights, so a model bigger than memory can be simulated."""
    path, _ = save_with_external_data(tmp_path / "m")
    cm = kcompiler.compile(str(path), mode="timing")
    (tmp_path / "m" / "weights.bin").unlink()  # compiled already: simulate() must not need it
    rep = cm.simulate()
    assert rep.latency_s > 0


# ---- IR < 4: the bundled CNNs -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_ir3_models_lose_initializer_inputs(name):
    path = bundled_path(name)
    proto = onnx.load(path)
    assert proto.ir_version < 4
    assert len(proto.graph.input) == len(proto.graph.initializer) + 1  # IR 3: weights are inputs too
    irm, _ = load_model(path)
    assert len(irm.graph.inputs) == 1  # only the image
    assert irm.ir_version >= 8
    assert irm.opset_imports[""] == CANONICAL_OPSET
    assert len(irm.graph.initializers) == len(proto.graph.initializer)
    # the loaded model is valid ONNX again
    onnx.checker.check_model(ir.serde.serialize_model(irm))


def test_every_bundled_model_loads():
    for name in BUNDLED:
        irm, src = load_model(bundled_path(name))
        assert all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in irm.graph.outputs), name


# ---- shape inference ----------------------------------------------------------------------------
def test_onnx_function_body_limit_is_not_a_shape_error():
    """MeanVarianceNormalization with its default axes is valid, but onnx's strict inference
    fails inside its function body; the model loads (non-strict shapes, a note) and runs like
    ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], "mvn",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 3, 4, 5])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    _, src = load_model(m)
    assert any("shape inference reported" in n for n in src.notes), src.notes
    cm = kcompiler.compile(m, target="host")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(cm.run({"x": x})["y"], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_inconsistent_shapes_still_fail_strict_inference():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "bad",
        [helper.make_tensor_value_info("a", FLOAT, [2, 3]), helper.make_tensor_value_info("b", FLOAT, [4, 5])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 5])])
    with pytest.raises(ShapeError, match="shape inference failed"):
        load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_sequence_types_survive_inside_subgraphs():
    """A Loop body building a sequence keeps a sequence type (onnx_ir 1.1's merge made it a
    tensor, which ONNX Runtime then refused)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["f"], to=FLOAT),
         helper.make_node("Unsqueeze", ["f", "zero"], ["f1"]),
         helper.make_node("SequenceInsert", ["seq_in", "f1"], ["seq_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_value_info("seq_in", helper.make_sequence_type_proto(helper.make_tensor_type_proto(FLOAT, [1])))],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_value_info("seq_out", helper.make_sequence_type_proto(helper.make_tensor_type_proto(FLOAT, [1])))],
        [onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")])
    graph = helper.make_graph(
        [helper.make_node("SequenceEmpty", [], ["s0"], dtype=FLOAT),
         helper.make_node("Loop", ["n", "c", "s0"], ["s"], body=body),
         helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)], "loop",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", FLOAT, [4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    irm, _ = load_model(m)
    loop = next(n for n in irm.graph if n.op_type == "Loop")
    seq_out = loop.attributes["body"].value.outputs[1]
    assert isinstance(seq_out.type, ir.SequenceType), seq_out.type
    cm = kcompiler.compile(m, target="host")
    y = cm.run({"n": np.array(4, np.int64), "c": np.array(True)})["y"]
    np.testing.assert_array_equal(y, np.arange(4, dtype=np.float32))


def test_a_minus_one_dim_is_dynamic_and_bindable(tmp_path):
    """Paddle2ONNX writes -1 for a dynamic dim (inputs and outputs): --shape binds it, and without
    it the error asks for it with the input's own rank."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], rng.standard_normal((4, 3)).astype(np.float32).tobytes(),
                           raw=True)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for target in ("host", "npu"):
        cm = kcompiler.compile(m, target=target, shapes={"x": (7, 4)})
        x = rng.standard_normal((7, 4)).astype(np.float32)
        np.testing.assert_allclose(cm.run({"x": x}, simulate=False)["y"], x @ onnx.numpy_helper.to_array(w),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError) as e:
        kcompiler.compile(m, target="host")
    assert "--shape x=1x4" in e.value.hint
