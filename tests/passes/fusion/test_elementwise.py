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


RESIDUAL_QDQ = """
g (int8[1,16,8,8] a, int8[1,16,8,8] b) => (int8[1,16,8,8] y) {
  sa = Constant <value = float {0.05}> ()
  za = Constant <value = int8 {3}> ()
  sb = Constant <value = float {0.03}> ()
  zb = Constant <value = int8 {-2}> ()
  sy = Constant <value = float {0.07}> ()
  zy = Constant <value = int8 {-128}> ()
  da = DequantizeLinear (a, sa, za)
  db = DequantizeLinear (b, sb, zb)
  s = Add (da, db)
  r = Relu (s)
  y = QuantizeLinear (r, sy, zy)
}
"""


def test_quantised_residual_opens_with_dequantize_and_closes_with_quantize():
    """A QDQ model's residual DQ, DQ -> Add -> Relu -> Q is one fused op reading and writing int8."""
    m, fired = apply(RESIDUAL_QDQ, "fuse-elementwise")
    assert ops(m) == ["FusedElementwise"] and fired == {"elementwise-chain": 4}
    node = next(n for n in m.graph if n.op_type == "FusedElementwise")
    steps = [s.split("|")[0] for s in node.attributes["steps"].value]
    assert steps[-3:] == ["Add", "Relu", "QuantizeLinear"] and sorted(steps[:2]) == ["DequantizeLinear"] * 2
    assert node.outputs[0].dtype.name == "INT8"


def test_per_axis_or_shared_dequantize_stays_out_of_the_chain():
    per_axis = RESIDUAL_QDQ.replace("sa = Constant <value = float {0.05}> ()",
                                    "sa = Constant <value = float[16] {" + ",".join(["0.05"] * 16) + "}> ()")
    per_axis = per_axis.replace("za = Constant <value = int8 {3}> ()",
                                "za = Constant <value = int8[16] {" + ",".join(["3"] * 16) + "}> ()")
    per_axis = per_axis.replace("da = DequantizeLinear (a, sa, za)", "da = DequantizeLinear <axis = 1> (a, sa, za)")
    m, _ = apply(per_axis, "fuse-elementwise")
    assert sorted(ops(m)) == ["DequantizeLinear", "FusedElementwise"]
    shared = RESIDUAL_QDQ.replace("=> (int8[1,16,8,8] y)", "=> (int8[1,16,8,8] y, float[1,16,8,8] s)")
    m, _ = apply(shared, "fuse-elementwise")  # the Add's result is read outside: Relu + Q fuse, the DQs into Add
    assert sorted(ops(m)) == ["FusedElementwise", "FusedElementwise"]
    # a dequantised operand that broadcasts: the vector unit's dequant reads whole tiles only
    bcast = RESIDUAL_QDQ.replace("int8[1,16,8,8] b)", "int8[1,16,1,1] b)")
    m, _ = apply(bcast, "fuse-elementwise")
    assert sorted(ops(m)) == ["DequantizeLinear", "FusedElementwise"]
