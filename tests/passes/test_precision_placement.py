"""Accuracy-aware placement (kcompiler.passes.precision): on aim (BF16 element-wise units) and atom+aim, a
normalisation written from primitives as exporters write it and the ops feeding a Softmax stay on a
device computing float32 unless the user allows 16-bit; allowed, they go to aim and the answer moves
by a BF16-sized error. The model's product (x @ W) has BF16-representable operands, so the PIM's GEMV
(BF16 multipliers, FP32 accumulation) is float32-exact and what remains is what placement decides."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.cli import cli as cli_main
from kcompiler.passes.placement import DEVICE_KEY, PRECISION_KEY, placement_text
from kcompiler.passes.precision import sensitive_nodes

D, M, N_MASKED = 64, 8, 16


def _bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _model(seed: int = 0) -> onnx.ModelProto:
    """x @ W1 + b1 (a mean of ~30 over a spread of ~1: what a 16-bit rounding of the normalisation's input
    hurts), LayerNorm as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div, gamma and beta, the Div by sqrt(d) as a
    Mul, an additive mask, Softmax."""
    rng = np.random.default_rng(seed)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [init("W1", _bf16(rng.standard_normal((D, D)) / 8)), init("b1", 30.0 + rng.standard_normal(D)),
             init("eps", [1e-5]), init("gamma", 1 + 0.1 * rng.standard_normal(D)),
             init("beta", 0.1 * rng.standard_normal(D)), init("scale", [0.125]),
             init("mask", np.where(rng.random((1, 1, D)) < 0.25, -1e4, 0.0)),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "W1"], ["h"], name="proj"),
             mk("Add", ["h", "b1"], ["h2"], name="proj_bias"),
             mk("ReduceMean", ["h2", "axes"], ["mu"], name="ln_mean"),
             mk("Sub", ["h2", "mu"], ["d"], name="ln_sub"),
             mk("Mul", ["d", "d"], ["d2"], name="ln_sq"),
             mk("ReduceMean", ["d2", "axes"], ["var"], name="ln_var"),
             mk("Add", ["var", "eps"], ["ve"], name="ln_eps"),
             mk("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
             mk("Div", ["d", "sd"], ["nrm"], name="ln_div"),
             mk("Mul", ["nrm", "gamma"], ["g"], name="ln_gamma"),
             mk("Add", ["g", "beta"], ["y"], name="ln_beta"),
             mk("Mul", ["y", "scale"], ["ys"], name="scale"),
             mk("Add", ["ys", "mask"], ["sm"], name="add_mask"),
             mk("Softmax", ["sm"], ["p"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "ln_softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, D])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, M, D])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.fixture(scope="module")
def case():
    m = _model()
    x = _bf16(np.random.default_rng(1).standard_normal((1, M, D)))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    runs = {}
    for target in ("aim", "atom+aim"):
        for allow in (False, True):
            cm = kcompiler.compile(m, target=target, allow_low_precision=allow)
            runs[target, allow] = (cm, cm.run({"x": x})["p"])
    return m, x, ref, runs


def _on_aim(cm) -> set[str]:
    """Op types of the nodes placed on aim (fusion may rename the nodes on atom+aim)."""
    return {n.op_type for n in cm.model.graph if n.metadata_props.get(DEVICE_KEY) == "aim"}


@pytest.mark.parametrize("target", ["aim", "atom+aim"])
def test_default_keeps_normalisation_and_softmax_inputs_in_fp32(case, target):
    _, _, ref, runs = case
    cm, p = runs[target, False]
    assert _on_aim(cm) == {"MatMul"}, placement_text(cm.model)  # the PIM keeps the GEMV it is for
    kept = [n for n in cm.model.graph if n.metadata_props.get(PRECISION_KEY)]
    assert any(n.name == "proj_bias" for n in kept), placement_text(cm.model)
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target", ["aim", "atom+aim"])
def test_allowed_low_precision_goes_to_aim_with_a_bf16_error(case, target):
    _, _, ref, runs = case
    cm, p = runs[target, True]
    assert "Add" in _on_aim(cm), placement_text(cm.model)
    assert not any(n.metadata_props.get(PRECISION_KEY) for n in cm.model.graph)
    err = float(np.max(np.abs(p - ref)))
    # the bias Add rounds ~30 to BF16's 8 bits (a step of 0.125): after the normalisation (spread ~1) and
    # the softmax, an error far above float32's and below the values themselves
    assert 1e-4 < err < 0.5, err
    assert float(np.max(np.abs(runs[target, False][1] - ref))) < err / 100


def test_structure_names_each_reason():
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(_model()))
    found = sensitive_nodes(model.graph)
    why = {n.name: found.get(id(n)) for n in model.graph}
    assert why["proj"] is None  # products are not judged
    assert "feeds the normalisation" in why["proj_bias"]
    for name in ("ln_mean", "ln_sub", "ln_sq", "ln_var", "ln_eps", "ln_sqrt", "ln_div"):
        assert why[name] and "normalisation" in why[name], (name, why[name])
    for name in ("ln_gamma", "ln_beta", "scale", "add_mask"):
        assert why[name] == "feeds Softmax 'softmax'", (name, why[name])


def test_pin_allows_16_bit(case):
    m, x, ref, _ = case
    cm = kcompiler.compile(m, target="aim", place={"proj_bias": "aim"}, mode="timing")
    dev = {n.name: n.metadata_props.get(DEVICE_KEY) for n in cm.model.graph}
    assert dev["proj_bias"] == "aim" and dev["add_mask"] == "host"


def test_inspect_and_placement_text_say_why(case, tmp_path):
    m, _, _, runs = case
    text = placement_text(runs["aim", False][0].model)
    assert "kept in FP32: feeds Softmax 'softmax'; aim computes BF16; --allow-low-precision to allow" in text
    path = tmp_path / "ln_softmax.onnx"
    onnx.save(m, path)
    res = CliRunner().invoke(cli_main, ["inspect", str(path), "--target", "aim"], terminal_width=400)
    assert res.exit_code == 0, res.output
    assert "kept off 16-bit devices" in res.output and "aim computes BF16" in res.output
    res = CliRunner().invoke(cli_main, ["compile", str(path), "--target", "aim", "--mode", "timing",
                                        "--print-after", "placement", "--allow-low-precision", "-o",
                                        str(tmp_path / "m.kcm")], terminal_width=400)
    assert res.exit_code == 0, res.output
    assert "proj_bias" in res.output and "kept in FP32" not in res.output
