"""Clip whose bounds are run-time inputs: the vector unit's max with the lower bound, then min with
the upper one (the bounds are scalars broadcast over the tile). A lower bound above the upper one
gives the upper bound everywhere, as ONNX's Clip does."""

from __future__ import annotations

from kcompiler import opinfo
from kcompiler.backends.base import YES, Support, no
from kcompiler.backends.npu.kernels.attrs import FLOATS
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.backends.npu.kernels.elementwise import ClipKernel
from kcompiler.backends.npu.kernels.vector import VectorKernel


class RuntimeClipKernel(VectorKernel):
    """Clip(x, min, max) with min and/or max read from memory, not immediates."""

    fn = "max"

    def stream_inputs(self):
        return [v for v in self.node.inputs[:3] if v is not None]

    def _bound(self, i: int) -> int | None:
        """The position among the streams of input i (1: min, 2: max), None when absent."""
        ins = self.node.inputs
        if len(ins) <= i or ins[i] is None:
            return None
        return sum(1 for v in ins[:i] if v is not None)

    def body(self, t):
        lo, hi = self._bound(1), self._bound(2)
        out, src = [], t.src[0]
        if lo is not None:
            out.append(t.vec("max", t.dst, [src, t.src[lo]]))
            src = t.dst
        if hi is not None:
            out.append(t.vec("min", t.dst, [src, t.src[hi]]))
        if not out:
            out.append(t.vec("copy", t.dst, [src]))
        return out


def clip_kernel(node, spec) -> Kernel:
    """Constant bounds are the clip function's immediates; run-time ones are read from memory."""
    if all(opinfo.is_const(v) for v in node.inputs[1:3] if v is not None):
        return ClipKernel(node, spec)
    return RuntimeClipKernel(node, spec)


def clip_bounds_check(node) -> Support:
    """A run-time bound is a float scalar (ONNX says so; the kernel broadcasts it)."""
    for v in node.inputs[1:3]:
        if v is None or opinfo.is_const(v):
            continue
        if v.dtype not in FLOATS or opinfo.shape_of(v) is None or opinfo.numel(v) != 1:
            return no(f"bound '{v.name}' must be a float scalar")
    return YES
