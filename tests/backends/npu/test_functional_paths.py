"""The functional simulator's whole-op fast path (one BLAS call / one vector pass per op) and
its tile-by-tile fallback compute the same values, and both match ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from conftest import ATOL, RTOL, make_model, ort_run, rand

import kcompiler
from kcompiler.backends.npu import kernels as K


@pytest.mark.parametrize("tiles,extents,ok", [
    ([(0, 1, 0, 4, 0, 6)], (1, 4, 6), True),
    ([(0, 1, 0, 2, 0, 6), (0, 1, 2, 4, 0, 3), (0, 1, 2, 4, 3, 6)], (1, 4, 6), True),  # uneven grid
    ([(0, 1, 0, 2, 0, 6), (0, 1, 2, 4, 0, 3)], (1, 4, 6), False),  # a gap
    ([(0, 1, 0, 3, 0, 6), (0, 1, 2, 4, 0, 6)], (1, 4, 6), False),  # an overlap
    ([(0, 1, 0, 4, 0, 7)], (1, 4, 6), False),  # outside
    ([(0, 1, 0, 4, 3, 3), (0, 1, 0, 4, 0, 6)], (1, 4, 6), False),  # an empty tile
    ([], (1, 4, 6), False),
    ([(0, 5), (5, 9)], (9,), True),
])
def test_tiles_partition(tiles, extents, ok):
    assert K.tiles_partition(tiles, extents) is ok


def _net():
    """Conv (padded, strided) -> Relu -> Conv 1x1 + residual Add -> MaxPool -> AveragePool -> Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 0, 2, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["p"], ["g"], kernel_shape=[8, 7]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, {"x": [1, 5, 31, 29]}, {"y": [1, 10]},
                      {"w1": rand(24, 5, 3, 3), "b1": rand(24, seed=2), "w2": rand(24, 24, 1, 1, seed=3),
                       "wf": rand(10, 24, seed=4), "bf": rand(10, seed=5)})


def _depthwise_net():
    """Depthwise conv (channel multiplier 2, strided, uneven pads) with bias and Relu, batch 2."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 1],
                              pads=[1, 2, 0, 1], group=6),
             helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, {"x": [2, 6, 15, 13]}, {"y": [2, 12, 7, 14]},
                      {"w": rand(12, 1, 3, 3, seed=6), "b": rand(12, seed=7)})


def _narrowing_net():
    """3x3 stride-1 convs with fewer output than input channels (batch 2; one grouped)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], kernel_shape=[3, 3], pads=[0, 1, 2, 1], group=2)]
    return make_model(nodes, {"x": [2, 48, 12, 10]}, {"y": [2, 8, 12, 10]},
                      {"w1": rand(20, 48, 3, 3, seed=8), "b1": rand(20, seed=9), "w2": rand(8, 10, 3, 3, seed=10)})


def _kernels(cm):
    return [k for prog in cm.programs if hasattr(prog, "kernels") for k in prog.kernels]


@pytest.mark.parametrize("net", [_net, _depthwise_net, _narrowing_net])
@pytest.mark.parametrize("target", ["npu", "atom"])
def test_whole_op_path_matches_tile_path(target, net):
    m = net()
    cm = kcompiler.compile(m, target=target, place={"*": "npu"})
    feeds = cm.random_inputs(0)
    ref = ort_run(m, feeds)["y"]
    fast = cm.run(feeds)["y"]
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, rtol=RTOL, atol=ATOL)
    # every GEMM and vector op took the whole-op path (its tiles were found to cover the output)
    ks = [k for k in _kernels(cm) if isinstance(k, (K.GemmKernel, K.VectorKernel))]
    assert ks and all(k._partition for k in ks), [(type(k).__name__, k._partition) for k in ks]
    # force the tile-by-tile fallback: same values
    for k in ks:
        k._partition = False
    slow = cm.run(feeds)["y"]
    np.testing.assert_allclose(slow, ref, rtol=RTOL, atol=ATOL)
    # the paths sum in different orders (taps then channels, or one dot product): float32 rounding
    np.testing.assert_allclose(slow, fast, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max()))


def test_threads_setting_does_not_change_values(monkeypatch):
    m = _net()
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    feeds = cm.random_inputs(1)
    monkeypatch.setenv("KC_NPU_THREADS", "1")
    one = cm.run(feeds)["y"]
    monkeypatch.setenv("KC_NPU_THREADS", "2")
    two = cm.run(feeds)["y"]
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_erf_accuracy():
    """The vector unit's erf (GELU, Erf) against math.erf, on arrays and on a 0-d value."""
    import math

    xs = np.linspace(-7, 7, 40001, dtype=np.float32)
    ref = np.array([math.erf(float(v)) for v in xs])
    got = K._erf(xs)
    assert got.dtype == np.float32 and got.shape == xs.shape
    assert np.abs(got - ref).max() < 1e-6
    assert abs(float(K._erf(np.float32(0.5))) - math.erf(0.5)) < 1e-6


def test_large_ops_run_tile_by_tile(monkeypatch):
    """Past WHOLE_OP_MAX_BYTES of output, GEMMs and vector ops keep the tile-by-tile path (its
    temporaries are tile-sized); the values stay ORT's."""
    m = _net()
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    feeds = cm.random_inputs(2)
    monkeypatch.setattr(K, "WHOLE_OP_MAX_BYTES", 0)
    got = cm.run(feeds)["y"]
    np.testing.assert_allclose(got, ort_run(m, feeds)["y"], rtol=RTOL, atol=ATOL)
    ks = [k for k in _kernels(cm) if isinstance(k, (K.GemmKernel, K.VectorKernel))]
    assert all(k._partition for k in ks)  # the tiles do cover the outputs ...
    calls, tile = [], K.GemmKernel._mm_tile

    def counting(self, args):
        calls.append(args)
        return tile(self, args)

    monkeypatch.setattr(K.GemmKernel, "_mm_tile", counting)
    cm.run(feeds)
    assert calls  # ... but the products ran tile by tile
