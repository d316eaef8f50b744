"""The CPU peers of `kc bench --compare` run the same model and agree with kcompiler."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.errors import KCError
from kcompiler.peers import compare_peers


@pytest.fixture(scope="module")
def squeezenet():
    return kcompiler.compile("squeezenet")


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
