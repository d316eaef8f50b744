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
