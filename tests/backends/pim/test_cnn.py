"""The bundled CNNs on the PIM targets against ONNX Runtime.

On `aim`/`hbm-pim` alone, the PIM takes the fully-connected GEMVs, ReLUs, adds and reshapes and the
host the rest; on `atom+aim` the NPU takes the convolutions. The bundled weights make activations
grow past FP16's range, so on `hbm-pim` this also checks the per-tensor power-of-two scaling."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.check import compare_with_ort
from kcompiler.zoo import BUNDLED

FAST = {"squeezenet", "bvlc_alexnet"}
TARGETS = ("aim", "hbm-pim", "atom+aim")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in BUNDLED])
def test_bundled_cnn_matches_ort(model, target):
    cm = kcompiler.compile(model, target=target)
    if target != "atom+aim":  # beside an NPU, placement may keep a whole CNN on it (a cost decision)
        assert cm.placement.get(target, 0) > 0, cm.placement
    feeds = cm.random_inputs()
    outs = cm.run(feeds, simulate=False)
    assert all(np.all(np.isfinite(v)) for v in outs.values())
    c = compare_with_ort(cm, feeds, outs, rtol=5e-2, atol=2e-2)
    assert c.ok, c.describe()
