"""Dynamic dims (0, empty, unset, symbolic) bound with --shape, the shape arithmetic after them folded
(passes/shapefold), and stale declared shapes of computed values dropped with a note."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kcompiler
from kcompiler.errors import ShapeError
from kcompiler.frontend import load_model

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(13)
W = RNG.standard_normal((4, 3)).astype(np.float32)


def _model(x_dims, y_dims, nodes=None, inits=(), opset=18) -> onnx.ModelProto:
    """y = x @ W by default, x declared with `x_dims`. (An input or output without any shape is not
    valid ONNX: the checker requires the field, so "unset" dims are the empty ones.)"""
    x = helper.make_tensor_value_info("x", FLOAT, x_dims)
    g = helper.make_graph(nodes or [helper.make_node("MatMul", ["x", "w"], ["y"])], "dims", [x],
                          [helper.make_tensor_value_info("y", FLOAT, y_dims)],
                          [onnx.numpy_helper.from_array(W, "w"), *inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _empty_dim_model() -> onnx.ModelProto:
    """x's first dim has neither a value nor a name (what some exporters write for a dynamic dim)."""
    m = _model([1, 4], [1, 3])
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.output[0].type.tensor_type.shape.dim[0].Clear()
    return m


DYNAMIC = {"zero": lambda: _model([0, 4], [0, 3]), "minus-one": lambda: _model([-1, 4], [-1, 3]),
           "empty": _empty_dim_model,
           "symbolic": lambda: _model(["batch", 4], ["batch", 3])}


@pytest.mark.parametrize("kind", sorted(DYNAMIC))
def test_dynamic_dims_are_bindable(kind):
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    cm = kcompiler.compile(DYNAMIC[kind](), target="npu", shapes={"x": (5, 4)})
    assert cm.inputs["x"][0] == (5, 4)
    np.testing.assert_allclose(cm.run({"x": x})["y"], x @ W, rtol=1e-5, atol=1e-6)
    assert cm.host_share()[0] == 0  # the bound shape reached the MatMul: it ran on the NPU


@pytest.mark.parametrize("kind", ["empty", "symbolic", "minus-one"])
def test_an_unbound_dynamic_dim_asks_for_shape(kind):
    with pytest.raises(ShapeError) as e:
        kcompiler.compile(DYNAMIC[kind](), target="host")
    assert "--shape" in e.value.hint


def test_an_unbound_zero_dim_stays_an_empty_tensor():
    """0 is also a valid size: without --shape the model runs on an empty tensor, as ONNX Runtime does."""
    cm = kcompiler.compile(DYNAMIC["zero"](), target="host")
    assert cm.inputs["x"][0] == (0, 4)
    assert cm.run({"x": np.zeros((0, 4), np.float32)}, simulate=False)["y"].shape == (0, 3)


def test_a_zero_dim_bound_to_zero_is_refused_like_any_non_positive_dim():
    with pytest.raises(ShapeError, match="positive"):
        kcompiler.compile(DYNAMIC["zero"](), target="host", shapes={"x": (0, 4)})


def _shape_chain_model() -> onnx.ModelProto:
    """An exporter's run-time reshape and position slice: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape of x [batch, seq*4], a Slice of a position table up to seq, and a causal mask from
    ConstantOfShape -> Trilu. Nothing but the input shape is unknown."""
    c = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shp", "i1"], ["n"], axis=0),
        helper.make_node("Div", ["n", "four"], ["s"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]), helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"]),
        helper.make_node("Concat", ["b1", "s1", "four1"], ["shape3"], axis=0),
        helper.make_node("Reshape", ["x", "shape3"], ["h"]),  # [b, s, 4]
        helper.make_node("Slice", ["pos", "zero1", "s1", "ax0"], ["p"]),  # [s, 4]
        helper.make_node("Add", ["h", "p"], ["hp"]),
        helper.make_node("Concat", ["s1", "s1"], ["ss"], axis=0),
        helper.make_node("ConstantOfShape", ["ss"], ["fill"], value=helper.make_tensor("v", FLOAT, [1], [-0.5])),
        helper.make_node("Trilu", ["fill", "one"], ["causal"], upper=1),  # [s, s]
        helper.make_node("MatMul", ["hp", "w"], ["mm"]),  # [b, s, 3]
        helper.make_node("MatMul", ["causal", "mm"], ["y"]),
    ]
    pos = onnx.numpy_helper.from_array(RNG.standard_normal((64, 4)).astype(np.float32), "pos")
    inits = [c("i0", 0), c("i1", 1), c("four", 4), c("ax0", [0]), c("four1", [4]), c("zero1", [0]), c("one", 1), pos]
    return _model(["batch", "n"], ["batch", "seq", 3], nodes=nodes, inits=inits)


def test_shape_arithmetic_folds_after_binding():
    m = _shape_chain_model()
    onnx.checker.check_model(m, full_check=True)
    x = RNG.standard_normal((2, 24)).astype(np.float32)
    cm = kcompiler.compile(m, target="npu", shapes={"x": (2, 24)})
    for node in cm.model.graph:
        for v in node.outputs:
            assert v.shape is not None and all(isinstance(d, int) for d in v.shape), (node.op_type, v.shape)
    for v in cm.model.graph.initializers.values():  # folded values carry their tensors' shapes
        assert v.const_value is None or tuple(v.shape) == tuple(v.const_value.shape), v.name
    left = {n.op_type for n in cm.model.graph}
    assert not left & {"Shape", "Gather", "Concat", "ConstantOfShape", "Trilu", "Slice"}, left
    assert cm.host_share()[0] == 0
    np.testing.assert_allclose(cm.run({"x": x})["y"], _ort(m, {"x": x})[0], rtol=1e-4, atol=1e-4)
    # without the pass, the values after the reshape keep symbolic dims and fall back to the host
    before = kcompiler.compile(m, target="npu", shapes={"x": (2, 24)}, disable_passes=("fold-shapes",))
    assert before.host_share()[0] > 0


def test_int_tensors_fold_beyond_the_float_limit():
    """A relative-position table at sequence 300 (90,000 int64s, over the folder's 65,536-element limit)
    is computed at compile time: nothing integer is left to run."""
    c = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "i1"], ["s"], axis=0),
             helper.make_node("Range", ["z", "s", "one"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax0"], ["r0"]), helper.make_node("Unsqueeze", ["r", "ax1"], ["r1"]),
             helper.make_node("Sub", ["r0", "r1"], ["rel"]), helper.make_node("Abs", ["rel"], ["a"]),
             helper.make_node("Min", ["a", "cap"], ["bucket"]),
             helper.make_node("Gather", ["table", "bucket"], ["bias"]),  # [S, S, 4]
             helper.make_node("ReduceSum", ["bias", "ax1"], ["bs"], keepdims=0),  # [S, 4]
             helper.make_node("Add", ["x", "bs"], ["xa"]), helper.make_node("MatMul", ["xa", "w"], ["y"])]
    table = onnx.numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "table")
    m = _model(["s", 4], ["s", 3], nodes=nodes, inits=[c("i1", 0), c("z", 0), c("one", 1), c("ax0", [0]),
                                                       c("ax1", [1]), c("cap", 7), table])
    x = RNG.standard_normal((300, 4)).astype(np.float32)
    cm = kcompiler.compile(m, target="host", shapes={"x": (300, 4)})
    assert not {"Range", "Sub", "Abs", "Min", "Shape"} & {n.op_type for n in cm.model.graph}
    np.testing.assert_allclose(cm.run({"x": x}, simulate=False)["y"], _ort(m, {"x": x})[0], rtol=1e-4, atol=1e-3)


def test_a_stale_declared_output_shape_is_dropped_with_a_note(caplog):
    """ddddocr's common.onnx declares its output [1, seqlen] but computes a rank-3 tensor; ONNX Runtime
    only warns. The declared shape is dropped, the warning and the report's note name the value."""
    m = _model(["batch", 4], ["batch", "seq", 3])
    with caplog.at_level(logging.WARNING, logger="kcompiler.frontend"):
        cm = kcompiler.compile(m, target="host", shapes={"x": (2, 4)})
    assert any("'y'" in r.getMessage() and "rank 2" in r.getMessage() for r in caplog.records)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(cm.run({"x": x}, simulate=False)["y"], x @ W, rtol=1e-5, atol=1e-6)
    assert any("'y'" in n for n in cm.report.notes)


def test_a_declared_dim_that_contradicts_the_graph_is_dropped_too():
    """The same rank with a wrong dim ([2, 7] for a [2, 3] result): dropped, named, and the values right."""
    irm, src = load_model(_model([2, 4], [2, 7]))
    assert tuple(irm.graph.outputs[0].shape) == (2, 3)
    assert len(src.notes) == 1 and "'y' [2,7]" in src.notes[0] and "[2,3]" in src.notes[0]


def test_a_consistent_declared_shape_is_kept():
    irm, src = load_model(_model(["batch", 4], ["batch", 3]), shapes={"x": (2, 4)})
    assert tuple(irm.graph.outputs[0].shape) == (2, 3) and not src.notes


def test_an_inconsistent_input_is_still_an_error():
    """Only computed values' declared shapes are dropped: a --shape contradicting the graph still fails."""
    m = _model(["batch", 5], ["batch", 3])
    with pytest.raises(ShapeError):
        kcompiler.compile(m, target="host", shapes={"x": (2, 5)})


def test_a_huge_range_from_the_bound_shape_is_refused_before_it_is_built():
    """Range(0, n * 10^11) where n comes from the input's shape through ReduceSum (which ONNX does not
    propagate at load time): folding must not allocate its 3 TB; re-inference names it instead."""
    c = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceSum", ["s"], ["n"], keepdims=0),
             helper.make_node("Mul", ["n", "big"], ["e"]), helper.make_node("Range", ["z", "e", "one"], ["r"]),
             helper.make_node("ReduceSum", ["r"], ["t"], keepdims=1), helper.make_node("Cast", ["t"], ["tf"], to=FLOAT),
             helper.make_node("Add", ["x", "tf"], ["y"])]
    g = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", FLOAT, ["n"])], [c("big", 10**11), c("z", 0), c("one", 1)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(ShapeError, match="'r' has shape"):
        kcompiler.compile(m, target="host", shapes={"x": (4,)})


def test_a_resize_with_a_negative_scale_is_refused_naming_the_node(tmp_path):
    """Issue 13's bad input: a Resize whose constant scales are negative gives a negative output dim;
    the error names the node that made it, not only the value."""
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])
    sc = numpy_helper.from_array(np.array([1, 1, -2, 2], np.float32), "sc")
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], name="up1", mode="nearest")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [sc]),
                              opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    path = tmp_path / "neg.onnx"
    onnx.save(model, path)
    with pytest.raises(ShapeError, match=r"Resize node 'up1'.*negative dim"):
        kcompiler.compile(str(path), target="npu")


def _ids_and_mask() -> onnx.ModelProto:
    """An exported encoder's two inputs share the named dims 'batch' and 'sequence'; the ids index a
    3-row table (as token_type_ids index 2 rows)."""
    table = onnx.numpy_helper.from_array(RNG.standard_normal((3, 4)).astype(np.float32), "table")
    ids = helper.make_tensor_value_info("ids", INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("mask", INT64, ["batch", "sequence"])
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    g = helper.make_graph(nodes, "enc", [ids, mask], [helper.make_tensor_value_info("y", FLOAT, ["b", "s", 4])],
                          [table, onnx.numpy_helper.from_array(np.array([2], np.int64), "ax")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_binding_one_input_sizes_the_named_dims_the_others_share():
    model = _ids_and_mask()
    cm = kcompiler.compile(model, target="npu", shapes={"ids": [2, 5]})
    assert cm.inputs["mask"][0] == (2, 5)
    feeds = cm.random_inputs(0)
    assert feeds["ids"].max() < 3, "random ids must stay inside the 3-row table they index"
    np.testing.assert_allclose(cm.run(feeds)["y"], _ort(model, feeds)[0], rtol=1e-6)


def test_one_named_dim_bound_to_two_sizes_is_refused():
    with pytest.raises(ShapeError, match=r"dim 'sequence' is bound to 5 by input 'ids' but to 6"):
        kcompiler.compile(_ids_and_mask(), target="host", shapes={"ids": [2, 5], "mask": [2, 6]})


def test_placeholder_dim_names_are_not_shared_sizes():
    """Paddle2ONNX writes '?' for every open dim (PP-OCR's cls: [-1, 3, '?', '?']): binding 48x192 must not
    read as one dim bound to two sizes."""
    x = helper.make_tensor_value_info("x", FLOAT, [-1, 3, "?", "?"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "pp", [x],
                          [helper.make_tensor_value_info("y", FLOAT, [-1, 3, "?", "?"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    cm = kcompiler.compile(model, target="host", shapes={"x": [1, 3, 48, 192]})
    assert cm.inputs["x"][0] == (1, 3, 48, 192)
