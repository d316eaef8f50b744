"""Float32 functions both simulators' units compute with the same operations, bit for bit: the NPU's
vector unit (kcompiler.backends.npu.vfn) and PIM's activation-function unit. Erf and GELU are not
here: the two units evaluate them differently (see kcompiler.backends.pim.sim.activation)."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def sigmoid(x):
    """1 / (1 + e^-x), in float32 for a float32 `x`."""
    return (1 / (1 + np.exp(-x))).astype(F32)
