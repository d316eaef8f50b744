"""ONNX Attention variants the NPU completes (kernels/attention.py): is_causal and sliding windows
(a band of keys attn_step hides outside, bottom-right aligned on a past cache), softcap (on the
score tile before the mask), boolean masks, a past KV cache with present_key/present_value written
by DRAM copies, and fully masked rows (0, as ONNX's guard says). Values against onnx's reference;
qk_matmul_output and nonpad_kv_seqlen are not claimed."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from conftest import assert_walk_equals_replay, rand

import kcompiler
from kcompiler.backends.npu import isa, mutate
from kcompiler.passes.placement import REASON_KEY

B, H, S, P, D = 1, 2, 5, 3, 8


def _model(attrs, mask=None, past=False, opset=23, qk_out=False):
    ins = ["q", "k", "v", "m" if mask else "", "pk" if past else "", "pv" if past else ""]
    outs = ["y", "present_k" if past else "", "present_v" if past else "", "qk" if qk_out else ""]
    while ins and not ins[-1]:
        ins.pop()
    while outs and not outs[-1]:
        outs.pop()
    node = helper.make_node("Attention", ins, outs, **attrs)
    t = S + (P if past else 0)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, S, D]) for n in "qkv"]
    if mask:
        vi.append(helper.make_tensor_value_info("m", mask, [S, t]))
    if past:
        vi += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, P, D]) for n in ("pk", "pv")]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, H, S, D])]
    if past:
        out += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, t, D]) for n in ("present_k", "present_v")]
    if qk_out:
        out.append(helper.make_tensor_value_info("qk", TensorProto.FLOAT, [B, H, S, t]))
    m = helper.make_model(helper.make_graph([node], "g", vi, out), opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shp = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[vi.name] = rng.random(shp) > 0.3
        else:
            feeds[vi.name] = rand(*shp, seed=seed + len(feeds))
    return feeds


def _check(model, seed=0):
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert cm.report.host_nodes == 0, [n.metadata_props.get(REASON_KEY) for n in cm.model.graph]
    feeds = _feeds(model, seed)
    got = cm.run(feeds)
    assert_walk_equals_replay(cm, feeds, got)  # the instruction-by-instruction walk gives the same bits
    names = [o.name for o in model.graph.output]
    for name, want in zip(names, ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
    return cm


@pytest.mark.parametrize("attrs,mask,past,opset", [
    ({"is_causal": 1}, None, False, 23),
    ({"is_causal": 1}, TensorProto.FLOAT, True, 23),
    ({"softcap": 2.0}, TensorProto.FLOAT, False, 23),
    ({"softcap": 3.0, "is_causal": 1}, TensorProto.BOOL, True, 23),
    ({"left_window_size": 1, "right_window_size": 2}, None, True, 25),
])
def test_attention_variant_matches_onnx_reference_on_the_npu(attrs, mask, past, opset):
    _check(_model(attrs, mask, past, opset))


def test_a_fully_masked_row_is_zero():
    model = _model({}, TensorProto.BOOL)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    feeds = _feeds(model, 4)
    feeds["m"][2] = False
    got = cm.run(feeds)["y"]
    (want,) = ReferenceEvaluator(model).run(None, feeds)
    assert np.all(got[:, :, 2] == 0) and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs,mask", [({}, None), ({"qk_matmul_output_mode": 2}, TensorProto.FLOAT),
                                        ({"qk_matmul_output_mode": 1, "softcap": 2.5}, TensorProto.FLOAT)])
def test_qk_matmul_output_is_the_second_pass_scores(attrs, mask):
    cm = _check(_model(attrs, mask, True, qk_out=True))
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    assert sum(i.opcode == isa.MATMUL for i in prog.data.instrs) >= 3  # QK, PV, and QK again for the output


@pytest.mark.parametrize("attrs,mask,why", [({"qk_matmul_output_mode": 3}, None, "mode 3"),
                                            ({"qk_matmul_output_mode": 2, "is_causal": 1}, None, "band")])
def test_qk_matmul_output_modes_the_kernel_lacks_are_not_claimed(attrs, mask, why):
    model = _model(attrs, mask, True, qk_out=True)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    (node,) = list(cm.model.graph)
    assert node.metadata_props["kcompiler.device"] == "host"
    assert why in node.metadata_props[REASON_KEY]


def test_a_mutated_band_changes_the_result():
    cm = _check(_model({"is_causal": 1}, None, True))
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    steps = [i for i in prog.data.instrs if i.opcode == isa.VECTOR and isa.VFN_NAMES[i.aux] == "attn_step"]
    assert steps and all(i.fields()["arg"] & 2 for i in steps)
    names = [b.name for b in prog.data.inputs]
    model = _model({"is_causal": 1}, None, True)
    feeds = [{k: v for k, v in _feeds(model, s).items() if k in names} for s in (0, 1)]
    score = mutate.score_npu(prog, feeds, 40, seed=4)
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-200:]) for o in score.outcomes
                                 if o.result in ("survived", "crash")]
