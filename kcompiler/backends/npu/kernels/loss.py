"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss on the vector unit: the input seen as
(N, C, D) with D the product of the spatial dims, the integer targets (N, D) loaded as they are
and compared with each class index by the `nll` function (a gather along the class dim, exact for
class indices below 2^24), the class weights picked the same way, then summed or averaged over
every element when the reduction asks. SoftmaxCrossEntropyLoss is LogSoftmax along C first (its
log_prob output, when read, is that tile stored).

One core holds the whole problem in its scratchpad (the claim check refuses what does not fit):
losses are computed at the end of a model or in training graphs, on small tensors."""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import dma
from kcompiler.backends.npu.isa import CH
from kcompiler.backends.npu.kernels.attrs import a_int, a_str, shape
from kcompiler.backends.npu.kernels.common import Kernel, sram_aligned
from kcompiler.backends.npu.kernels.vector import VTile
from kcompiler.backends.npu.tiler import tile_vector
from kcompiler.errors import LoweringError

#: the largest |ignore_index| the vector unit compares exactly (a float32 immediate)
MAX_INDEX = 1 << 24


def _used(v) -> bool:
    return v is not None and bool(v.name) and (bool(v.uses()) or v.is_graph_output())


class LossKernel(Kernel):
    """NegativeLogLikelihoodLoss (input: log-probabilities) or SoftmaxCrossEntropyLoss (input: scores)."""

    kind = "vector"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        x = node.inputs[0]
        xs = shape(x)
        self.n, self.c = xs[0], xs[1]
        self.d = math.prod(xs[2:])
        self.softmax = node.op_type == "SoftmaxCrossEntropyLoss"
        self.weight = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
        self.reduction = a_str(node, "reduction", "mean")
        ii = node.attributes.get("ignore_index")
        self.ignore = None if ii is None else int(ii.value)
        self.log_prob = node.outputs[1] if self.softmax and len(node.outputs) > 1 and _used(node.outputs[1]) \
            else None

    def sram_need(self) -> int:
        """Scratchpad bytes of the single tile: input (and its log-softmax), targets, weights, result."""
        nd = self.n * self.c * self.d
        return (sram_aligned(nd * 4) * 2 + sram_aligned(self.n * self.d * 8) + sram_aligned(self.c * 4)
                + sram_aligned(self.n * self.d * 4))

    def cost(self) -> Cost:
        rows, cyc = tile_vector(self.spec, 1, self.n * self.c * self.d, 3,
                                "transcendental" if self.softmax else "alu", 3.0 if self.softmax else 1.0)
        return Cost(cycles=cyc + self.spec.issue_cycles, macs=0)

    def _view(self, lay, with_class: bool):
        """(shape, element strides) of a (N, C, d...) or (N, d...) tensor as a (1, N, C, D) block."""
        st, sh = lay.strides, lay.shape
        first = 2 if with_class else 1
        for i in range(first, len(sh) - 1):  # the spatial dims must be one run
            if sh[i + 1] > 1 and st[i] != st[i + 1] * sh[i + 1]:
                raise LoweringError(f"NPU op '{self.node.name}': the spatial dims of an operand are not contiguous")
        s_d = st[-1] if len(sh) > first else 0
        if with_class:
            return (1, self.n, self.c, self.d), (0, st[0], st[1], s_d)
        return (1, self.n, 1, self.d), (0, st[0], 0, s_d)

    def emit(self, cg, op):
        node, core = self.node, 0
        x, t = node.inputs[0], node.inputs[1]
        X, T, O = cg.layout(x), cg.layout(t), cg.layout(self.out)
        W = cg.layout(self.weight) if self.weight is not None else None
        tile = (1, self.n, self.c, self.d)
        addr = 0
        slots = {}
        for name, nbytes in (("x", self.n * self.c * self.d * X.esize), ("lp", self.n * self.c * self.d * X.esize),
                             ("t", self.n * self.d * T.esize), ("w", self.c * (W.esize if W else 0)),
                             ("o", self.n * self.d * 4)):
            slots[name] = addr
            addr += sram_aligned(max(nbytes, 1))
        if addr > self.spec.sram_bytes:
            raise LoweringError(f"NPU op '{node.name}': the loss needs {addr} bytes of scratchpad (the claim check "
                                "should have refused it)")
        loads = [(X, slots["x"], *self._view(X, True)), (T, slots["t"], *self._view(T, False))]
        if W is not None:
            loads.append((W, slots["w"], (1, 1, self.c, 1), (0, 0, W.strides[0], 0)))
        for j, (lay, a, shp, strd) in enumerate(loads):
            cg.emit(dma(isa.LOAD, core, op, lay.dtype, lay.buf, lay.off, a, shp, strd,
                        signal=CH["ld>vx"] if j == len(loads) - 1 else 0))
        vt = VTile(self, core, op, tile, 4, (slots["o"], 0, O.dtype), [], [])
        vecs = []
        src = (slots["x"], 0, X.dtype)
        if self.softmax:
            src = (slots["lp"], 0, X.dtype)
            vecs.append(vt.vec("logsoftmax", src, [(slots["x"], 0, X.dtype)], axes=4))
        per_elem = self.reduction == "none"
        axes = 4 if per_elem else 2 | 4 | 8 | 1
        flags = (1 if self.ignore is not None else 0) | (2 if self.reduction == "mean" else 0)
        srcs = [src, (slots["t"], 4, T.dtype), (slots["w"], 1 | 2 | 8, W.dtype) if W is not None else None]
        vecs.append(vt.vec("nll", (slots["o"], 0, O.dtype), srcs,
                           (float(self.ignore) if self.ignore is not None else 0.0, 0.0, 0.0), arg=flags, axes=axes))
        # each VECTOR hands its tile to the store that reads it: the log-probabilities' (when read)
        # after the LogSoftmax, the loss's after nll (the store queue runs them in that order)
        lp_store = self.log_prob is not None
        for j, ins in enumerate(vecs):
            last = j == len(vecs) - 1
            cg.emit(ins.replace(wait=CH["ld>vx"] if j == 0 else 0, signal=CH["vx>st"] if last or lp_store else 0))
        if lp_store:
            L = cg.layout(self.log_prob)
            shp, strd = self._view(L, True)
            cg.emit(dma(isa.STORE, core, op, L.dtype, L.buf, L.off, slots["lp"], shp, strd, wait=CH["vx>st"]))
        oshp, ostr = self._view(O, False) if per_elem else ((1,), (0,))
        cg.emit(dma(isa.STORE, core, op, O.dtype, O.buf, O.off, slots["o"], oshp, ostr, wait=CH["vx>st"]))


def loss_check(node, spec) -> str | None:
    """Why the NPU cannot complete this loss (None: it can)."""
    xs, ts = shape(node.inputs[0]), shape(node.inputs[1])
    if xs is None or ts is None or len(xs) < 2:
        return "the input must be (N, C, d...) with static shapes"
    if tuple(ts) != (xs[0], *xs[2:]):
        return f"target shape {ts} is not (N, d...) of the input's {xs}"
    if a_str(node, "reduction", "mean") not in ("none", "sum", "mean"):
        return f"reduction '{a_str(node, 'reduction', 'mean')}' is not lowered"
    if abs(a_int(node, "ignore_index", 0)) >= MAX_INDEX or xs[1] >= MAX_INDEX:
        return "class indices of 2^24 or more are not compared exactly in float32"
    k = LossKernel(node, spec)
    if math.prod(xs) == 0:
        return "the input has no elements"
    if k.sram_need() > spec.sram_bytes:
        return f"the loss needs {k.sram_need()} bytes of one core's scratchpad ({spec.sram_bytes})"
    return None


def loss_support(node, spec) -> Support:
    """The losses' targets are integer class indices, the weights (if any) a tensor of the input's
    dtype, and the whole problem fits one core (loss_check)."""
    t = node.inputs[1]
    if t is None or t.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return no("the target must be int64 or int32 class indices")
    w = node.inputs[2] if len(node.inputs) > 2 else None
    if w is not None and (w.dtype != node.inputs[0].dtype or opinfo.shape_of(w) is None):
        return no(f"weight '{w.name}' must be a static tensor of the input's dtype")
    why = loss_check(node, spec)
    return YES if why is None else no(why)
