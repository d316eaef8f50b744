"""Helpers for NPU backend tests: build small ONNX graphs and compare with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler

RTOL, ATOL = 1e-3, 1e-4


def make_model(nodes, inputs: dict, outputs: dict, inits: dict | None = None, opset: int = 18):
    """inputs/outputs: name -> shape (float32); inits: name -> ndarray."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def ort_run(model: onnx.ModelProto, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def check_on(model: onnx.ModelProto, target: str = "npu", seed: int = 0, min_npu_macs: float = 0.99,
             require_npu: bool = True):
    """Compile for target, run, compare with ORT; returns the compiled model.

    Every node the NPU supports is pinned to it: on a tiny graph the placer would rightly keep
    work on the host rather than pay the PCIe transfers, but these tests are about the lowering."""
    cm = kcompiler.compile(model, target=target, place={"*": "npu"} if require_npu else None)
    feeds = cm.random_inputs(seed)
    got = cm.run(feeds)
    assert_walk_equals_replay(cm, feeds, got)
    ref = ort_run(model, feeds)
    for name, r in ref.items():
        np.testing.assert_allclose(got[name], r, rtol=RTOL, atol=ATOL, err_msg=f"{name} on {target}")
    rep = cm.report
    if require_npu:
        assert rep.host_nodes == 0, [(s.device, [n.op_type for n in s.nodes]) for s in cm.parts]
    if rep.macs:
        npu = sum(v["macs"] for d, v in rep.devices.items() if d != "host")
        assert npu / rep.macs >= min_npu_macs
    return cm


def npu_sims(cm):
    return [p.sim for p in cm.programs if hasattr(p, "sim")]


def assert_walk_equals_replay(cm, feeds, got=None):
    """The replay (the default) and the instruction-by-instruction walk give the same bits."""
    got = cm.run(feeds, simulate=False) if got is None else got
    sims = npu_sims(cm)
    for s in sims:
        s.exact = True
    try:
        walk = cm.run(feeds, simulate=False)
    finally:
        for s in sims:
            s.exact = False
    for name, v in got.items():
        np.testing.assert_array_equal(walk[name], v, err_msg=f"{name}: the replay and the walk differ")
    return walk


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def bert_layer(seq=16, hidden=64, heads=4, ffn=128, batch=1) -> onnx.ModelProto:
    """One BERT encoder layer: attention (MatMul, Add, Softmax), LayerNormalization, Gelu MLP."""
    hd = hidden // heads
    inits = {}
    nodes = []

    def w(name, *shape):
        inits[name] = rand(*shape, seed=len(inits) + 3) * np.float32(0.2)
        return name

    def lin(x, name, k, n):
        nodes.append(helper.make_node("MatMul", [x, w(name + "_w", k, n)], [name + "_mm"]))
        nodes.append(helper.make_node("Add", [name + "_mm", w(name + "_b", n)], [name]))
        return name

    inits["shape_heads"] = np.array([batch, seq, heads, hd], np.int64)
    inits["shape_merge"] = np.array([batch, seq, hidden], np.int64)
    inits["scale"] = np.array(1 / np.sqrt(hd), np.float32)
    for t in ("q", "k", "v"):
        lin("x", t, hidden, hidden)
        nodes.append(helper.make_node("Reshape", [t, "shape_heads"], [t + "_r"]))
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [t + "_r"], [t + "_t"], perm=perm))
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "shape_merge"], ["ctx_m"])]
    lin("ctx_m", "o", hidden, hidden)
    nodes.append(helper.make_node("Add", ["o", "x"], ["res1"]))
    nodes.append(helper.make_node("LayerNormalization", ["res1", w("ln1_g", hidden), w("ln1_b", hidden)],
                                  ["ln1"], axis=-1, epsilon=1e-5))
    lin("ln1", "f1", hidden, ffn)
    nodes.append(helper.make_node("Gelu", ["f1"], ["gelu"]))
    lin("gelu", "f2", ffn, hidden)
    nodes.append(helper.make_node("Add", ["f2", "ln1"], ["res2"]))
    nodes.append(helper.make_node("LayerNormalization", ["res2", w("ln2_g", hidden), w("ln2_b", hidden)],
                                  ["y"], axis=-1, epsilon=1e-5))
    return make_model(nodes, {"x": [batch, seq, hidden]}, {"y": [batch, seq, hidden]}, inits, opset=20)


@pytest.fixture
def tmp_chip(tmp_path):
    """Write a variant of warboy.toml with some keys replaced; returns its path."""
    from importlib import resources

    base = resources.files("kcompiler.targets").joinpath("warboy.toml").read_text()

    def make(replace: dict[str, str] | None = None, append: str = "", name: str = "chip.toml"):
        text = base.replace('aliases = ["npu"]', "aliases = []").replace('name = "warboy"', 'name = "testchip"')
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        p = tmp_path / name
        p.write_text(text + append)
        return str(p)

    return make


def with_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    """A bundled CNN (batch fixed at 1) with batch n (kcompiler.zoo.with_batch)."""
    from kcompiler.zoo import with_batch as _with_batch

    return _with_batch(model, n)

