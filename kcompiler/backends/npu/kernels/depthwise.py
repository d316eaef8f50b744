"""Depthwise convolution (one input channel per group): too little reuse for the systolic array,
so it runs on the vector unit as a window function (window.py) over whole planes, tiled over
channels, with the conv's bias and any fused epilogue as vector steps on each tile."""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import split_range
from kcompiler.backends.npu.kernels.attrs import shape
from kcompiler.backends.npu.kernels.codegen import Layout, contiguous
from kcompiler.backends.npu.kernels.common import broadcast_operand
from kcompiler.backends.npu.kernels.conv import ConvKernel
from kcompiler.backends.npu.kernels.window import emit_window_op
from kcompiler.backends.npu.tiler import tile_vector
from kcompiler.errors import LoweringError


class DepthwiseConvKernel(ConvKernel, lowers="DepthwiseConv"):
    """A Conv whose groups each read one input channel (gemm.lowering_of): the conv's geometry,
    bias and epilogue steps, computed by the vector unit's dwconv window function."""

    depthwise = True

    def _split(self):
        """Per core: (g range, m range, n range); the vector units are tiled over groups: split those."""
        cores = self.spec.cores
        if cores == 1:
            return [((0, self.g), (0, self.m), (0, self.n))]
        return [(r, (0, self.m), (0, self.n)) for r in split_range(self.g, cores)]

    def _dw_tiles(self, gr):
        """Depthwise conv runs on the vector unit, tiled over channels."""
        cls = isa.VFN_CLASS["dwconv"]
        rows, cyc = tile_vector(self.spec, gr[1] - gr[0], self.m * self.n, 1, cls, float(self.k))
        return rows, cyc

    def _core_cycles(self, gr, mr, nr) -> int:
        return self._dw_tiles(gr)[1]

    def emit(self, cg, op):
        """Depthwise conv on the vector unit: the window of its CONFIG over whole planes, tiled over
        channels, then the epilogue (bias first) on the tile."""
        node = self.node
        x, w = node.inputs[0], node.inputs[1]
        W = cg.layout(w)
        if not W.is_contiguous():
            raise LoweringError(f"'{node.name}': conv weights must be contiguous")
        xs, ys = shape(x), shape(self.out)
        c = self.conv
        mult = self.n
        window = dict(kh=c.kh, kw=c.kw, sh=self.strides[0], sw=self.strides[1], dh=self.dil[0], dw=self.dil[1],
                      pt=self.pads[0], pl=self.pads[1], pb=0, pr=0, h=xs[2], w=xs[3], oh=ys[2], ow=ys[3], flags=0)
        steps = []
        cg.layout(self.out)  # the output's buffer is laid out before the step operands'
        for fn, imms, operand in self._step_list(cg):
            if operand is None:
                steps.append((fn, imms, None))
                continue
            lay = operand if isinstance(operand, Layout) else cg.layout(operand)
            if isinstance(operand, ir.Value) and opinfo.numel(operand) == math.prod(ys) and lay.shape != ys:
                lay = Layout(lay.buf, lay.off, lay.dtype, ys, contiguous(ys))
            steps.append((fn, imms, (lay, broadcast_operand(lay, ys).strides)))
        emit_window_op(self, cg, op, window, "dwconv", x, W, steps, mult)
