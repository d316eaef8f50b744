"""Exporter-style transformers (zoo.exported): symbolic batch/sequence bound by --shape, the shape and
mask arithmetic folded or left to the host with a static shape, every MatMul, Gemm, Conv,
LayerNormalization and Softmax on the NPU, and the values of ONNX Runtime on host and npu."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompiler
from kcompiler import opinfo
from kcompiler.zoo import entries, exported as E

#: the ops that must run on the NPU, and the share of their FLOPs it must take
KEY_OPS = {"MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax"}
MIN_NPU_SHARE = 0.95
#: ONNX's own fused ops (opset 23) that fusion writes, and the key ops they stand for
STANDS_FOR = {"Attention": ["MatMul", "Softmax", "MatMul"]}
#: the shapes bound with --shape; the last sequence is padded, so the masks matter
BATCH, SEQ = 2, 16
#: one layer each (the zoo's default is 2): the patterns are all in the first, and the file stays fast
LAYERS = 1


def _feeds(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs; the attention mask pads the end of the last sequence (the masks matter)."""
    rng = np.random.default_rng(seed)
    if name == "vit-exported":
        return {"pixel_values": rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)}
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[-1, -3:] = 0
    feeds = {"input_ids": rng.integers(0, E.VOCAB, (BATCH, SEQ)).astype(np.int64), "attention_mask": mask}
    if name == "bert-exported":
        feeds["token_type_ids"] = (np.arange(SEQ)[None, :] >= SEQ // 2).astype(np.int64).repeat(BATCH, 0)
    return feeds


def _base_ops(model, node) -> list[str]:
    """The ONNX ops a node stands for: itself, the ops of a standard fused op, or the body of the
    kcompiler function it is."""
    if node.domain in ("", "ai.onnx"):
        return STANDS_FOR.get(node.op_type, [node.op_type])
    fn = model.functions.get(node.op_identifier())
    return [node.op_type] if fn is None else [t for n in fn for t in _base_ops(model, n)]


@pytest.fixture(scope="module", params=sorted(E.MODELS))
def case(request):
    name = request.param
    feeds = _feeds(name)
    proto = E.build(name, layers=LAYERS)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    shapes = {k: v.shape for k, v in feeds.items()}
    return name, proto, feeds, ref, {t: kcompiler.compile(name, target=t, shapes=shapes, layers=LAYERS)
                                     for t in ("host", "npu")}


def test_models_are_valid_onnx_with_symbolic_inputs():
    assert set(E.MODELS) <= set(entries())
    for name in E.MODELS:
        proto = E.build(name)
        onnx.checker.check_model(proto, full_check=True)
        dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == "batch" and (name == "vit-exported" or dims[1] == "sequence")
        ops = {n.op_type for n in proto.graph.node}
        assert {"Shape", "Gather", "Concat", "Reshape"} <= ops  # run-time shape reads, as exporters write


def test_values_match_onnxruntime(case):
    name, _, feeds, ref, compiled = case
    for target, cm in compiled.items():
        outs = cm.run(feeds, simulate=False)
        for got, want in zip(outs.values(), ref):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} on {target}")


def test_every_key_op_runs_on_the_npu(case):
    """0 MatMul/Gemm/Conv/LayerNormalization/Softmax on the host and >= 95% of their FLOPs on the NPU;
    what the host keeps is mask arithmetic on int/bool tensors, every value of it static."""
    name, _, _, _, compiled = case
    cm = compiled["npu"]
    host = cm.system.host.name
    key_flops = {"host": 0, "npu": 0}
    for part in cm.parts:
        where = "host" if part.device == host else "npu"
        for node in part.nodes:
            ops = set(_base_ops(cm.model, node))
            if ops & KEY_OPS:
                assert where == "npu", f"{name}: {node.name} ({node.op_type}) on the host"
                key_flops[where] += opinfo.flops(node)
            if where == "host":
                assert not ops & KEY_OPS
                for v in node.outputs:
                    assert v.shape is not None and all(isinstance(d, int) for d in v.shape), (name, node.name)
    assert key_flops["npu"] > 0 and key_flops["npu"] / sum(key_flops.values()) >= MIN_NPU_SHARE
    on_host, total, host_flops = cm.host_share()
    assert host_flops < 1 - MIN_NPU_SHARE, (name, on_host, total, host_flops)


def test_shape_arithmetic_is_folded(case):
    """With the inputs bound, no Shape read or int64 shape chain is left to run: only the attention
    mask's own arithmetic (it depends on the mask's values) stays."""
    name, proto, _, _, compiled = case
    left = [n.op_type for n in compiled["npu"].model.graph]
    assert "Shape" not in left and "Range" not in left and "ConstantOfShape" not in left, (name, left)
    assert len(left) < len(proto.graph.node) / 2


def test_without_binding_the_error_names_the_inputs():
    with pytest.raises(kcompiler.errors.ShapeError) as e:
        kcompiler.compile("gpt2-exported", target="host")
    assert "input_ids" in str(e.value) and "--shape" in e.value.hint
