import numpy as np

from fusion_helpers import apply, ops

W = ",".join(f"{v:.3f}" for v in np.random.default_rng(1).standard_normal(16 * 32))
MLP = """
g (float[8,16] x, float[8,32] r) => (float[8,32] y) <float[16,32] w = {%s}, float[32] b = {%s}> {
  m = MatMul (x, w)
  a = Add (m, b)
  h = Relu (a)
  y = Add (h, r)
}
""" % (W, ",".join(["0.5"] * 32))

SWIGLU = """
g (float[8,16] x, float[8,32] u) => (float[8,32] y) <float[16,32] w = {%s}> {
  m = MatMul (x, w)
  s = Sigmoid (m)
  a = Mul (m, s)
  y = Mul (a, u)
}
""" % W


def test_bias_relu_residual_fuse_into_one_op():
    m, fired = apply(MLP, "fuse-epilogue")
    assert ops(m) == ["FusedMatMul"]
    assert fired == {"epilogue-bias": 1, "epilogue-activation": 1, "epilogue-residual": 1}
    node = m.graph.node(0)
    assert node.domain == "kcompiler" and list(node.attributes["epilogue"].value) == ["add", "relu", "add"]


def test_silu_gate_fuses():
    m, fired = apply(SWIGLU, "fuse-epilogue")
    assert ops(m) == ["FusedMatMul"] and list(m.graph.node(0).attributes["epilogue"].value) == ["silu", "mul"]


def test_host_target_does_not_fuse():
    m, fired = apply(MLP, "fuse-epilogue", target="host")
    assert ops(m) == ["MatMul", "Add", "Relu", "Add"] and not fired


def test_output_used_twice_does_not_fuse():
    text = MLP.replace("(float[8,32] y)", "(float[8,32] y, float[8,32] a)")
    m, fired = apply(text, "fuse-epilogue")
    assert "Add" in ops(m) and "epilogue-activation" not in fired
