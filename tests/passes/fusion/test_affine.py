import numpy as np

from fusion_helpers import apply, ops

W = ",".join(f"{v:.3f}" for v in np.random.default_rng(2).standard_normal(4 * 3 * 3 * 3))
CONV_AFFINE = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[4,3,3,3] w = {%s}, float[4] b = {0.1,0.2,0.3,0.4},
    float[4,1,1] s = {1.5,0.5,-2.0,1.0}, float[4,1,1] t = {0.0,1.0,-1.0,0.5}, float d = {4.0}> {
  c = Conv <pads = [1,1,1,1]> (x, w, b)
  m = Mul (c, s)
  a = Add (t, m)
  q = Div (a, d)
  y = Sub (q, t)
}
""" % W

WM = ",".join(f"{v:.3f}" for v in np.random.default_rng(3).standard_normal(16 * 8))
MATMUL_SCALE = """
g (float[2,5,16] x) => (float[2,5,8] y) <float[16,8] w = {%s}, float[8] s = {1,2,3,4,5,6,7,8}> {
  m = MatMul (x, w)
  y = Mul (m, s)
}
""" % WM

GEMM_AFFINE = """
g (float[5,16] x) => (float[5,8] y) <float[8,16] w = {%s}, float[8] c = {1,2,3,4,5,6,7,8}, float s = {0.25},
    float[1,8] t = {1,1,1,1,2,2,2,2}> {
  m = Gemm <transB = 1, beta = 2.0> (x, w, c)
  n = Mul (m, s)
  y = Add (n, t)
}
""" % WM


def test_conv_mul_add_div_sub_chain_folds_into_weights_and_bias():
    m, fired = apply(CONV_AFFINE, "fold-affine", target="host")
    assert ops(m) == ["Conv"] and fired == {"affine-mul": 2, "affine-add": 2}


def test_matmul_scale_folds_into_weights():
    m, fired = apply(MATMUL_SCALE, "fold-affine", target="host")
    assert ops(m) == ["MatMul"] and fired == {"affine-mul": 1}


def test_gemm_with_beta_folds():
    m, fired = apply(GEMM_AFFINE, "fold-affine", target="host")
    assert ops(m) == ["Gemm"] and fired == {"affine-mul": 1, "affine-add": 1}


def test_scale_along_rows_does_not_fold():
    text = MATMUL_SCALE.replace("float[8] s = {1,2,3,4,5,6,7,8}", "float[5,1] s = {1,2,3,4,5}")
    m, fired = apply(text, "fold-affine", target="host")
    assert ops(m) == ["MatMul", "Mul"] and not fired


def test_runtime_scale_and_matmul_add_do_not_fold():
    text = MATMUL_SCALE.replace("(float[2,5,16] x)", "(float[2,5,16] x, float[8] s)").replace(
        ", float[8] s = {1,2,3,4,5,6,7,8}", "")
    m, fired = apply(text, "fold-affine", target="host")
    assert ops(m) == ["MatMul", "Mul"] and not fired
    m, fired = apply(MATMUL_SCALE.replace("Mul (m, s)", "Add (m, s)"), "fold-affine", target="host")
    assert ops(m) == ["MatMul", "Add"] and not fired


def test_lazy_fold_reads_no_weights():
    """Timing-mode compiles must not compute folded weights: the initializers stay lazy."""
    import onnx_ir as ir

    m, _ = apply(MATMUL_SCALE, "fold-affine", target="host")
    w = m.graph.node(0).inputs[1]
    assert isinstance(w.const_value, ir.LazyTensor)
