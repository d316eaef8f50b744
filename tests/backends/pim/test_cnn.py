"""The bundled CNNs, with seeded random weights, on the PIM targets against ONNX Runtime.

On `aim`/`hbm-pim` alone, the PIM takes the fully-connected GEMVs, ReLUs, adds and reshapes and the
host the rest; on `atom+aim` the NPU takes the convolutions. Random weights, not the bundled files'
constant fills (whose equal logits make softmax flip on a one-ulp difference, and which ignore the
input).

Alone, a PIM device also takes every ReLU and Add a CNN has (51 in resnet50) and rounds each output
to its 16-bit type, so the error grows with depth: measured here, the class log-probabilities differ
from float32 ONNX Runtime's by up to 1.2 (bfloat16, aim; 0.24 on average) and 0.18 (float16, hbm-pim)
on random weights. The bounds below are those, with headroom: they catch a wrong layout or a lost
operand (errors of the order of the logits' spread, 2) without pretending to 16-bit exactness."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.check import reference_outputs
from kcompiler.zoo import BUNDLED

FAST = {"squeezenet", "bvlc_alexnet"}
TARGETS = ("aim", "hbm-pim", "atom+aim")
#: (largest, mean) |difference| of log-probabilities (of logits over their spread, for densenet121,
#: whose output is its logits) by the PIM's multiplier type
BOUND = {"aim": (1.5, 0.3), "hbm-pim": (0.25, 0.06), "atom+aim": (0.25, 0.06)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in BUNDLED])
def test_bundled_cnn_matches_ort(model, target, random_cnn):
    cm = kcompiler.compile(random_cnn(model), target=target)
    if target != "atom+aim":  # beside an NPU, placement may keep a whole CNN on it (a cost decision)
        assert cm.placement.get(target, 0) > 0, cm.placement
    feeds = cm.random_inputs()
    outs = cm.run(feeds, simulate=False)
    assert all(np.all(np.isfinite(v)) for v in outs.values())
    for name, want in reference_outputs(cm, feeds).items():
        got, want = outs[name].astype(np.float64).reshape(-1), want.astype(np.float64).reshape(-1)
        if want.min() > 0 and abs(want.sum() - 1) < 1e-3:  # probabilities
            err = np.abs(np.log(got) - np.log(want))
        else:
            err = np.abs(got - want) / want.std()
        largest, mean = BOUND[target]
        assert err.max() <= largest and err.mean() <= mean, (name, float(err.max()), float(err.mean()))
