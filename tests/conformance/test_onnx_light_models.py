"""The nine real CNNs bundled in the onnx wheel (onnx/backend/test/data/light/light_*.onnx).

Two checks per model, through kcompiler.onnx_backend on the host target:
- as onnx's own runner does: the input is `Runner.generate_dummy_data(random=False)` (a ramp)
  and the expected output is the `light_<name>_output_0.pb` beside the model, at the rtol of
  onnx's test case for it;
- against ONNX Runtime with a random normal input (rtol 1e-3, atol 1e-4), on the same network
  with random weights (kcompiler.zoo.with_random_weights): the bundled files hold constant
  fills, so every class gets the same score whatever the input, which hides a wrong layout,
  and the scores are so large that the softmax flips on a one-ulp difference between BLAS
  kernels.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.runner import Runner
from onnx_cases import LIGHT_DIR

from kcompiler import onnx_backend
from kcompiler.backends.host.backend import ORT_MAX_IR_VERSION

TARGET = os.environ.get("KC_CONFORMANCE_TARGET", "host")
MODELS = sorted(p.stem[len("light_"):] for p in LIGHT_DIR.glob("light_*.onnx"))
#: onnx's own tolerance for these cases (onnx.backend.test.case.model), where it is not 1e-3
RTOL = {"densenet121": 2e-3}


def test_all_nine_present() -> None:
    assert len(MODELS) == 9, MODELS


@functools.lru_cache(maxsize=None)
def _prepared(name: str):
    model = onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    return model, inputs, onnx_backend.prepare(model, "CPU", target=TARGET)


@pytest.mark.parametrize("name", MODELS)
def test_light_model_reference_output(name: str) -> None:
    model, inputs, rep = _prepared(name)
    feeds = [Runner.generate_dummy_data(vi, seed=0, name=name, random=False) for vi in inputs]
    expected = [numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_{i}.pb")))
                for i in range(len(model.graph.output))]
    outputs = rep.run(feeds)
    Runner.assert_similar_outputs(expected, list(outputs), rtol=RTOL.get(name, 1e-3), atol=1e-7, model_dir=name)


@pytest.mark.parametrize("name", MODELS)
def test_light_model_vs_onnxruntime(name: str, random_cnn) -> None:
    import onnxruntime as ort

    path = random_cnn(name)
    rep = onnx_backend.prepare(path, "CPU", target=TARGET)  # (a path: its weights are beside it)
    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    rng = np.random.default_rng(0)
    feeds = [Runner.generate_dummy_data(vi, name=name) for vi in inputs]
    feeds = [rng.standard_normal(x.shape).astype(np.float32) for x in feeds]
    assert model.ir_version <= ORT_MAX_IR_VERSION
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {vi.name: x for vi, x in zip(inputs, feeds)})
    got = rep.run(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)
