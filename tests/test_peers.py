"""The CPU peers of `kc bench --compare` run the same model and agree with kcompiler."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.errors import KCError
from kcompiler.peers import compare_peers


@pytest.fixture(scope="module")
def squeezenet(random_cnn):
    """squeezenet with random weights: the bundled constant fills make every output equal,
    whatever the input and however a peer lays out the weights."""
    return kcompiler.compile(random_cnn("squeezenet"))


def test_ort_peer_matches_kcompiler(squeezenet):
    feeds = squeezenet.random_inputs(seed=3)
    ours = squeezenet.run(feeds)
    (ort,) = compare_peers(squeezenet, ["ort"], feeds)
    assert ort.latency_s > 0 and ort.runs >= 3
    for name, arr in ours.items():
        np.testing.assert_allclose(ort.outputs[name], arr, rtol=1e-4, atol=1e-5)


def test_tvm_peer_matches_kcompiler(squeezenet):
    pytest.importorskip("tvm")
    feeds = squeezenet.random_inputs(seed=4)
    ours = squeezenet.run(feeds)
    (tvm,) = compare_peers(squeezenet, ["tvm"], feeds)
    assert tvm.compile_s > 0
    for name, arr in ours.items():
        np.testing.assert_allclose(tvm.outputs[name], arr, rtol=1e-3, atol=1e-4)


def test_unknown_peer_is_a_user_error(squeezenet):
    with pytest.raises(KCError, match="unknown peer"):
        compare_peers(squeezenet, ["pytorch"])


def _external_weights_model(folder):
    """A two-layer MLP whose weights live in an external file next to the model: (path, w1, w2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    path = folder / "mlp.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="mlp.weights", size_threshold=0)
    return str(path), w1, w2


@pytest.mark.parametrize("peer", ["ort", "tvm"])
def test_peers_read_external_weights(peer, tmp_path, monkeypatch):
    """Weights in a file beside the model reach the peers (the zoo's large models keep theirs
    that way), even when the working directory is elsewhere."""
    if peer == "tvm":
        pytest.importorskip("tvm")
    path, w1, w2 = _external_weights_model(tmp_path)
    cm = kcompiler.compile(path, target="host")
    monkeypatch.chdir(tmp_path.parent)
    feeds = cm.random_inputs(seed=5)
    (res,) = compare_peers(cm, [peer], feeds)
    # numpy, not kcompiler's host target (itself ONNX Runtime reading the same file), is the reference
    np.testing.assert_allclose(res.outputs["y"], np.maximum(feeds["x"] @ w1, 0) @ w2, rtol=1e-4, atol=1e-4)
