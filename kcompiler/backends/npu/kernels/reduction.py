"""Vector kernels that reduce along axes: Softmax / LogSoftmax / Hardmax, LayerNormalization
(with its Mean and InvStdDev outputs) and RMSNormalization, the Reduce* ops and global pools,
and LRN's window over neighbouring channels."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.kernels.attrs import a_float, a_int, a_ints, const_ints, shape
from kcompiler.backends.npu.kernels.common import Operand, reduced_operand
from kcompiler.backends.npu.kernels.vector import VectorKernel


class SoftmaxKernel(VectorKernel):
    """Softmax, LogSoftmax and Hardmax along one axis."""

    fn = "softmax"
    work_per_elem = 3.0

    def __init__(self, node, spec):
        self.fn = {"LogSoftmax": "logsoftmax", "Hardmax": "hardmax"}.get(node.op_type, "softmax")
        super().__init__(node, spec)

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def reduced_axes(self):
        return {a_int(self.node, "axis", -1) % len(self.space)}


class LpNormKernel(VectorKernel):
    """LpNormalization (p 1 or 2) along one axis: one lp_normalize over the rows."""

    fn = "lp_normalize"
    work_per_elem = 3.0

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def reduced_axes(self):
        return {a_int(self.node, "axis", -1) % len(self.space)}

    def body(self, t):
        return [t.vec(self.fn, t.dst, t.src[:1], (float(a_int(self.node, "p", 2)), 0.0, 0.0))]


class LayerNormKernel(VectorKernel):
    """LayerNormalization; its Mean and InvStdDev outputs, when read, are one more reduction each
    over the same rows (reduce_mean, reduce_rstd), written in float32 (stash_type 1)."""

    fn = "layernorm"
    work_per_elem = 4.0

    def stream_inputs(self):
        return [v for v in self.node.inputs[:3] if v is not None]

    def reduced_axes(self):
        r = len(self.space)
        return set(range(a_int(self.node, "axis", -1) % r, r))

    def body(self, t):
        eps = a_float(self.node, "epsilon", 1e-5)
        return [t.vec(self.fn, t.dst, t.src[:3], (eps, 0.0, 0.0))]

    def stats(self) -> list["RowStatKernel"]:
        if self.fn != "layernorm":
            return []
        eps = a_float(self.node, "epsilon", 1e-5)
        return [RowStatKernel(self.node, self.spec, v, fn, eps, self.reduced_axes())
                for v, fn in zip(self.node.outputs[1:3], ("reduce_mean", "reduce_rstd"))
                if v is not None and v.name and (v.uses() or v.is_graph_output())]

    def cost(self):
        c = super().cost()
        return Cost(cycles=c.cycles + sum(k.cost().cycles for k in self.stats()), macs=c.macs)

    def emit(self, cg, op):
        super().emit(cg, op)
        for k in self.stats():
            k.emit(cg, op)


class RowStatKernel(VectorKernel):
    """A statistic of the rows a normalisation runs over (its mean, its inverse standard deviation),
    kept as size-1 dims: the extra outputs of LayerNormalization."""

    def __init__(self, node, spec, out: ir.Value, fn: str, eps: float, axes: set[int]):
        self.fn, self.eps, self.axes = fn, eps, set(axes)
        self.work_per_elem = isa.VECTOR_FNS[fn][2]
        super().__init__(node, spec)
        self.out = out

    def iteration_space(self):
        return shape(self.node.inputs[0])

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def reduced_axes(self):
        return self.axes

    def result(self, cg):
        lay = cg.layout(self.out)
        return Operand(lay, tuple(0 if d in self.axes else s for d, s in enumerate(lay.strides)))

    def body(self, t):
        return [t.vec(self.fn, t.dst, t.src[:1], (self.eps if self.fn == "reduce_rstd" else 0.0, 0.0, 0.0))]


class RmsNormKernel(LayerNormKernel):
    fn = "rmsnorm"
    work_per_elem = 3.0

    def stream_inputs(self):
        return [v for v in self.node.inputs[:2] if v is not None]


def nonempty_input(node: ir.Node) -> Support:
    """A reduction over no elements has values (0, -inf, 1, ...) but no tile to compute them in."""
    return YES if opinfo.numel(node.inputs[0]) > 0 else no(f"input '{node.inputs[0].name}' has no elements")


#: the Reduce* ops beyond sum/mean/max/min -> their vector function (vfn.REDUCE_MORE)
REDUCE_OPS = {"ReduceL1": "reduce_l1", "ReduceL2": "reduce_l2", "ReduceSumSquare": "reduce_sumsquare",
              "ReduceLogSum": "reduce_logsum", "ReduceLogSumExp": "reduce_logsumexp", "ReduceProd": "reduce_prod"}


class ReduceKernel(VectorKernel):
    """ReduceMean / ReduceSum / ReduceMax (and REDUCE_OPS) over constant axes: the iteration space is the input."""

    def __init__(self, node, spec):
        self.fn = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
                   "ReduceMin": "reduce_min", "GlobalAveragePool": "reduce_mean",
                   "GlobalMaxPool": "reduce_max", **REDUCE_OPS}[node.op_type]
        super().__init__(node, spec)

    def iteration_space(self):
        return shape(self.node.inputs[0])

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def axes(self) -> tuple[int, ...]:
        n = self.node
        r = len(shape(n.inputs[0]))
        if n.op_type.startswith("Global"):
            return tuple(range(2, r))
        ax = a_ints(n, "axes")
        if ax is None and len(n.inputs) > 1 and n.inputs[1] is not None:
            ax = const_ints(n.inputs[1])
        if not ax:
            return () if a_int(n, "noop_with_empty_axes", 0) else tuple(range(r))
        return tuple(sorted(a % r for a in ax))

    def keepdims(self) -> bool:
        return self.node.op_type.startswith("Global") or bool(a_int(self.node, "keepdims", 1))

    def reduced_axes(self):
        return set(self.axes())

    def result(self, cg):
        return reduced_operand(cg, self.out, self.reduced_axes(), bool(self.keepdims()), len(self.space))

    def body(self, t):
        if not self.reduced_axes():
            return [t.vec("copy", t.dst, t.src[:1])]
        return [t.vec(self.fn, t.dst, t.src[:1])]


class LrnKernel(VectorKernel):
    fn = "lrn"

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def reduced_axes(self):
        return {1}

    def body(self, t):
        n = self.node
        return [t.vec("lrn", t.dst, t.src[:1], (a_float(n, "alpha", 1e-4), a_float(n, "beta", 0.75),
                                                a_float(n, "bias", 1.0)), arg=a_int(n, "size", 5))]
