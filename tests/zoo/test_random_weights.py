"""kcompiler.zoo.with_random_weights: the bundled CNNs with weights that make errors visible.

The bundled files hold constant fills: every class gets the same huge score whatever the input.
The random weights must give finite scores that differ between classes (neither a flat softmax,
inside any atol, nor a saturated one) and between inputs.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kcompiler.zoo import BUNDLED


def _scores(path: str, seeds=(1, 2)):
    """(outputs, class scores) of the model for one random normal image per seed; the class
    scores are the Softmax's input, or the output where there is no Softmax."""
    m = onnx.load(path, load_external_data=False)
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"]
    if softmax:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(softmax[-1].input[0]))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", os.path.dirname(path))
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (x,) = sess.get_inputs()
    res = [sess.run(None, {x.name: np.random.default_rng(s).standard_normal(x.shape).astype(np.float32)})
           for s in seeds]
    return [r[0] for r in res], [r[-1] for r in res]


@pytest.mark.parametrize("name", BUNDLED)
def test_random_weights_separate_classes_and_inputs(name, random_cnn):
    outs, scores = _scores(random_cnn(name))
    for y, s in zip(outs, scores):
        assert np.isfinite(y).all() and np.isfinite(s).all()
        assert 0.5 < s.std() < 10, s.std()  # the last layer is scaled to about 2
        if y is not s:  # a softmax: neither flat nor one-hot
            assert 1e-3 < y.max() < 0.9 and y.max() / y.min() > 100
    # the input matters, at more than any value check's tolerance
    assert np.abs(outs[0] - outs[1]).max() > 1e-3 * np.abs(outs[0]).max()


def test_random_weights_are_seeded(tmp_path):
    from kcompiler.zoo import with_random_weights

    a = with_random_weights("shufflenet", tmp_path / "a.onnx", seed=0)  # (it has BatchNormalization)
    a2 = with_random_weights("shufflenet", tmp_path / "a2.onnx", seed=0)
    b = with_random_weights("shufflenet", tmp_path / "b.onnx", seed=1)
    assert open(a + ".data", "rb").read() == open(a2 + ".data", "rb").read()
    assert open(a + ".data", "rb").read() != open(b + ".data", "rb").read()
    m = onnx.load(a)
    onnx.checker.check_model(m)
    inits = {t.name for t in m.graph.initializer}
    assert [v.name for v in m.graph.input if v.name not in inits] == [v.name for v in m.graph.input]
    assert not any(n.op_type == "ConstantOfShape" for n in m.graph.node)


def test_random_cnn_at_another_batch_shares_the_weights(random_cnn):
    path = random_cnn("resnet50", batch=2)
    m = onnx.load(path, load_external_data=False)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"} == {
        "resnet50.onnx.data"}
