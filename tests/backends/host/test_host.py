"""Host backend: subgraph extraction runs in ONNX Runtime and matches the whole model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompiler
from kcompiler.backends.host import extract_model
from kcompiler.backends.base import Subgraph
from kcompiler.frontend import load_model
from kcompiler.driver.partition import partition
from kcompiler.passes.placement import DEVICE_KEY

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


# ---- types ONNX Runtime's numpy bridge cannot carry (bfloat16, float8, 4- and 2-bit) -------------
def _cast_model(src: str, dst: str, shape=(3, 5)) -> onnx.ModelProto:
    """y = Cast(x): x of type `src`, y of type `dst` (ONNX type names), both of `shape`."""
    dims = ",".join(map(str, shape))
    to = getattr(onnx.TensorProto, dst.upper())
    opset = 25 if "int2" in (src + dst) else 23  # (2-bit types came with opset 25)
    return onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : {opset}]>
        g ({src}[{dims}] x) => ({dst}[{dims}] y) {{
            y = Cast<to = {to}>(x)
        }}""")


@pytest.mark.parametrize("dst", ["float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"])
def test_float8_outputs_come_back_as_float8(dst):
    """ONNX Runtime returns float8e4m3fn outputs as their uint8 bits and refuses the other
    float8 types; the host backend returns each as its ml_dtypes type."""
    import ml_dtypes

    want_dtype = np.dtype(getattr(ml_dtypes, {"float8e4m3fn": "float8_e4m3fn", "float8e4m3fnuz": "float8_e4m3fnuz",
                                              "float8e5m2": "float8_e5m2", "float8e5m2fnuz": "float8_e5m2fnuz"}[dst]))
    cm = kcompiler.compile(_cast_model("float", dst), target="host")
    x = (np.random.default_rng(0).standard_normal((3, 5)) * 8).astype(np.float32)
    y = cm.run({"x": x})["y"]
    assert y.dtype == want_dtype and y.shape == (3, 5)
    np.testing.assert_array_equal(y.view(np.uint8), x.astype(want_dtype).view(np.uint8))
    if dst == "float8e4m3fn":
        assert not y.flags.owndata  # a view of the bits ONNX Runtime returned, not a copy


def test_bfloat16_and_float8_inputs():
    """Inputs of these types reach ONNX Runtime as their own ONNX type."""
    import ml_dtypes

    rng = np.random.default_rng(1)
    for src, dtype in (("bfloat16", ml_dtypes.bfloat16), ("float8e4m3fn", ml_dtypes.float8_e4m3fn),
                       ("float8e5m2", ml_dtypes.float8_e5m2)):
        x = rng.standard_normal((3, 5)).astype(dtype)
        cm = kcompiler.compile(_cast_model(src, "float"), target="host")
        np.testing.assert_array_equal(cm.run({"x": x})["y"], x.astype(np.float32), err_msg=src)
    # and bfloat16 through: float -> bfloat16 output
    x = rng.standard_normal((3, 5)).astype(np.float32)
    y = kcompiler.compile(_cast_model("float", "bfloat16"), target="host").run({"x": x})["y"]
    assert y.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(y.view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))


@pytest.mark.parametrize("typ", ["int4", "uint4", "int2", "uint2"])
def test_packed_integer_types_in_and_out(typ):
    """4- and 2-bit values are packed as ONNX stores them (first element in the low bits) on the
    way in and unpacked on the way out, for a count that does not fill the last byte."""
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, typ))
    info = ml_dtypes.iinfo(dtype)
    shape = (3, 5)  # 15 elements: 7.5 bytes of int4, 3.75 of int2
    values = np.random.default_rng(2).integers(int(info.min), int(info.max) + 1, shape)
    out = kcompiler.compile(_cast_model("float", typ, shape), target="host").run(
        {"x": values.astype(np.float32)})["y"]
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out.astype(np.int64), values)
    back = kcompiler.compile(_cast_model(typ, "float", shape), target="host").run({"x": values.astype(dtype)})["y"]
    np.testing.assert_array_equal(back, values.astype(np.float32))


def test_float8_output_survives_an_artifact(tmp_path):
    import ml_dtypes

    cm = kcompiler.compile(_cast_model("float", "float8e5m2"), target="host")
    cm.save(tmp_path / "c.kcm")
    x = np.linspace(-3, 3, 15, dtype=np.float32).reshape(3, 5)
    y = kcompiler.load(tmp_path / "c.kcm").run({"x": x})["y"]
    assert y.dtype == ml_dtypes.float8_e5m2
    np.testing.assert_array_equal(y.view(np.uint8), x.astype(ml_dtypes.float8_e5m2).view(np.uint8))
