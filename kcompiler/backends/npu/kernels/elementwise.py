"""Elementwise ops on the vector unit: one vector function per tile (n-ary ones folded pairwise
through a float32 temporary), casts between float types, Clip with constant bounds, and inference
batch normalization folded by the compiler into one per-channel multiply-add."""

from __future__ import annotations

import math

import numpy as np

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu.kernels.attrs import a_float, a_str, const_scalar
from kcompiler.backends.npu.kernels.common import broadcast_operand
from kcompiler.backends.npu.kernels.vector import VectorKernel, VTile

F32 = np.float32

#: op -> vector function of the elementwise ops the NPU claims (n-ary ones fold pairwise)
ELEMENTWISE: dict[str, str] = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min", "Sum": "add",
    "Mean": "add", "Relu": "relu", "LeakyRelu": "leakyrelu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp",
    "Log": "log", "Erf": "erf", "Gelu": "gelu", "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs",
    "Reciprocal": "reciprocal", "Sign": "sign", "Floor": "floor", "Ceil": "ceil", "Softplus": "softplus",
    "Elu": "elu", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish",
    "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh",
    "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh", "Softsign": "softsign", "Mish": "mish",
    "Round": "round", "Selu": "selu", "Celu": "celu", "ThresholdedRelu": "thresholdedrelu", "Shrink": "shrink",
    "Swish": "swish", "PRelu": "prelu",
}

#: op -> its attributes (name, default) in the order of the vector function's immediates
_STEP_IMMS: dict[str, tuple[tuple[str, float], ...]] = {
    "LeakyRelu": (("alpha", 0.01),), "Elu": (("alpha", 1.0),), "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "Selu": (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
    "Celu": (("alpha", 1.0),), "ThresholdedRelu": (("alpha", 1.0),), "Shrink": (("bias", 0.0), ("lambd", 0.5)),
    "Swish": (("alpha", 1.0),),
}


def elementwise_step(op: str, attrs) -> tuple[str, tuple[float, float, float]]:
    """(vector function, immediates) of one elementwise op; `attrs(name, default)` reads an attribute."""
    fn = ELEMENTWISE[op]
    if op == "Gelu" and attrs("approximate", "none") == "tanh":
        return "gelu_tanh", (0.0, 0.0, 0.0)
    imms = [float(attrs(name, d)) for name, d in _STEP_IMMS.get(op, ())]
    return fn, tuple(imms + [0.0] * (3 - len(imms)))


class ElementwiseKernel(VectorKernel):
    def __init__(self, node, spec):
        self.fn, self.imms = elementwise_step(node.op_type, lambda n, d: (
            a_str(node, n, d) if isinstance(d, str) else a_float(node, n, d)))
        super().__init__(node, spec)

    def stream_inputs(self):
        # each input once per position (Sum(x, x) reads x twice: the operands list keeps both)
        return [v for v in self.node.inputs if v is not None]

    def temps(self):
        n = len(self.streams)
        return [0] if n > 2 or self.node.op_type == "Mean" and n > 1 else []

    def body(self, t: VTile):
        op = self.node.op_type
        src = t.src
        if len(src) == 1 and op in ("Sum", "Mean", "Max", "Min"):
            return [t.vec("copy", t.dst, [src[0]])]
        if len(src) <= 2 and op != "Mean":
            return [t.vec(self.fn, t.dst, src, self.imms)]
        # an n-ary op folds pairwise into a float32 temporary; Mean then scales by 1/n
        tmp = t.tmp[0]
        out = []
        acc = src[0]
        for i, s in enumerate(src[1:]):
            last = i == len(src) - 2 and op != "Mean"
            dst = t.dst if last else tmp
            out.append(t.vec(self.fn, dst, [acc, s]))
            acc = tmp
        if op == "Mean":
            out.append(t.vec("scale", t.dst, [acc], (1.0 / len(src), 0.0, 0.0)))
        return out


class CastKernel(VectorKernel):
    """Cast / CastLike between float types: the vector unit's copy, which rounds to the destination's
    dtype (CastLike's second input gives only the type)."""

    fn = "copy"

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def cost(self):
        """The tiler moves every value at the spec's element size, the output's (the node's value
        dtype): a float32 -> float16 cast reads twice those bytes, so its streams cost more."""
        c = super().cost()
        moved = opinfo.itemsize(self.node.inputs[0]) + opinfo.itemsize(self.out)
        return Cost(cycles=int(c.cycles * max(1.0, moved / (2 * self.spec.elem_bytes))), macs=c.macs)


class ClipKernel(VectorKernel):
    fn = "clip"

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def body(self, t):
        n = self.node
        lo = const_scalar(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] is not None else None
        hi = const_scalar(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
        return [t.vec("clip", t.dst, t.src[:1], (lo, hi, 0.0))]


class BatchNormKernel(VectorKernel):
    """Inference BatchNormalization as one per-channel multiply-add; the compiler folds scale,
    bias, mean and variance into the two per-channel constants it lays out in DRAM."""

    fn = "fma"

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def operands(self, cg):
        n = self.node
        x = broadcast_operand(cg.layout(n.inputs[0]), self.space)
        c = self.space[1]
        eps = a_float(n, "epsilon", 1e-5)

        def fold():
            scale, bias, mean, var = (np.asarray(opinfo.const_value(v), np.float64) for v in n.inputs[1:5])
            a = scale / np.sqrt(var + eps)
            return a, bias - mean * a

        folded = {}

        def part(i):
            if not folded:
                folded["ab"] = fold()
            return folded["ab"][i].astype(F32)

        tail = (c,) + (1,) * (len(self.space) - 2)
        a = cg.const(f"{n.name}/scale", "f32", tail, lambda: part(0))
        b = cg.const(f"{n.name}/shift", "f32", tail, lambda: part(1))
        return [x, broadcast_operand(a, self.space), broadcast_operand(b, self.space)]

    def body(self, t):
        return [t.vec("fma", t.dst, t.src)]
