"""Resize and ConvTranspose on the NPU (kernels/resize.py, kernels/convtranspose.py): the modes
detectors' exporters write run natively and match ONNX Runtime; their tables (interpolation
matrices, flipped weights, copy strides) are in the program, so mutating them changes the answer;
what is not lowered (tf_crop_and_resize, a runtime scale, 1-D ConvTranspose) stays on the host with
its reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run

import kcompiler
from kcompiler.backends.npu import isa, mutate
from kcompiler.backends.npu.kernels.resize import axis_matrix, copy_pattern
from kcompiler.passes.placement import REASON_KEY


def _resize_model(xs, mode="nearest", ctm="half_pixel", nearest="round_prefer_floor", scales=None, sizes=None,
                  runtime_scales=False):
    inits = [numpy_helper.from_array(np.zeros(0, np.float32), "roi")]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)]
    if scales is not None:
        arr = np.asarray(scales, np.float32)
        if runtime_scales:
            ins.append(helper.make_tensor_value_info("scales", TensorProto.FLOAT, [len(scales)]))
        else:
            inits.append(numpy_helper.from_array(arr, "scales"))
        names = ["x", "roi", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        names = ["x", "roi", "", "sizes"]
    node = helper.make_node("Resize", names, ["y"], mode=mode, coordinate_transformation_mode=ctm,
                            nearest_mode=nearest)
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(xs))],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


def _convt_model(xs, ws, bias=True, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(ws).astype(np.float32), "w")]
    names = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(ws[1] * attrs.get("group", 1)).astype(np.float32),
                                             "b"))
        names.append("b")
    node = helper.make_node("ConvTranspose", names, ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(xs))], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _native(model, seed=0, rtol=1e-5, atol=1e-5):
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0, [(s.device, [n.op_type for n in s.nodes]) for s in cm.parts]
    xs = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(xs).astype(np.float32)
    got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return cm


def _program(cm):
    (prog,) = [p for p in cm.programs if hasattr(p, "instrs")]
    return prog


@pytest.mark.parametrize("kw", [
    dict(scales=[1, 1, 2, 2]),  # YOLO / FPN upsampling: one DMA copy
    dict(scales=[1, 1, 0.5, 0.5], nearest="ceil"),
    dict(mode="linear", scales=[1, 1, 2, 2]),
    dict(mode="linear", ctm="align_corners", sizes=[1, 3, 9, 4]),
    dict(mode="linear", ctm="pytorch_half_pixel", scales=[1, 1, 0.6, 1.7]),
    dict(ctm="asymmetric", scales=[1, 1, 3, 2]),  # round_prefer_floor of x/3: not a repeat, GEMMs
    dict(mode="cubic", ctm="asymmetric", scales=[1, 1, 1.5, 1]),
])
def test_resize_modes_match_onnxruntime(kw):
    _native(_resize_model([1, 3, 5, 6], **kw))


def test_nearest_upsampling_is_a_copy_and_linear_is_gemms():
    cm = _native(_resize_model([1, 3, 5, 6], scales=[1, 1, 2, 2]))
    assert {isa.OPCODES[i.opcode][0] for i in _program(cm).instrs} == {"copy"}
    cm = _native(_resize_model([1, 3, 5, 6], mode="linear", scales=[1, 1, 2, 2]))
    ops = [isa.OPCODES[i.opcode][0] for i in _program(cm).instrs]
    assert "mm" in ops and "barrier" in ops


def test_interpolation_matrices_follow_onnx_reference():
    """Rows sum to one; half_pixel 2x linear weights are 0.25/0.75; nearest picks are one-hot."""
    m = axis_matrix(4, 8, 2.0, "linear", "half_pixel")
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[1, :2], [0.75, 0.25])
    assert copy_pattern(axis_matrix(4, 8, 2.0, "nearest", "half_pixel")) == (2, 1, 0)
    assert copy_pattern(axis_matrix(8, 4, 0.5, "nearest", "asymmetric")) == (1, 2, 0)
    assert copy_pattern(m) is None


def test_a_mutated_interpolation_matrix_changes_the_answer():
    """The matrices are weight-image bytes: the mutation tester's image flips are detected."""
    cm = kcompiler.compile(_resize_model([1, 2, 4, 4], mode="linear", scales=[1, 1, 2, 2]), target="npu",
                           place={"*": "npu"})
    prog = _program(cm)
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 2, 4, 4)).astype(np.float32)} for s in (0, 1)]
    score = mutate.score_npu(prog, feeds, 40, seed=5)
    bad = [(o.kind, o.where) for o in score.outcomes if o.result in ("survived", "crash")]
    assert score.ratio >= 0.99, bad
    assert score.count("detected", "image") > 0


def test_what_is_not_lowered_stays_on_the_host_with_a_reason():
    model = _resize_model([1, 3, 4, 4], ctm="tf_crop_and_resize", sizes=[1, 3, 8, 8])
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    (node,) = [n for n in cm.model.graph if n.op_type == "Resize"]
    assert node.metadata_props.get("kcompiler.device") == "host"
    assert "tf_crop_and_resize" in node.metadata_props.get(REASON_KEY, "")
    cm = kcompiler.compile(_convt_model((1, 2, 5), (2, 3, 3), strides=[2]), target="npu", place={"*": "npu"})
    (node,) = [n for n in cm.model.graph if n.op_type == "ConvTranspose"]
    assert "only 2-D ConvTranspose" in node.metadata_props.get(REASON_KEY, "")


@pytest.mark.parametrize("xs,ws,kw", [
    ((1, 8, 5, 6), (8, 4, 2, 2), dict(strides=[2, 2])),  # PP-OCR det's head: GEMM + scatter
    ((2, 6, 3, 4), (6, 3, 3, 2), dict(strides=[3, 2])),
    ((1, 8, 5, 6), (8, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((1, 4, 5, 5), (4, 2, 3, 3), dict(strides=[2, 1], dilations=[1, 2], group=2)),
    ((1, 3, 4, 4), (3, 2, 3, 3), dict(strides=[2, 2], output_shape=[9, 9], auto_pad="SAME_UPPER")),
])
def test_convtranspose_matches_onnxruntime(xs, ws, kw):
    _native(_convt_model(xs, ws, **kw), rtol=1e-4, atol=1e-5)


def test_stride_equal_to_kernel_convtranspose_spends_no_mac_on_zeros():
    """A 2x2 stride-2 ConvTranspose is one GEMM of the input's own MACs (no zero insertion)."""
    cm = _native(_convt_model((1, 8, 5, 6), (8, 4, 2, 2), strides=[2, 2]), rtol=1e-4)
    prog = _program(cm)
    assert not any(i.opcode == isa.FILL for i in prog.instrs)
    assert any(i.opcode == isa.COPY for i in prog.instrs)
    cm = _native(_convt_model((1, 8, 5, 6), (8, 4, 3, 3), strides=[2, 2]), rtol=1e-4)
    assert any(i.opcode == isa.FILL for i in _program(cm).instrs)  # zero insertion
