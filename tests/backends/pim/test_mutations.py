"""Mutation testing: every part of a compiled PIM program the simulator is given must matter.

Each case applies a few hundred random single mutations (kcompiler/backends/pim/mutate.py: a command
field, the opcode, an unused field, drop/duplicate/swap, a descriptor entry, a byte of the bank
image or of the staging constants) and requires >= 99% of the meaning-changing ones to change an
output or the simulated timeline, or to raise ExecutionError.

Neutral mutations are excluded only with a reason mutate.neutral states: the mutant encodes to the
same bytes, or the one changed command leaves every memory bit-identical where it runs on both
inputs (commands on different channels swapped, a transfer run twice, an operand read from another
row holding the same bytes, HADD turned HCOPY onto a zero destination). The two inputs are a unit-
scale one and one of magnitude 3e4, so hbm-pim's FP16 scale registers are nonzero and a dropped or
altered HRANGE or scale shows. Shapes are chosen with K a multiple of 16 and N of a unit's outputs
where weights are constant, so every image lane holds data (a flip in a padding lane multiplies a
zero: neutral by construction, and not drawn here).
Known survivor kind: a flip of an FP16 weight's low mantissa bits whose effect every FP16 rounding
after it absorbs (hbm-pim multiplies and accumulates in FP16); the change is real but below the
output's resolution on the inputs tried.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.backends.pim import mutate
from kcompiler.backends.pim.backend import PimProgram

N_MUTATIONS = 260


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture(autouse=True)
def _slow_host(monkeypatch):
    from kcompiler.backends.base import Cost
    from kcompiler.backends.host import HostBackend

    monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))


def _case(name):
    rng = np.random.default_rng(0)
    if name == "gemv":  # a Gemm: the product, alpha (HMUL) and beta * bias (a staging constant)
        w = rng.standard_normal((256, 256)).astype(np.float32)
        b = rng.standard_normal(256).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0)
        return _model([node], [_vi("x", [2, 256])], [_vi("y", [2, 256])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]), None
    if name == "kv-attention":
        nodes = [helper.make_node("Concat", ["past", "new"], ["present"], axis=2),
                 helper.make_node("Transpose", ["present"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"])]
        m = _model(nodes, [_vi("q", [1, 2, 1, 32]), _vi("past", [1, 2, 40, 32]), _vi("new", [1, 2, 1, 32])],
                   [_vi("s", [1, 2, 1, 41]), _vi("present", [1, 2, 41, 32])])
        return m, {"past": "present"}
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["c", "a"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    return _model(nodes, [_vi("a", [1000]), _vi("b", [1000])], [_vi("y", [1000])]), None


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
@pytest.mark.parametrize("case", ["gemv", "kv-attention", "elementwise"])
def test_mutation_score(case, target):
    model, state = _case(case)
    cm = kcompiler.compile(model, target=target, **({"state": state} if state else {}))
    p = next(p for p in cm.programs if isinstance(p, PimProgram))
    assert len(cm.programs) == 1, "the whole case runs on the PIM device"
    sub = cm.parts[0]
    feeds = []
    for seed, scale in ((1, 1.0), (2, 3e4)):
        r = np.random.default_rng(seed)
        feeds.append({v.name: (r.standard_normal(tuple(v.shape)) * scale).astype(np.float32) for v in sub.inputs})
    with np.errstate(all="ignore"):  # mutants overflow freely
        res = mutate.score(p.spec, p.code, feeds, N_MUTATIONS, seed=3)
    total = res.pop("total")
    detail = {k: (v["killed"], v["neutral_why"], v["survived"]) for k, v in res.items()}
    assert total["killed"] + total["survived"] + total["neutral"] == N_MUTATIONS
    assert total["score"] >= 0.99, detail
    # the meaning-changing mutations are the vast majority: neutrality is the exception, not a way out
    assert total["neutral"] < 0.25 * N_MUTATIONS, detail


def test_a_simulator_ignoring_a_field_fails_the_score(monkeypatch):
    """The score is not a constant: a simulator that ignored MAC_ABK's buffer address (as a closure built
    from the node ignores every field) lets mutations of it survive."""
    import dataclasses

    from kcompiler.backends.pim import sim

    model, _ = _case("gemv")
    cm = kcompiler.compile(model, target="aim")
    p = cm.programs[0]
    real = sim.Machine.mac_abk
    monkeypatch.setattr(sim.Machine, "mac_abk", lambda self, chs, c: real(self, chs, dataclasses.replace(c, gb=0)))
    feeds = [{"x": np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)}]
    with np.errstate(all="ignore"):
        res = mutate.score(p.spec, p.code, feeds, 300, seed=5, kinds=("field",))
    assert any("MAC_ABK.gb " in s for s in res["field"]["survived"])
    assert res["total"]["score"] < 0.99
