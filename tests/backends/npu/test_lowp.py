"""float16 / bfloat16 graphs on the NPU: claimed (not left to the host), computed in float32 with
each op's output rounded to the graph's dtype, and charged at that dtype's element size and at the
chip's rate for it (the report says which rate).

References: float16 against ONNX Runtime on the same float16 model, at a float16 tolerance, and
against ONNX Runtime on the float32 model (the NPU accumulates in float32, so it is closer to that
than ORT's own float16 kernels are on llama-tiny). ONNX Runtime's CPU provider has no bfloat16
kernels for several of these ops (Pow, Gather, ...), so bfloat16 is checked against ORT on the
float32 model (same seed; its weights unrounded) at a bfloat16 tolerance (8-bit mantissa)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from conftest import ort_run
from kcompiler.check import reference_outputs

#: max |error| / max |reference|: float16 vs ORT float16 (whose own float16 RMSNorm is off by 1.1%
#: of scale on llama-tiny), float16 vs ORT float32, bfloat16 vs ORT float32
FP16_VS_ORT16, FP16_VS_ORT32, BF16_VS_ORT32 = 2e-2, 5e-3, 3e-2

MODELS = [("llama-tiny", {}), ("llama-tiny", {"phase": "decode"}), ("bert-tiny", {}), ("gpt2-tiny", {})]


def _widen(feeds):
    return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v
            for k, v in feeds.items()}


def _rel(got, ref):
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(g - r).max() / np.abs(r).max())


@pytest.mark.parametrize("target", ["npu", "atom"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("name,opts", MODELS, ids=[n + ("-" + o["phase"] if o else "") for n, o in MODELS])
def test_tiny_transformers_low_precision(name, opts, dtype, target):
    cm = kcompiler.compile(name, dtype=dtype, target=target, **opts)
    rep_nodes = {p.device for p in cm.parts}
    assert "host" not in rep_nodes, [(p.device, [n.op_type for n in p.nodes]) for p in cm.parts]
    feeds = cm.random_inputs(0)
    outs = cm.run(feeds)
    ref32 = reference_outputs(kcompiler.compile(name, dtype="fp32", target="host", **opts), _widen(feeds))
    want = np.float16 if dtype == "fp16" else __import__("ml_dtypes").bfloat16
    for k, r in ref32.items():
        assert outs[k].dtype == want, (k, outs[k].dtype)
    if dtype == "fp16":
        ref16 = reference_outputs(cm, feeds)
        for k in ref16:
            assert _rel(outs[k], ref16[k]) <= FP16_VS_ORT16, (k, _rel(outs[k], ref16[k]))
            assert _rel(outs[k], ref32[k]) <= FP16_VS_ORT32, (k, _rel(outs[k], ref32[k]))
    else:
        for k in ref32:
            assert _rel(outs[k], ref32[k]) <= BF16_VS_ORT32, (k, _rel(outs[k], ref32[k]))
    assert any(dtype.upper() + " bytes" in n for n in cm.report.notes), cm.report.notes


def _fp16_model(nodes, inputs, outputs, inits=None, elem=TensorProto.FLOAT16):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info(n, elem, s) for n, s in outputs.items()],
                          [numpy_helper.from_array(v, n) for n, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def test_fp16_ops_round_each_output():
    """Each op's output is its float32 result rounded to float16, exactly; ORT's float16 kernels
    agree to float16 precision (softmax of squared float16 values amplifies an ulp of its input)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 48)) * 0.2).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "x2"], ["a"]),
             helper.make_node("Mul", ["a", "a"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    model = _fp16_model(nodes, {"x": [8, 64], "x2": [8, 48]}, {"y": [8, 48]}, {"w": w})
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    feeds = cm.random_inputs(0)
    got = cm.run(feeds)["y"]
    assert got.dtype == np.float16 and cm.report.host_nodes == 0
    x, x2 = (feeds[k].astype(np.float32) for k in ("x", "x2"))
    m = (x @ w.astype(np.float32)).astype(np.float16).astype(np.float32)
    a = (m + x2).astype(np.float16).astype(np.float32)
    s = (a * a).astype(np.float16).astype(np.float32)
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_array_equal(got, (e / e.sum(-1, keepdims=True)).astype(np.float16))
    np.testing.assert_allclose(got.astype(np.float32), ort_run(model, feeds)["y"].astype(np.float32),
                               rtol=3e-2, atol=5e-3)


@pytest.mark.parametrize("target,dtype", [("atom", "fp16"), ("rngd", "bf16")])
def test_low_precision_charged_at_its_size_and_rate(target, dtype):
    """A MatMul's DMA bytes are at the graph dtype's element size, and its matrix time at the chip's
    rate for it: the low-precision one runs natively in one pass; float32, which neither chip lists,
    runs as an emulation charged for every pass (emulation.py): 3 FP16 passes on atom, 6 BF16 passes
    on rngd (moving 4-byte elements either way)."""
    elem = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[dtype]
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    shapes = ({"a": [512, 1024], "b": [1024, 512]}, {"y": [512, 512]})

    def run(e):
        cm = kcompiler.compile(_fp16_model([node], *shapes, elem=e), target=target, place={"*": "npu"},
                               mode="timing")
        rep = cm.simulate()
        (op,) = [o for o in rep.ops if o.op_type == "MatMul"]
        matrix = sum(s for k, s in rep.engine_busy_s.items() if k.endswith(".matrix"))
        return op, rep.notes, matrix

    (low, low_notes, low_mx), (f32, f32_notes, f32_mx) = run(elem), run(TensorProto.FLOAT)
    spec = kcompiler.targets.resolve(target).accelerators[0].chip.spec
    e = spec.energy
    if target == "atom":
        assert 2 * low.dram_bytes == f32.dram_bytes
        assert f32_mx == pytest.approx(3 * low_mx, rel=0.1)  # 3 FP16 passes (tiles may differ slightly)
        # an FP16 MAC (float32 accumulate) costs 2.0 / 0.3 of an INT8 one (Horowitz, ISSCC 2014), the
        # float32 GEMM three of them; the FP16 product's epilogue narrows each accumulator element (one
        # vector op each), the float32 one is stored straight from its accumulator
        mac_delta = (low.energy_j - f32.energy_j) - (low.sram_bytes - f32.sram_bytes) * e.per_sram_byte_j \
            - (low.dram_bytes - f32.dram_bytes) * e.per_dram_byte_j - 512 * 512 * e.per_vector_op_j
        assert mac_delta == pytest.approx(low.macs * e.per_mac_j * (2.0 / 0.3) * (1 - 3), rel=1e-6)
        assert low.dtype == "fp16" and f32.dtype == "fp32 as 3 fp16 passes"
        assert any("FP16 operands (FP16 bytes) on atom" in n for n in low_notes), low_notes
    else:
        # 6 BF16 passes (tiles of half the bytes may be larger: a few percent less matrix time)
        assert f32.dram_bytes > 1.5 * low.dram_bytes and low.macs == f32.macs
        assert f32_mx == pytest.approx(6 * low_mx, rel=0.1)
        assert low.dtype == "bf16" and f32.dtype == "fp32 as 6 bf16 passes"
        assert any("BF16 operands (BF16 bytes) on rngd" in n for n in low_notes), low_notes
    assert any("FP32 bytes" in n and "lists no FP32 rate" in n and "passes" in n for n in f32_notes), f32_notes
