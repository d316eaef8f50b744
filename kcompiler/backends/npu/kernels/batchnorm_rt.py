"""Inference BatchNormalization whose scale, bias, mean and variance are run-time inputs: nothing to
fold at compile time, so the vector unit computes (x - mean) / sqrt(var + eps) * scale + bias with
the per-channel vectors broadcast over the other dims (five elementwise functions per tile)."""

from __future__ import annotations

from kcompiler import opinfo
from kcompiler.backends.base import YES, Support, no
from kcompiler.backends.npu.kernels.attrs import FLOATS, a_float, a_int
from kcompiler.backends.npu.kernels.common import Kernel, Operand, broadcast_operand
from kcompiler.backends.npu.kernels.elementwise import BatchNormKernel
from kcompiler.backends.npu.kernels.vector import VectorKernel


class RuntimeBatchNormKernel(VectorKernel):
    fn = "fma"
    work_per_elem = 5.0

    def stream_inputs(self):
        return list(self.node.inputs[:5])

    def operands(self, cg):
        x = broadcast_operand(cg.layout(self.node.inputs[0]), self.space)
        out = [x]
        for v in self.node.inputs[1:5]:  # [C] along dim 1 of the space
            lay = cg.layout(v)
            out.append(Operand(lay, tuple(lay.strides[0] if d == 1 else 0 for d in range(len(self.space)))))
        return out

    def temps(self):
        return [0, 0]

    def body(self, t):
        x, scale, bias, mean, var = t.src
        d, s = (t.tmp[0][0], 0, "f32"), (t.tmp[1][0], 0, "f32")
        eps = a_float(self.node, "epsilon", 1e-5)
        return [t.vec("sub", d, [x, mean]), t.vec("scale", s, [var], (1.0, eps, 0.0)), t.vec("sqrt", s, [s]),
                t.vec("div", d, [d, s]), t.vec("fma", t.dst, [d, scale, bias])]


def batchnorm_kernel(node, spec) -> Kernel:
    """Constant parameters fold into one multiply-add; run-time ones are computed per tile."""
    if all(opinfo.is_const(v) for v in node.inputs[1:5]):
        return BatchNormKernel(node, spec)
    return RuntimeBatchNormKernel(node, spec)


def batchnorm_check(node) -> Support:
    """Inference mode, only Y read, the four parameters static [C] float vectors."""
    if a_int(node, "training_mode", 0):
        return no("training-mode BatchNormalization (batch statistics) runs on the host")
    if len(node.inputs) < 5 or any(v is None for v in node.inputs[1:5]):
        return no("BatchNormalization needs scale, bias, mean and variance")
    xs = opinfo.shape_of(node.inputs[0])
    if xs is None or len(xs) < 2:
        return no("input must have rank >= 2")
    for v in node.inputs[1:5]:
        if opinfo.is_const(v):
            continue
        if v.dtype not in FLOATS or opinfo.shape_of(v) != (xs[1],):
            return no(f"parameter '{v.name}' must be a float vector of the {xs[1]} channels")
    return YES
