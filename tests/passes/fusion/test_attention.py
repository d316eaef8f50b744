import math

from fusion_helpers import apply, ops

ATTN = """
g (float[1,2,8,16] q, float[1,2,8,16] k, float[1,2,8,16] v, float[8,8] mask) => (float[1,2,8,16] o) {
  kt = Transpose <perm = [0,1,3,2]> (k)
  s = MatMul (q, kt)
  c = Constant <value = float {%s}> ()
  sc = Div (s, c)
  sm = Add (sc, mask)
  p = Softmax <axis = -1> (sm)
  o = MatMul (p, v)
}
""" % math.sqrt(16)


def test_attention_fuses_on_npu():
    m, fired = apply(ATTN, "fuse-attention")
    assert ops(m) == ["Attention"] and fired == {"attention": 1}


def test_attention_does_not_fuse_on_host():
    m, fired = apply(ATTN, "fuse-attention", target="host")
    assert "Attention" not in ops(m) and not fired


def test_softmax_over_another_axis_does_not_fuse():
    m, fired = apply(ATTN.replace("axis = -1", "axis = 2"), "fuse-attention")
    assert "Attention" not in ops(m) and not fired
