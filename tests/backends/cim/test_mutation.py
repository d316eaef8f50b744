"""Mutation test of CIM programs (kcompiler.backends.cim.mutate): on a tiny MatMul + Conv model, every
seeded mutation of the program on hermes and isaac is detected (the outputs change, bit for bit,
noise off, or the simulator refuses the program) or proven neutral, and none crashes the simulator
with an exception that is not a KCError; a simulator that ignores a field is caught."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.backends.cim import isa, mutate
from kcompiler.backends.cim.backend import CimBackend
from kcompiler.backends.cim.program import CimProgram
from kcompiler.backends.cim.sim import run

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def one_copy_of_each_layer(monkeypatch):
    """Programs without weight replication: copies split a layer's vectors, so a one-level change in one
    copy is read by fewer of them and more often lost in the ADC's rounding (detected, then, only by
    other inputs); these tests study how the simulator reads each field, on one copy per layer."""
    monkeypatch.setattr(CimBackend, "replication_plan", lambda self, graph: {})


def _model() -> onnx.ModelProto:
    w = RNG.standard_normal((40, 24)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    k = (RNG.standard_normal((6, 3, 3, 3)) * 0.4).astype(np.float32)
    kb = RNG.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Relu", ["a"], ["o1"]),
             helper.make_node("Conv", ["y", "K", "KB"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("LeakyRelu", ["c"], ["o2"], alpha=0.1)]
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    g = helper.make_graph(nodes, "g", [f("x", [6, 40]), f("y", [1, 3, 7, 5])],
                          [f("o1", [6, 24]), f("o2", [1, 6, 4, 5])],
                          [numpy_helper.from_array(a, n) for n, a in (("W", w), ("B", b), ("K", k), ("KB", kb))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _program(target: str) -> tuple[CimProgram, list[dict]]:
    cm = kcompiler.compile(_model(), target=target, place={"*": target})
    progs = [p for p in cm.programs if isinstance(p, CimProgram)]
    assert len(progs) == 1
    r = np.random.default_rng(3)
    feeds = [{"x": r.standard_normal((6, 40)).astype(np.float32), "y": r.standard_normal((1, 3, 7, 5)).astype(
        np.float32) * s} for s in (1.0, 30.0)]
    return progs[0], [{b.name: f[b.name] for b in progs[0].code.inputs} for f in feeds]


@pytest.mark.parametrize("target", ["hermes", "isaac"])
def test_every_mutation_is_detected_or_proven_neutral(target):
    prog, feeds = _program(target)
    instrs = prog.code.instrs.copy()
    score = mutate.score_cim(prog, feeds, 60, seed=5, extra=False)  # its feeds have live ReLUs and 26 vectors
    bad = [o for o in score.outcomes if o.result in ("survived", "crash")]
    assert not bad, "\n".join(f"{o.result}: {o.kind}: {o.where} ({o.why})" for o in bad)
    assert score.count("detected") >= 50, score.line()
    kinds = {o.kind for o in score.outcomes}
    assert {"cim:field:MVM", "cim:field:VOP", "cim:field:IM2COL", "cim:codes", "cim:adc_fs", "cim:drop"} <= kinds
    assert np.array_equal(prog.code.instrs, instrs), "the original program must never be mutated"


def test_more_feeds_negate_the_first_and_add_wide_normal_ones():
    prog, feeds = _program("isaac")
    more = mutate.more_feeds(prog.code, feeds, 0)
    assert len(more) == len(feeds) + 1 + 8, "26 vectors: a program of few vectors gets 8 normal feeds"
    assert np.array_equal(more[len(feeds)]["x"], -feeds[0]["x"])
    assert all(f[k].shape == feeds[0][k].shape and f[k].dtype == np.float32 for f in more for k in f)
    assert np.std(more[-1]["x"]) > 5 * np.std(feeds[0]["x"])


def _alpha_mutation(code) -> mutate.Mutation:
    i = next(k for k, r in enumerate(code.instrs) if r[0] == isa.VOP and isa.VOP_FNS[r[2]] == "leakyrelu")
    col = 2 + isa.OPS["VOP"][1].index("alpha")
    return mutate.Mutation("field:VOP.alpha", "leakyrelu alpha 0.1 -> 0.5",
                           lambda c: c.instrs.__setitem__((i, col), isa.float_bits(0.5)), i, "alpha",
                           isa.float_bits(0.5))


def test_a_simulator_that_ignores_a_field_is_caught(monkeypatch):
    prog, feeds = _program("hermes")
    m = mutate.CimMutator(prog.spec, prog.code, feeds)
    assert m.judge(_alpha_mutation(prog.code)).result == "detected"
    vop = run.HANDLERS[isa.VOP]

    def lazy(machine, f):  # a shortcut: leakyrelu's slope fixed at the model's
        vop(machine, {**f, "alpha": isa.float_bits(0.1)} if isa.VOP_FNS[f["fn"]] == "leakyrelu" else f)

    monkeypatch.setitem(run.HANDLERS, isa.VOP, lazy)
    out = m.judge(_alpha_mutation(prog.code))
    assert out.result == "survived", out


def test_neutral_proofs_are_not_given_away():
    """Dead memory is what no later row reads and no output holds; a device inside the block an MVM
    reads is never 'outside the block'."""
    prog, _ = _program("isaac")
    code = prog.code
    i = next(k for k, r in enumerate(code.instrs) if r[0] == isa.MVM)
    _, f = isa.fields_of(code.instrs[i])
    assert not mutate.dead(code, i + 1, np.arange(f["dst"], f["dst"] + f["outs"])), "the epilogue reads it"
    out = code.outputs[0]
    assert not mutate.dead(code, len(code.instrs), np.array([out.addr])), "an output is live to the end"
    src = next(isa.fields_of(r)[1] for r in code.instrs if r[0] == isa.IM2COL)
    assert mutate.dead(code, len(code.instrs), np.array([src["dst"]])), "unrolled patches die after their MVMs"
    rng = random.Random(0)
    for _ in range(40):
        mut = mutate.draw(prog.spec, code, rng, "codes")
        plane, r, c = (int(x) for x in mut.name.split(","))
        p = mut.index
        inside = r < code.image_rows[p] and 0 <= code.images.col_out[p, c] < code.image_outs[p]
        assert (mutate._block(prog.spec, code, mut) is None) == inside


def _grow(code, op: str, fn: str | None, name: str) -> tuple[mutate.Mutation, object]:
    i = next(k for k, r in enumerate(code.instrs) if r[0] == isa.OPS[op][0] and (fn is None or
                                                                                 isa.VOP_FNS[r[2]] == fn))
    col = 2 + isa.OPS[op][1].index(name)
    new = int(code.instrs[i, col]) + 1
    m = mutate.Mutation(f"field:{op}.{name}", "", lambda c: c.instrs.__setitem__((i, col), new), i, name, new)
    mutant = mutate.copy_code(code, images=False)
    m.apply(mutant)
    return m, mutant


def test_an_extension_is_neutral_only_into_dead_memory():
    """One more element of the ReLU after the MatMul lands on its bias, which nothing reads after
    the bias add: dead. A bias add over [6, 25] instead of [6, 24] reads other bias elements for
    the original ones: not an extension. One more vector of the MatMul's MVM lands there too, but before the add
    reads it: live, so not neutral (and the run shows it)."""
    prog, feeds = _program("hermes")
    code = prog.code
    m, mutant = _grow(code, "VOP", "relu", "d3")
    assert mutate._extension(code, mutant, m)
    m, mutant = _grow(code, "VOP", "add", "d3")  # [6, 24] -> [6, 25]: rows read other bias elements
    assert not mutate._extension(code, mutant, m)
    m, mutant = _grow(code, "MVM", None, "nvec")
    assert not mutate._extension(code, mutant, m)
    assert mutate.CimMutator(prog.spec, code, feeds).judge(m).result == "detected"
