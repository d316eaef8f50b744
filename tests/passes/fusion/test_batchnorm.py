import numpy as np

from fusion_helpers import apply, ops

CONV_BN = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[4,3,3,3] w = {%s}, float[4] b = {0.1,0.2,0.3,0.4},
    float[4] sc = {1.5,0.5,2.0,1.0}, float[4] sh = {0.0,1.0,-1.0,0.5}, float[4] mu = {0.1,-0.1,0.2,0.0},
    float[4] var = {1.0,2.0,0.5,1.5}> {
  c = Conv <pads = [1,1,1,1]> (x, w, b)
  y = BatchNormalization (c, sc, sh, mu, var)
}
""" % ",".join(f"{v:.3f}" for v in np.random.default_rng(0).standard_normal(108))


def test_bn_folds_into_conv():
    m, fired = apply(CONV_BN, "fold-batchnorm", target="host")
    assert ops(m) == ["Conv"] and fired == {"batchnorm-conv": 1}


def test_bn_with_a_runtime_scale_does_not_fold():
    text = CONV_BN.replace("(float[1,3,8,8] x)", "(float[1,3,8,8] x, float[4] sc)").replace(
        "float[4] sc = {1.5,0.5,2.0,1.0}, ", "")
    m, fired = apply(text, "fold-batchnorm", target="host")
    assert ops(m) == ["Conv", "BatchNormalization"] and not fired
