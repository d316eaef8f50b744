"""Mutation testing of NPU programs (backends/npu/mutate.py; benchmarks/mutation_score.py runs
>= 500 per program on resnet50, bert-tiny and llama-tiny decode): >= 99% of the mutations that
change a program's meaning change an output or raise, and a simulator that ignored a field
would fail the score (it is not a constant)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import bert_layer
from test_npu_sim import _net

import kcompiler
from kcompiler.backends.npu import isa, mutate, sim


def _program_and_feeds(model, target):
    cm = kcompiler.compile(model, target=target, place={"*": "npu"})
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    names = [b.name for b in prog.data.inputs]
    feeds = [{k: v for k, v in cm.random_inputs(s).items() if k in names} for s in (0, 1)]
    return prog, feeds


@pytest.mark.parametrize("case,target", [("net", "npu"), ("net", "atom"), ("bert", "npu")])
def test_mutation_score(case, target):
    prog, feeds = _program_and_feeds(_net() if case == "net" else bert_layer(), target)
    score = mutate.score_npu(prog, feeds, 200, seed=7)
    bad = [o for o in score.outcomes if o.result in ("survived", "crash")]
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-300:]) for o in bad]
    assert not any(o.result == "crash" for o in score.outcomes)
    # neutral mutations are the exception, not a way out
    assert score.count("neutral") < 0.25 * len(score.outcomes)


def test_a_simulator_ignoring_a_field_fails_the_score(monkeypatch):
    """If LOADs ignored their DRAM offset (as a simulator reading the model would), mutations of
    it would survive and the score fall below 99%."""
    prog, feeds = _program_and_feeds(_net(), "npu")
    real = sim.Decoder.dram

    def ignore_offset(self, buf, off, dtype, shape, strides, write):
        return real(self, buf, 0 if not write and self._loading else off, dtype, shape, strides, write)

    real_accesses = sim.Decoder.accesses

    def accesses(self, ins):
        self._loading = ins.opcode == isa.LOAD
        return real_accesses(self, ins)

    only_loads = lambda ins: ins.opcode == isa.LOAD  # noqa: E731
    good = mutate.score_npu(prog, feeds, 60, seed=3, kinds=("field",), only=only_loads)
    assert good.ratio >= 0.99
    monkeypatch.setattr(sim.Decoder, "dram", ignore_offset)
    monkeypatch.setattr(sim.Decoder, "accesses", accesses)
    monkeypatch.setattr(sim.Decoder, "_loading", False, raising=False)
    prog.invalidate()
    bad = mutate.score_npu(prog, feeds, 60, seed=3, kinds=("field",), only=only_loads)
    assert bad.ratio < 0.99
    assert any("off" in o.where for o in bad.outcomes if o.result == "survived")
    np.testing.assert_equal(len(bad.outcomes), 60)
