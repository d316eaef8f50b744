"""Golden assembler text of small graphs: a codegen change shows up as a readable diff.

Regenerate with  KC_REGEN_GOLDEN=1 pytest tests/backends/npu/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import kcompiler

from conftest import make_model, rand

GOLDEN = Path(__file__).parent / "golden"


def conv_relu_pool():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    return make_model(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 8, 8, 8]}, {"w": rand(8, 3, 3, 3), "b": rand(8)})


def matmul_softmax():
    nodes = [helper.make_node("MatMul", ["a", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    return make_model(nodes, {"a": [100, 70]}, {"y": [100, 200]}, {"w": rand(70, 200)})


def add_layernorm():
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1)]
    return make_model(nodes, {"x": [4, 10, 48], "r": [4, 10, 48]}, {"y": [4, 10, 48]},
                      {"g": rand(48), "b": np.zeros(48, np.float32)})


CASES = {"conv_relu_pool": (conv_relu_pool, "npu"), "matmul_softmax": (matmul_softmax, "atom"),
         "add_layernorm": (add_layernorm, "rngd")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_asm(name):
    build, target = CASES[name]
    cm = kcompiler.compile(build(), target=target, mode="timing")
    text = "\n".join(p.asm() for p in cm.programs if p.asm()) + "\n"
    path = GOLDEN / f"{name}.asm"
    if os.environ.get("KC_REGEN_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if os.environ.get("KC_REGEN_GOLDEN") != "1":
            pytest.skip(f"wrote missing golden file {path.name}")
    assert text == path.read_text(), f"generated program differs from {path}; rerun with KC_REGEN_GOLDEN=1 " \
                                     "if the change is intended"
