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


# grouped-query attention: 4 query heads share each of 2 kv heads through HF's repeat_kv
GQA = """
g (float[1,8,%(s)d,16] q, float[1,2,%(t)d,16] k, float[1,2,%(t)d,16] v%(mask_in)s) => (float[1,8,%(s)d,16] o) {
  ax = Constant <value = int64[1] {2}> ()
  shp = Constant <value = int64[5] {1, 2, 4, %(t)d, 16}> ()
  flat = Constant <value = int64[4] {1, 8, %(t)d, 16}> ()
  ku = Unsqueeze (k, ax)
  ke = Expand (ku, shp)
  kr = Reshape (ke, flat)
  vu = Unsqueeze (v, ax)
  ve = Expand (vu, shp)
  vr = Reshape (ve, flat)
  kt = Transpose <perm = [0,1,3,2]> (kr)
  s = MatMul (q, kt)
  c = Constant <value = float {4.0}> ()
  sc = Div (s, c)
  %(masked)s
  p = Softmax <axis = -1> (%(scores)s)
  o = MatMul (p, vr)
}
"""


def gqa(s=1, t=24, mask=False):
    return GQA % {"s": s, "t": t, "mask_in": ", float[%d,%d] mask" % (s, t) if mask else "",
                  "masked": "sm = Add (sc, mask)" if mask else "", "scores": "sm" if mask else "sc"}


def test_gqa_decode_is_grouped_by_kv_head_then_fused_on_npu():
    m, fired = apply(gqa(), "fuse-attention")
    assert "Expand" not in ops(m) and fired == {"gqa-grouped": 1, "attention": 1}, (ops(m), fired)


def test_gqa_decode_is_grouped_where_no_npu_fuses_it():
    for target in ("host", "aim"):
        m, fired = apply(gqa(), "fuse-attention", target=target)
        assert "Expand" not in ops(m) and "Attention" not in ops(m) and fired == {"gqa-grouped": 1}, target


def test_masked_gqa_fuses_first_and_is_grouped_otherwise():
    m, fired = apply(gqa(s=6, t=24, mask=True), "fuse-attention")
    assert ops(m) == ["Attention"] and fired == {"attention": 1}, (ops(m), fired)
    m, fired = apply(gqa(s=6, t=24, mask=True), "fuse-attention", target="host")
    assert "Expand" not in ops(m) and fired == {"gqa-grouped": 1}, (ops(m), fired)


def test_gqa_grouping_can_be_disabled():
    m, fired = apply(gqa(), "fuse-attention", target="host", disabled={"gqa-grouped"})
    assert "Expand" in ops(m) and not fired
