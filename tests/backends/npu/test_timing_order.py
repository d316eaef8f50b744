"""The timeline orders every dependency the values follow: no instruction starts before an earlier
one that writes what it reads, or reads or writes what it writes, has ended (timing.order_violations).
Values follow program order and time follows the tokens, so a missing token would make the time
that of a program whose values differ (a MATMUL overwriting an accumulator a STORE still reads)."""

from __future__ import annotations

import dataclasses

import pytest
from onnx import helper

from conftest import bert_layer, make_model, rand

import kcompiler
from kcompiler.backends.npu import isa, timing


def _convs():
    """A 3x3 conv with many output tiles per core, then a 1x1 conv with a bias and a residual."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["y"])]
    return make_model(nodes, {"x": [1, 16, 56, 56]}, {"y": [1, 64, 56, 56]},
                      {"w1": rand(64, 16, 3, 3), "b1": rand(64, seed=2), "w2": rand(64, 64, 1, 1, seed=3),
                       "b2": rand(64, seed=4)})


def _matmuls():
    """A plain float32 product (no vector step: stored from the accumulator) then one with a bias."""
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"]),
             helper.make_node("Gemm", ["m", "v", "c"], ["y"])]
    return make_model(nodes, {"a": [384, 256]}, {"y": [384, 512]},
                      {"w": rand(256, 768), "v": rand(768, 512, seed=2), "c": rand(512, seed=3)})


MODELS = {"convs": _convs, "matmuls": _matmuls, "bert-layer": bert_layer,
          "llama-decode": lambda: ("llama-tiny", {"phase": "decode", "kv": 16})}


def _programs(model, target):
    m = model()
    name, opts = m if isinstance(m, tuple) else (m, {})
    cm = kcompiler.compile(name, target=target, place={"*": "npu"} if not opts else None, **opts)
    progs = [p for p in cm.programs if hasattr(p, "sim")]
    assert progs
    return progs


@pytest.mark.parametrize("target", ["warboy", "atom", "rngd"])
@pytest.mark.parametrize("model", list(MODELS))
def test_the_timeline_orders_every_dependency(model, target):
    for p in _programs(MODELS[model], target):
        times, _, _ = timing.simulate(p.data.instrs, p.spec)
        assert timing.order_violations(p.data, times) == []


@pytest.mark.parametrize("channel", ["mx>vx", "mx>st", "vx>st"])
def test_a_missing_token_is_found(channel):
    """Without the token that hands an accumulator tile on, the next engine reads it before the
    MATMUL (or the VECTOR epilogue) that writes it has ended: the checker names the instruction."""
    p = _programs(_convs if channel != "mx>st" else _matmuls, "warboy")[0]
    bit = isa.CH[channel]
    instrs = [i.replace(wait=i.wait & ~bit, signal=i.signal & ~bit) for i in p.data.instrs]
    assert instrs != p.data.instrs
    times, _, _ = timing.simulate(instrs, p.spec)
    bad = timing.order_violations(dataclasses.replace(p.data, instrs=instrs), times)
    assert bad and "before cycle" in bad[0]
