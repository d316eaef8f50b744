"""Quantised models users bring, through the frontend and `--target host`: broken ones give a KCError
naming the node and tensor (quant_hostile_cases.py, API and `kc`), good ones load intact and run
with ONNX Runtime's values (QOperator, FP8 QDQ, MatMulNBits), at their own opset or an old one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import kcompiler
from kcompiler.cli import cli
from kcompiler.errors import KCError
from kcompiler.frontend import load_model

from quant_hostile_cases import CASES, Case, matmul_nbits, qdq_matmul, qlinear_matmul

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
import qdq_models as qm  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_quantised_model_gives_kcerror(case: Case, tmp_path: Path):
    call = case.build(tmp_path)
    with pytest.raises(KCError) as info:
        kcompiler.compile(call.model, target=call.target)
    assert isinstance(info.value, case.error), f"{case.id}: got {type(info.value).__name__}: {info.value}"
    for name in call.names:
        assert name in str(info.value), f"{case.id}: message does not name {name!r}: {info.value}"


@pytest.mark.parametrize("case", CASES[:3] + CASES[-3:], ids=[c.id for c in CASES[:3] + CASES[-3:]])
def test_broken_quantised_model_on_command_line(case: Case, tmp_path: Path):
    call = case.build(tmp_path)
    result = CliRunner().invoke(cli, call.cli_args(tmp_path), catch_exceptions=True)
    assert result.exit_code == 1 and "Traceback" not in result.output and result.output.startswith("kc: ")
    assert all(" ".join(n.split()) in " ".join(result.output.split()) for n in call.names), result.output


@pytest.mark.parametrize("model", [qdq_matmul(), qlinear_matmul(), matmul_nbits()], ids=["qdq", "qoperator", "nbits"])
def test_valid_hand_written_models_load(model):
    """The builders the hostile cases break are valid as they stand (so each case tests one fault)."""
    load_model(model)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    conv, mlp = qm.conv_net(opset=13), qm.mlp(opset=13)
    return {"conv-qoperator-u8": qm.quantize(conv, root, "qoperator", "uint8"),
            "conv-qoperator-s8": qm.quantize(conv, root, "qoperator", "int8"),
            "attention-qoperator": qm.quantize(qm.attention_block(), root, "qoperator", "uint8"),
            "mlp-fp8": qm.quantize(qm.mlp(), root, "qdq", "fp8", "fp8"),
            "mlp-nbits4-opset13": qm.nbits(mlp), "mlp-nbits8": qm.nbits(qm.mlp(), bits=8),
            "attention-nbits4": qm.nbits(qm.attention_block()),
            "conv-dynamic": qm.quantize_dynamic(conv, root), "attention-dynamic": qm.quantize_dynamic(
                qm.attention_block(), root / "a", per_channel=True)}


NAMES = ["conv-qoperator-u8", "conv-qoperator-s8", "attention-qoperator", "mlp-fp8", "mlp-nbits4-opset13",
         "mlp-nbits8", "attention-nbits4", "conv-dynamic", "attention-dynamic"]


@pytest.mark.parametrize("name", NAMES)
def test_quantised_model_runs_on_host_like_ort(models, name):
    q = models[name]
    cm = kcompiler.compile(q, target="host")
    ms = {(n.domain or "", n.op_type) for n in cm.model.graph if n.domain == "com.microsoft"}
    assert ms == {("com.microsoft", n.op_type) for n in q.graph.node if n.domain == "com.microsoft"}
    assert cm.model.opset_imports.get("com.microsoft", 1) == 1
    for feeds in qm.calibration(q, 2, seed=4):
        got = cm.run(feeds)
        for want, value in zip(qm.ort_run(q, feeds), got.values(), strict=True):
            np.testing.assert_array_equal(value, want)


def test_cleanup_keeps_quantised_weights(models):
    """Folding must not de-quantise: every int8/fp8 weight DequantizeLinear and every packed
    MatMulNBits weight is still there after cleanup."""
    from kcompiler.passes import CompileContext, run_pipeline

    for name in ("mlp-fp8", "mlp-nbits4-opset13"):
        q = models[name]
        model, _ = load_model(q)
        run_pipeline(model, CompileContext(), "cleanup")
        before = sorted(n.op_type for n in q.graph.node if n.op_type in ("DequantizeLinear", "MatMulNBits"))
        after = sorted(n.op_type for n in model.graph if n.op_type in ("DequantizeLinear", "MatMulNBits"))
        assert after == before, name


def test_old_opset_qoperator_is_converted_keeping_microsoft_ops(models):
    model, src = load_model(models["conv-qoperator-u8"])
    assert model.opset_imports[""] == 23 and model.opset_imports["com.microsoft"] == 1
    assert not [n for n in src.notes if "kept opset" in n]
    assert {n.op_type for n in model.graph} >= {"QLinearConv", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool"}


def test_model_with_bad_scale_never_reaches_ort(tmp_path, monkeypatch):
    """The check runs at load: no ONNX Runtime session is made for a model with a zero scale."""
    import onnxruntime

    made = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: made.append(a))
    path = tmp_path / "m.onnx"
    onnx.save(qdq_matmul(xs=0.0), path)
    with pytest.raises(KCError):
        kcompiler.compile(str(path), target="host")
    assert not made


def test_silenced_root_logger_does_not_hide_shape_errors(tmp_path):
    """ORT's quantiser (and many applications) set the root logger's level: strict shape inference
    must still see its failure record and raise, not load an inconsistent model."""
    import logging

    from onnx import TensorProto, helper

    from kcompiler.errors import ShapeError

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="add")], "bad",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with pytest.raises(ShapeError):
            load_model(model)
    finally:
        root.setLevel(level)
