"""Batches above 1 on the NPU match ONNX Runtime, whatever the tiling and the split over cores.

Regression for resnet50 at batch 4 on atom (softmax off by 0.0086): the bundled CNNs' weights
are constants, so a row's logits are exactly equal (~1e19) in ONNX Runtime and softmax is
uniform. The functional GEMM formed each tile with one float32 BLAS call, whose summation order
depends on the call's shape; with N = 1000 split 7 x 128 + 104 over 8 cores at M = 4, the last
core's columns came out one ulp larger and took all of softmax's mass (1/104 - 1/1000)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import kcompiler
from conftest import check_on, make_model, ort_run, rand, with_batch
from kcompiler.check import compare_with_ort
from kcompiler.zoo import bundled_path


def convnet(batch: int, c: int = 24, hw: int = 12, classes: int = 1000, const_weights: bool = False):
    """Conv -> BN -> Relu -> Conv -> Add -> Relu -> MaxPool -> GAP -> Reshape -> Gemm -> Softmax."""
    def w(*shape, seed):
        return np.full(shape, 0.05, np.float32) if const_weights else rand(*shape, seed=seed) * np.float32(0.2)

    inits = {"w1": w(c, 3, 3, 3, seed=2), "w2": w(c, c, 3, 3, seed=3), "s": np.abs(rand(c, seed=4)) + 0.5,
             "bb": rand(c, seed=5) * np.float32(0.1), "mu": rand(c, seed=6) * np.float32(0.1),
             "var": np.abs(rand(c, seed=7)) + 0.5, "fw": w(classes, c, seed=8), "fb": w(classes, seed=9),
             "shp": np.array([-1, c], np.int64)}
    if const_weights:  # every channel alike, so a row's logits are exactly equal
        for k in ("s", "bb", "mu", "var"):
            inits[k] = np.full(c, inits[k][0], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Reshape", ["g", "shp"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["o"], transB=1),
             helper.make_node("Softmax", ["o"], ["y"], axis=1)]
    return make_model(nodes, {"x": [batch, 3, hw, hw]}, {"y": [batch, classes]}, inits)


@pytest.mark.parametrize("target", ["npu", "atom"])
@pytest.mark.parametrize("batch", [2, 3, 4])
@pytest.mark.parametrize("const_weights", [False, True], ids=["random", "constant"])
def test_small_convnet_batches(batch, target, const_weights):
    check_on(convnet(batch, const_weights=const_weights), target)


@pytest.mark.parametrize("target", ["npu", "atom", "rngd"])
@pytest.mark.parametrize("m", [1, 3, 4, 16])
def test_equal_dot_products_stay_equal_across_tiles(m, target):
    """A GEMM whose output columns are mathematically equal gives exactly equal columns, however
    its N is split over cores and tiles (ONNX Runtime keeps them equal, and softmax amplifies any
    difference at large magnitude)."""
    node = helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)
    model = make_model([node], {"a": [m, 2048]}, {"y": [m, 1000]}, {"w": np.full((1000, 2048), 0.0123, np.float32)})
    cm = kcompiler.compile(model, target=target, place={"*": "npu"})
    a = (np.random.default_rng(0).standard_normal((m, 2048)) * 1e15).astype(np.float32)
    y = cm.run({"a": a})["y"]
    assert all(len(np.unique(row)) == 1 for row in y), [len(np.unique(row)) for row in y]
    np.testing.assert_allclose(y, ort_run(model, {"a": a})["y"], rtol=1e-5)


def _resnet50_at(batch: int, target: str):
    model = with_batch(onnx.load(str(bundled_path("resnet50"))), batch)
    cm = kcompiler.compile(model, target=target)
    feeds = cm.random_inputs()
    c = compare_with_ort(cm, feeds, cm.run(feeds), rtol=1e-3, atol=1e-4)
    assert c.ok, f"{c.describe()}: max abs {c.max_abs}"


@pytest.mark.parametrize("target", ["npu", "atom"])
def test_resnet50_batch4(target):
    _resnet50_at(4, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["warboy", "rngd"])
def test_resnet50_batch4_other_chips(target):
    _resnet50_at(4, target)
