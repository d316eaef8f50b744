from fusion_helpers import apply, ops

ERF = """
g (float[4,8] x) => (float[4,8] y) {
  s = Constant <value = float {1.4142135}> ()
  d = Div (x, s)
  e = Erf (d)
  one = Constant <value = float {1.0}> ()
  p = Add (e, one)
  m = Mul (x, p)
  half = Constant <value = float {0.5}> ()
  y = Mul (m, half)
}
"""

TANH = """
g (float[4,8] x) => (float[4,8] y) {
  three = Constant <value = float {3.0}> ()
  cube = Pow (x, three)
  c = Constant <value = float {0.044715}> ()
  t1 = Mul (cube, c)
  inner = Add (x, t1)
  k = Constant <value = float {0.7978845608}> ()
  t2 = Mul (inner, k)
  th = Tanh (t2)
  half = Constant <value = float {0.5}> ()
  xh = Mul (x, half)
  one = Constant <value = float {1.0}> ()
  p = Add (th, one)
  y = Mul (xh, p)
}
"""


def test_erf_form_becomes_gelu():
    m, fired = apply(ERF, "raise-gelu", target="host")
    assert ops(m) == ["Gelu"] and fired == {"gelu-erf": 1}


def test_tanh_form_becomes_gelu_tanh():
    m, fired = apply(TANH, "raise-gelu", target="host")
    assert ops(m) == ["Gelu"] and fired == {"gelu-tanh": 1}
    assert m.graph.node(0).attributes.get_string("approximate") == "tanh"


def test_wrong_constant_does_not_fire():
    m, fired = apply(ERF.replace("1.4142135", "2.0"), "raise-gelu", target="host")
    assert "Gelu" not in ops(m) and not fired


def test_disabled_rule_does_not_fire():
    m, fired = apply(ERF, "raise-gelu", target="host", disabled=("gelu-erf",))
    assert "Gelu" not in ops(m) and not fired
