import numpy as np

import kcompiler
from fusion_helpers import HEADER, apply, ops

ROPE = """
g (float[1,4,16,8] q, float[1,1,16,8] cos, float[1,4,16,8] r, float[1,1,16,8] sin) => (float[1,4,16,8] y) {
  a = Mul (q, cos)
  b = Mul (r, sin)
  c = Add (a, b)
  lo = Constant <value = float {-1.5}> ()
  hi = Constant <value = float {2.0}> ()
  d = Clip (c, lo, hi)
  e = Sigmoid (d)
  y = Mul (d, e)
}
"""

CHAIN = """
g (float[8,32] x) => (float[8,32] y) {
  h = Constant <value = float {0.5}> ()
  a = Mul (x, h)
  b = Tanh (a)
  c = LeakyRelu <alpha = 0.2> (b)
  y = Gelu <approximate = "tanh"> (c)
}
"""


def test_rotary_tree_becomes_one_vector_op():
    # Sigmoid(d) and Mul(d, .) both read d; once the Sigmoid is inside the Mul, d has one
    # reader and the Clip joins too (SiLU outside a GEMM)
    m, fired = apply(ROPE, "fuse-elementwise")
    assert ops(m) == ["FusedElementwise"] and fired == {"elementwise-chain": 5}
    node = next(n for n in m.graph if n.op_type == "FusedElementwise")
    assert node.domain == "kcompiler" and len(node.inputs) == 6  # q, cos, r, sin and the Clip bounds


def test_linear_chain_with_attributes_fuses():
    m, fired = apply(CHAIN, "fuse-elementwise")
    assert ops(m) == ["FusedElementwise"] and fired == {"elementwise-chain": 3}
    assert [s.split("|")[0] for s in next(n for n in m.graph if n.op_type == "FusedElementwise").attributes["steps"].value] == ["Mul", "Tanh", "LeakyRelu", "Gelu"]


def test_host_target_does_not_fuse():
    m, fired = apply(CHAIN, "fuse-elementwise", target="host")
    assert ops(m) == ["Mul", "Tanh", "LeakyRelu", "Gelu"] and not fired


def test_intermediate_output_does_not_fuse():
    m, fired = apply(CHAIN.replace("=> (float[8,32] y)", "=> (float[8,32] y, float[8,32] b)"), "fuse-elementwise")
    # b is read outside: the chain splits there, into Mul+Tanh and LeakyRelu+Gelu
    assert ops(m) == ["FusedElementwise", "FusedElementwise"] and fired == {"elementwise-chain": 2}
    assert [v.name for v in m.graph.outputs] == ["y", "b"]


def test_fused_op_on_the_npu_matches_ort(tmp_path):
    """The NPU's lowering of the fused op (one DRAM read per input, one write) gives ORT's values
    and moves fewer bytes than the unfused ops."""
    import onnx

    p = tmp_path / "rope.onnx"
    onnx.save(onnx.parser.parse_model(HEADER + ROPE), p)
    cm = kcompiler.compile(str(p), target="npu")
    assert cm.context.fired.get("elementwise-chain") == 5
    feeds = cm.random_inputs()
    ref = kcompiler.compile(str(p), target="host", disable_passes=["fusion"]).run(feeds)
    got = cm.run(feeds)
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-3, atol=1e-4)
    # pinned to the NPU: placement would run a lone tiny op on the host, next to its inputs
    off = kcompiler.compile(str(p), target="npu", mode="timing", disable_passes=["fusion"], place={"*": "npu"})
    on = kcompiler.compile(str(p), target="npu", mode="timing", place={"*": "npu"})
    off, on = off.simulate(), on.simulate()
    assert [o.op_type for o in on.ops if o.device != "host"] == ["FusedElementwise"]
    # unfused: 6 ops each read their inputs and write their output; fused: 4 reads, 1 write
    assert on.dram_bytes < 0.6 * off.dram_bytes and on.latency_s < off.latency_s
