"""Exporter-shaped graphs (decomposed LayerNorm/GELU, attention with head reshapes) in the zoo's
tiny transformers: every block is recognised, and outputs still match ONNX Runtime on the NPU."""

import collections

import numpy as np
import pytest

import kcompiler


def _count(cm):
    return collections.Counter(n.op_type for n in cm.model.graph)


@pytest.mark.parametrize("model,layers,norm", [("bert-tiny", 2, "LayerNormalization"),
                                               ("gpt2-tiny", 2, "LayerNormalization"),
                                               ("llama-tiny", 2, "RMSNormalization")])
def test_every_block_recognised_and_matches_ort(model, layers, norm):
    cm = kcompiler.compile(model, target="npu")
    c = _count(cm)
    assert c["Attention"] == layers
    assert c[norm] == 2 * layers + 1
    if model != "llama-tiny":
        assert c["Gelu"] + sum(1 for n in cm.model.graph if "gelu" in str(n.attributes.get("epilogue"))) == layers
    for n in cm.model.graph:
        assert n.op_type not in ("Softmax", "Erf", "Pow", "Sqrt")
    feeds = cm.random_inputs()
    got = cm.run(feeds)
    cm_off = kcompiler.compile(model, target="host", disable_passes=["fusion"])
    ref = cm_off.run(feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-4)


def test_disable_fusion_turns_every_rule_off():
    cm = kcompiler.compile("bert-tiny", target="npu", disable_passes=["fusion"])
    assert not cm.context.fired
    assert "Attention" not in _count(cm)
