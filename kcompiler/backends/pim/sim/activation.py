"""The activation-function unit's table: what AF computes, on float32 values widened from the bank.

Sigmoid is the NPU vector unit's own (kcompiler.backends.numerics: the same float32 operations, bit
for bit). Erf and GELU are not shared with kcompiler.backends.npu.vfn on purpose, as they round
differently: this unit evaluates Abramowitz & Stegun 7.1.26 in float64 and rounds once to float32
(and the tanh GELU in float64, sqrt(2/pi) being a float64 scalar), the NPU's vector unit evaluates
them in float32. Over every finite bf16 / fp16 input, erf differs in float32 for 32,345 / 29,339 of
them and still for 28,697 / 6,605 after rounding to the device dtype (tiny inputs: the float32
evaluation's absolute error is large relative to them); the tanh GELU for 93 / 370 after rounding.
One shared version would change PIM's results.
"""

from __future__ import annotations

import numpy as np

from kcompiler.backends.numerics import sigmoid


def _erf(x):
    """erf in float64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: far below BF16/FP16 resolution)."""
    x = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(
        -x * x)
    return (np.sign(x) * y).astype(np.float32)


def _gelu(p):
    if p:  # tanh approximation
        return lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))


#: the activation-function unit's table: name -> (parameter -> function on float32)
AF_FUNCS = {
    "Relu": lambda p: lambda x: np.maximum(x, 0),
    "LeakyRelu": lambda p: lambda x: np.where(x >= 0, x, np.float32(p) * x),
    "Sigmoid": lambda p: sigmoid,
    "Tanh": lambda p: np.tanh,
    "Gelu": _gelu,
    "Erf": lambda p: _erf,
}

