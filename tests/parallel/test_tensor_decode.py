"""Tensor parallelism on an LLM decode step: the attention splits by heads all the way through
(rotary embedding included), so each chip reads and appends only its heads' slice of the KV
cache, in place as on one chip, and the values stay ONNX Runtime's."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import pytest

import kcompiler
from kcompiler.check import compare_with_ort
from kcompiler.backends.comm.collectives import is_comm
from kcompiler.zoo import transformers as tf

#: a LLaMA with 8 query and 8 KV heads (llama-tiny has 2 KV heads: no 8-way split), one layer,
#: and a cache much larger than its weights, so that what the cache costs shows in the bytes
LLAMA8 = tf.Config("llama", 64, 64, 1, 8, 8, 128, eps=1e-6, default_seq=1, default_kv=512,
                   published="test LLaMA: 8 heads for an 8-way head split")


def _split_equals_ort(ref, cm, seed: int) -> tuple[dict, dict]:
    """Run the split model `cm` on ref's random inputs: its outputs must equal ONNX Runtime's on the
    original model; returns them and the feeds."""
    feeds = ref.random_inputs(seed=seed)
    got = cm.run(feeds, simulate=False)
    worst = compare_with_ort(ref, ref.check_feeds(feeds), got, rtol=1e-3, atol=2e-3)
    assert worst.ok, worst.describe()
    return got, feeds


@pytest.fixture(scope="module")
def llama8() -> onnx.ModelProto:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tf.PRESETS, "llama8-test", LLAMA8)
        return tf.build("llama8-test", phase="decode", kv=512)


def _cache_bytes(rep) -> dict[str, int]:
    """DRAM bytes per chip of the ops that move the KV cache: the appends (Concat), any slicing
    of it (Slice) and the attention reading it."""
    out: dict[str, int] = defaultdict(int)
    for o in rep.ops:
        if o.op_type in ("Concat", "Slice", "Attention"):
            out[o.device] += o.dram_bytes
    return dict(out)


def test_each_chip_reads_an_eighth_of_the_kv_cache(llama8):
    one = kcompiler.compile(llama8, target="atom", mode="timing").simulate()
    eight = kcompiler.compile(llama8, target="atom", devices=8, parallel="tensor", mode="timing").simulate()
    (whole,) = _cache_bytes(one).values()
    per_chip = _cache_bytes(eight)
    assert len(per_chip) == 8
    for dev, nbytes in per_chip.items():
        # an eighth, give or take the new token's rows and the queries (once: the whole cache
        # read and written on every chip, or each chip's slice copied instead of appended to)
        assert nbytes <= 1.15 * whole / 8, (dev, nbytes, whole)
        assert nbytes >= 0.85 * whole / 8, (dev, nbytes, whole)
    # and the whole step moves about what one chip moves, not more
    assert eight.dram_bytes <= 1.1 * one.dram_bytes


def test_nothing_is_gathered_inside_the_decode_step(llama8):
    """Only graph outputs are gathered (the logits to the host, the caches to resident state):
    Q and K go through the rotary embedding split by heads."""
    cm = kcompiler.compile(llama8, target="atom", devices=8, parallel="tensor", mode="timing")
    gathers = [n for n in cm.model.graph if is_comm(n) and n.op_type == "AllGather"]
    assert gathers and all("targets" in n.attributes for n in gathers), [n.name for n in gathers]
    from kcompiler.backends.npu.kernels.copy import is_state_append

    appends = [n for n in cm.model.graph if n.op_type == "Concat" and is_state_append(n)]
    assert len(appends) == 2 * 8  # K and V on every chip, in place
    attention = [n for n in cm.model.graph if n.op_type == "Attention"]
    assert len(attention) == 8 and all(n.inputs[1].shape[1] == 1 for n in attention)  # one KV head each


@pytest.mark.parametrize("n", [2, 4, 8])
def test_split_heads_decode_equals_ort(llama8, n):
    ref = kcompiler.compile(llama8, target="atom")
    cm = kcompiler.compile(llama8, target="atom", devices=n, parallel="tensor")
    _split_equals_ort(ref, cm, seed=2)


@pytest.mark.parametrize("n", [2, 4])
def test_llama_tiny_decode_batch2_equals_ort(n):
    """llama-tiny (4 query heads, 2 KV heads): over 2 chips the attention splits by heads and the
    cache appends are each chip's slice; over 4 the KV heads do not divide and it replicates."""
    ref = kcompiler.compile("llama-tiny", target="atom", phase="decode", batch=2, kv=16)
    cm = kcompiler.compile("llama-tiny", target="atom", phase="decode", batch=2, kv=16, devices=n,
                           parallel="tensor")
    got, feeds = _split_equals_ort(ref, cm, seed=5)
    want = ref.run(feeds, simulate=False)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=2e-3, err_msg=f"llama-tiny x{n} {name}")
    if n == 2:
        per_chip = _cache_bytes(cm.simulate())
        (whole,) = _cache_bytes(ref.simulate()).values()
        assert all(b <= 0.6 * whole for b in per_chip.values()), (per_chip, whole)


def test_data_parallel_decode_appends_each_chips_batch_in_place():
    """Split by batch, each chip keeps its sequences' cache: the appends are in place too."""
    from kcompiler.backends.npu.kernels.copy import is_state_append

    ref = kcompiler.compile("llama-tiny", target="atom", phase="decode", batch=2, kv=16)
    cm = kcompiler.compile("llama-tiny", target="atom", phase="decode", batch=2, kv=16, devices=2, parallel="data")
    assert sum(is_state_append(n) for n in cm.model.graph if n.op_type == "Concat") == 2 * 2 * 2  # layers, K/V, chips
    _split_equals_ort(ref, cm, seed=5)
