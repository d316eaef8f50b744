"""Batches above 1 on the NPU match ONNX Runtime, whatever the tiling and the split over cores
(conv tiles that span images, patches of whole images), with random weights: the bundled CNNs'
constant fills make logits tie, and a tie decided by a one-ulp difference in a BLAS kernel's
summation order says nothing about the program."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kcompiler
from conftest import check_on, make_model, rand
from kcompiler.check import compare_with_ort


def convnet(batch: int, c: int = 24, hw: int = 12, classes: int = 1000):
    """Conv -> BN -> Relu -> Conv -> Add -> Relu -> MaxPool -> GAP -> Reshape -> Gemm -> Softmax."""
    def w(*shape, seed):
        return rand(*shape, seed=seed) * np.float32(0.2)

    inits = {"w1": w(c, 3, 3, 3, seed=2), "w2": w(c, c, 3, 3, seed=3), "s": np.abs(rand(c, seed=4)) + 0.5,
             "bb": rand(c, seed=5) * np.float32(0.1), "mu": rand(c, seed=6) * np.float32(0.1),
             "var": np.abs(rand(c, seed=7)) + 0.5, "fw": w(classes, c, seed=8), "fb": w(classes, seed=9),
             "shp": np.array([-1, c], np.int64)}
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
def test_small_convnet_batches(batch, target):
    check_on(convnet(batch), target)


def _resnet50_at(path: str, target: str):
    cm = kcompiler.compile(path, target=target)
    feeds = cm.random_inputs()
    c = compare_with_ort(cm, feeds, cm.run(feeds), rtol=1e-4, atol=0, atol_scale=1e-5)
    assert c.ok, f"{c.describe()}: max abs {c.max_abs}"


@pytest.mark.parametrize("target", ["npu", "atom"])
def test_resnet50_batch4(target, random_cnn):
    _resnet50_at(random_cnn("resnet50", 4), target)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["warboy", "rngd"])
def test_resnet50_batch4_other_chips(target, random_cnn):
    _resnet50_at(random_cnn("resnet50", 4), target)
