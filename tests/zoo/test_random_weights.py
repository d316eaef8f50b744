"""zoo.with_random_weights gives the bundled CNNs weights whose outputs show errors: the output
depends on the input, and the softmax is neither uniform nor one-hot."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.zoo import with_random_weights


@pytest.mark.parametrize("name", ["squeezenet", "inception_v2", "densenet121"])
def test_random_weights_make_errors_visible(name, tmp_path):
    path = with_random_weights(name, tmp_path / f"{name}.onnx", seed=0)
    cm = kcompiler.compile(path, target="host")
    feeds = cm.random_inputs(0)
    (k,) = feeds
    out = next(iter(cm.run(feeds, simulate=False).values())).astype(np.float64).reshape(-1)
    # the same image transposed: a layout error of this kind must move the output ten times past the
    # tolerance the CNN value checks use (1e-4 relative, plus 1e-5 of the output's scale)
    feeds[k] = np.ascontiguousarray(np.swapaxes(feeds[k], -1, -2))
    moved = next(iter(cm.run(feeds, simulate=False).values())).astype(np.float64).reshape(-1)
    tol = 1e-5 * np.abs(out).max() + 1e-4 * np.abs(out)
    assert (np.abs(moved - out) / tol).max() > 10
    if name != "densenet121":  # (densenet's output is its logits)
        assert 2 / out.size < out.max() < 0.9 and abs(out.sum() - 1) < 1e-4
    else:
        assert 1.5 < out.std() < 2.5  # the classifier was scaled to spread the logits by about 2
