from fusion_helpers import apply, ops

LN = """
g (float[2,5,16] x) => (float[2,5,16] y) {
  axes = Constant <value = int64[1] {-1}> ()
  mean = ReduceMean <keepdims = 1> (x, axes)
  d = Sub (x, mean)
  two = Constant <value = float {2.0}> ()
  sq = Pow (d, two)
  var = ReduceMean <keepdims = 1> (sq, axes)
  eps = Constant <value = float {1e-5}> ()
  ve = Add (var, eps)
  sd = Sqrt (ve)
  n = Div (d, sd)
  w = Constant <value = float[16] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}> ()
  s = Mul (n, w)
  b = Constant <value = float[16] {0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1}> ()
  y = Add (s, b)
}
"""

RMS = """
g (float[2,5,16] x) => (float[2,5,16] y) {
  axes = Constant <value = int64[1] {-1}> ()
  two = Constant <value = float {2.0}> ()
  sq = Pow (x, two)
  ms = ReduceMean <keepdims = 1> (sq, axes)
  eps = Constant <value = float {1e-6}> ()
  me = Add (ms, eps)
  r = Sqrt (me)
  n = Div (x, r)
  w = Constant <value = float[16] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}> ()
  y = Mul (n, w)
}
"""


def test_decomposed_layernorm_becomes_one_op():
    m, fired = apply(LN, "raise-norms", target="host")
    assert ops(m) == ["LayerNormalization"] and fired == {"layernorm": 1, "layernorm-bias": 1}


def test_decomposed_rmsnorm_becomes_one_op():
    m, fired = apply(RMS, "raise-norms", target="host")
    assert ops(m) == ["RMSNormalization"] and fired == {"rmsnorm": 1}


def test_layernorm_over_a_different_axis_does_not_fire():
    m, fired = apply(LN.replace("int64[1] {-1}", "int64[1] {1}"), "raise-norms", target="host")
    assert "LayerNormalization" not in ops(m) and not fired
