"""Convolution on the systolic array as an implicit GEMM: acc[pixel, n] = sum_k cols[pixel, k]
W[n, k], the array's feeder reading the im2col rows from an input patch in the scratchpad (window
mode, emit.py), so no im2col matrix is ever stored. Groups are GEMM groups; the conv's bias is
the first epilogue step."""

from __future__ import annotations

from kcompiler.backends.npu.kernels.attrs import a_int, a_ints, a_str, shape
from kcompiler.backends.npu.kernels.codegen import Layout
from kcompiler.backends.npu.kernels.gemm import GemmKernel
from kcompiler.backends.npu.kernels.window import same_pads
from kcompiler.backends.npu.tiler import ConvGeom
from kcompiler.errors import LoweringError


def per_channel(lay: Layout) -> Layout:
    """A table of one value per output channel (or one value for all), read as (C, 1, 1) against an NCHW output."""
    return Layout(lay.buf, lay.off, lay.dtype, (lay.shape[0], 1, 1), (lay.strides[0], 0, 0))


class ConvKernel(GemmKernel, lowers="Conv"):
    """Conv (2-D, NCHW): M = images x output pixels, K = input channels per group x taps,
    N = output channels per group."""

    def _init_dims(self):
        node = self.node
        xs, ws, ys = shape(node.inputs[0]), shape(node.inputs[self.w_index]), shape(self.out)
        g = a_int(node, "group", 1)
        kh, kw = ws[2], ws[3]
        st = a_ints(node, "strides", [1, 1])
        dl = a_ints(node, "dilations", [1, 1])
        pads = a_ints(node, "pads", [0, 0, 0, 0])
        auto = a_str(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = same_pads(xs[2:], ys[2:], [kh, kw], st, dl, auto)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        self.pads, self.strides, self.dil = pads, st, dl
        self.g, self.n, self.k = g, ws[0] // g, ws[1] * kh * kw
        self.m = ys[0] * ys[2] * ys[3]
        self.conv = ConvGeom(ys[0], ws[1], kh, kw, st[0], dl[0], ys[2], ys[3], xs[2] + pads[0] + pads[2],
                             xs[3] + pads[1] + pads[3])

    def _base_steps(self, cg):
        out = []
        if len(self.base_inputs) > 2 and self.base_inputs[2] is not None:
            out.append(("add", (0.0, 0.0, 0.0), per_channel(cg.layout(self.base_inputs[2]))))
        return out

    def _views(self, A: Layout, B: Layout, Y: Layout):
        a, b, out = self._conv_views(A, B, Y)
        c = self.conv
        x_shape = shape(self.node.inputs[0])
        conv = (c.kh, c.kw, self.strides[0], self.strides[1], self.dil[0], self.dil[1], self.pads[0], self.pads[1],
                0, 0, x_shape[2], x_shape[3], c.oh, c.ow)
        return a, b, out, conv

    def _conv_views(self, X: Layout, W: Layout, Y: Layout):
        eb = X.esize
        c = self.conv
        if not W.is_contiguous():
            raise LoweringError(f"'{self.node.name}': conv weights must be contiguous")
        offs_a = tuple(X.off + g * c.cin_g * X.strides[1] * eb for g in range(self.g))
        a = (X.buf, offs_a, X.strides[0], X.strides[1], X.strides[2], X.strides[3])
        # B[k, n] = W[g * N + n, k]: per group N rows of K weights
        b = (W.buf, tuple(W.off + g * self.n * self.k * W.esize for g in range(self.g)), 1, self.k)
        if Y.strides[2] != Y.strides[3] * Y.shape[3]:
            raise LoweringError(f"'{self.node.name}': conv outputs are stored with whole rows")
        out = (Y.buf, tuple(Y.off + g * self.n * Y.strides[1] * Y.esize for g in range(self.g)), Y.strides[3],
               Y.strides[1], Y.strides[0])
        return a, b, out

    def _operand_in_output(self, lay, st, y_sh):
        s_img, s_c, s_h, s_w = st
        if s_h != s_w * y_sh[3] and not (s_h == 0 and s_w == 0):
            raise LoweringError(f"'{self.node.name}': an epilogue operand varies over rows but not columns")
        if s_img and not s_w:
            raise LoweringError(f"'{self.node.name}': an epilogue operand constant over pixels but not images")
        e = lay.esize
        offs = tuple(lay.off + g * self.n * s_c * e for g in range(self.g))
        return (lay.buf, offs, lay.dtype, s_w, s_c, s_img)
