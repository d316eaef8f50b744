"""Clip whose bounds are run-time inputs: the vector unit's max with the lower bound, then min with
the upper one (the bounds are scalars broadcast over the tile). A lower bound above the upper one
gives the upper bound everywhere, as ONNX's Clip does."""

from __future__ import annotations

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
