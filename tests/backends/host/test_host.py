"""Host backend: subgraph extraction runs in ONNX Runtime and matches the whole model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import kcompiler
from kcompiler.backends.host import extract_model
from kcompiler.backends.base import Subgraph
from kcompiler.frontend import load_model
from kcompiler.runtime.partition import DEVICE_KEY, partition

TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2,8] x) => (float[2,4] y, float[2,8] z) {
    a = Relu(x)
    b = Mul(a, a)
    c = Add(b, x)
    w = Constant<value = float[8,4] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}>()
    y = MatMul(c, w)
    z = Sigmoid(c)
}
"""


def _ort(proto, feeds):
    proto.ir_version = min(proto.ir_version, 10)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_whole_model_on_host_matches_ort():
    proto = onnx.parser.parse_model(TEXT)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    cm = kcompiler.compile(proto, target="host")
    assert cm.placement == {"host": len(cm.model.graph)}
    got = cm.run({"x": x})
    want = _ort(onnx.parser.parse_model(TEXT), {"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    rep = cm.report
    assert rep.latency_s > 0 and rep.macs == 2 * 8 * 4 and rep.host_nodes == len(cm.model.graph)


def test_split_partitions_chain_correctly():
    """Force alternate devices names on a host-only system by hand: the partitioner cuts the
    graph, each piece is extracted as its own ONNX model, and chaining them gives the same
    answer as the whole model."""
    model, _ = load_model(onnx.parser.parse_model(TEXT))
    nodes = list(model.graph)
    for i, n in enumerate(nodes):
        n.metadata_props[DEVICE_KEY] = "host" if i < 2 else "other"
    subs = partition(model)
    assert [s.device for s in subs] == ["host", "other"]
    assert [v.name for v in subs[0].outputs] == ["b"]
    assert {v.name for v in subs[1].inputs} == {"b", "x"}
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    env = {"x": x}
    for s in subs:
        proto = extract_model(Subgraph("host", s.nodes, s.inputs, s.outputs, model))
        env.update(_ort(proto, {v.name: env[v.name] for v in s.inputs}))
    want = _ort(onnx.parser.parse_model(TEXT), {"x": x})
    np.testing.assert_allclose(env["y"], want["y"], rtol=1e-6)
    np.testing.assert_allclose(env["z"], want["z"], rtol=1e-6)


def test_timing_mode_creates_no_session_and_refuses_values():
    cm = kcompiler.compile(onnx.parser.parse_model(TEXT), target="host", mode="timing")
    assert all(p.session is None for p in cm.programs)
    rep = cm.simulate()
    assert rep.mode == "timing" and rep.latency_s > 0
    with pytest.raises(kcompiler.KCError, match="timing mode"):
        cm.run({"x": np.zeros((2, 8), np.float32)})


def test_host_estimate_is_a_roofline():
    cm = kcompiler.compile(onnx.parser.parse_model(TEXT), target="host")
    host = cm.backends["host"]
    mm = next(n for n in cm.model.graph if n.op_type == "MatMul")
    cost = host.estimate(mm)
    s = host.spec
    assert cost.macs == 64
    assert cost.seconds == pytest.approx(
        s.op_overhead_s + max(2 * 64 / (s.peak_flops * s.efficiency), cost.dram_bytes / s.dram_bandwidth))
