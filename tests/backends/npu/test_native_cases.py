"""ONNX node test cases the NPU completes natively: every node on the NPU (none on the host) and
the outputs equal to onnx's expected ones, at the case's own tolerances. Each case here was a
native wrong answer, or ran on the host, before the change that lists it
(benchmarks/npu_native_conformance.py counts all of them)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conformance"))

from onnx_cases import ensure_cases, load_case  # noqa: E402
from test_onnx_node import _assert_similar  # noqa: E402

from kcompiler import onnx_backend  # noqa: E402

#: case -> why it is here
CASES = {
    # the running softmax sum adds P as the P.V matmul reads it (rounded to fp16), not as computed
    "test_attention_4d_fp16": "fp16 attention: output divided by the sum of the weights it was made of",
    # LayerNormalization's Mean and InvStdDev (graph outputs): reduce_mean and reduce_rstd over its rows
    "test_layer_normalization_3d_axis1_epsilon": "LayerNorm Mean/InvStdDev over two axes, epsilon",
    "test_layer_normalization_4d_axis_negative_2": "LayerNorm Mean/InvStdDev, negative axis",
    "test_layer_normalization_2d_axis0": "LayerNorm Mean/InvStdDev over every axis",
    # elementwise functions of the vector unit
    "test_sin": "Sin", "test_acosh": "Acosh", "test_atanh": "Atanh", "test_tan_example": "Tan",
    "test_celu_float16": "Celu (alpha), float16", "test_selu": "Selu (alpha, gamma)", "test_shrink_soft": "Shrink",
    "test_thresholdedrelu": "ThresholdedRelu", "test_mish": "Mish", "test_round": "Round (halves to even)",
    "test_softsign": "Softsign", "test_swish": "Swish (alpha)", "test_prelu_broadcast": "PRelu, broadcast slope",
    # along one axis
    "test_hardmax_one_hot": "Hardmax: the first of equal maxima", "test_hardmax_axis_1": "Hardmax, axis 1",
    "test_logsoftmax_large_number": "LogSoftmax", "test_reduce_min_default_axes_keepdims_random": "ReduceMin",
    # float casts: the vector unit's copy into another dtype
    "test_cast_FLOAT_to_BFLOAT16": "Cast to bfloat16 (round to nearest even)",
    "test_castlike_FLOAT16_to_FLOAT": "CastLike",
}


def run_native(name: str):
    model, data_sets, rtol, atol = load_case(ensure_cases(), name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = onnx_backend.prepare(model, "CPU", target="npu", place={"*": "npu"})
        outs = [rep.run(inputs) for inputs, _ in data_sets]
    cm = rep.compiled
    host = [n.op_type for n in cm.model.graph if n.metadata_props.get("kcompiler.device", "") == cm.system.host.name]
    assert not host, f"{name}: nodes on the host: {host}"
    for (_, expected), got in zip(data_sets, outs):
        _assert_similar(expected, list(got), rtol, atol, name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_runs_natively_and_right(name):
    run_native(name)
