"""ConvTranspose (2-D) as a convolution: the input with s - 1 zeros inserted between neighbours
(a FILL of zeros, then a COPY of the input at stride s, both on the DMA engine) convolved at
stride 1 with the weights flipped and their in/out channels swapped, padded by d * (k - 1) - pad
at the start (the end padding follows from the output's size, output_padding included). The
flipped weights are a constant the compiler writes into the weight image (composite.py), the
convolution is the array's implicit GEMM (conv.py), or the vector unit's depthwise conv when every
group has one channel.

Zero insertion spends s^2 times the MACs a scatter of the GEMM's columns would (a 2x2 stride-2
upsampling head: 4x), in exchange for one lowering of every stride, pad, dilation and group."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu.cost import dma_cycles
from kcompiler.backends.npu.kernels.attrs import a_int, a_ints, a_str, shape
from kcompiler.backends.npu.kernels.codegen import Layout
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.backends.npu.kernels.composite import Alias, CompositeKernel, const_value, stand_in, stand_in_node
from kcompiler.backends.npu.kernels.copy import emit_copy, emit_fill
from kcompiler.backends.npu.kernels.gemm import GemmKernel


def conv_geometry(node) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(strides, dilations, begin pads, end pads, extra zero rows/columns) of the equivalent stride-1
    convolution over the zero-inserted input. An output_padding past the end pads makes outputs whose
    taps read only zeros: the zero-inserted input gets that many more zero rows (a window's end pad
    stays within its reach). Raises ValueError saying why the node is not lowered."""
    xs, ws, ys = shape(node.inputs[0]), shape(node.inputs[1]), shape(node.outputs[0])
    k = list(ws[2:])
    st = a_ints(node, "strides", [1, 1])
    dl = a_ints(node, "dilations", [1, 1])
    op = a_ints(node, "output_padding", [0, 0])
    auto = a_str(node, "auto_pad", "NOTSET")
    pads = a_ints(node, "pads", [0, 0, 0, 0])
    begin, end, extra = [], [], []
    for i in range(2):
        natural = st[i] * (xs[2 + i] - 1) + op[i] + (k[i] - 1) * dl[i] + 1
        total = natural - ys[2 + i]
        if node.attributes.get("output_shape") is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            pb = total // 2 if auto == "SAME_UPPER" else total - total // 2
        elif auto == "VALID":
            pb = 0
        else:
            pb = pads[i]
        cb = dl[i] * (k[i] - 1) - pb
        zs = (xs[2 + i] - 1) * st[i] + 1
        ce = ys[2 + i] - zs - cb + dl[i] * (k[i] - 1)
        if cb < 0 or ce < 0:
            raise ValueError(f"pads larger than the kernel's reach (axis {i}) are not lowered")
        more = max(0, ce - dl[i] * (k[i] - 1))
        begin.append(cb)
        end.append(ce - more)
        extra.append(more)
    return st, dl, begin, end, extra


def convtranspose_check(node) -> Support:
    ins = list(node.inputs)
    if len(ins) < 2 or ins[1] is None or not opinfo.is_const(ins[1]):
        return no("its weights must be a compile-time constant")
    if len(ins) > 2 and ins[2] is not None and not opinfo.is_const(ins[2]):
        return no("its bias must be a compile-time constant")
    if len(shape(ins[0])) != 4:
        return no("only 2-D ConvTranspose (a rank-4 input) is lowered")
    if 0 in shape(ins[0]) or 0 in shape(node.outputs[0]):
        return no("an empty tensor")
    try:
        conv_geometry(node)
    except ValueError as exc:
        return no(str(exc))
    return YES


class ZeroInsertKernel(Kernel):
    """The zero-inserted input: FILL the buffer with zeros, COPY the input to every s-th row and
    column (core 0's DMA engine; the convolution after a BARRIER reads it)."""

    kind = "copy"

    def __init__(self, node, spec, x: ir.Value, z: ir.Value, strides: list[int]):
        super().__init__(node, spec)
        self.x, self.z, self.strides = x, z, strides

    def cost(self) -> Cost:
        eb = self.spec.elem_bytes
        lat = int(self.spec.dram.latency_s * self.spec.clock_hz)
        bpc = self.spec.dram_bytes_per_cycle
        return Cost(cycles=dma_cycles(opinfo.numel(self.z) * eb, bpc, lat)
                    + dma_cycles(2 * opinfo.numel(self.x) * eb, bpc, lat) + 2 * self.spec.issue_cycles)

    def emit(self, cg, op):
        xl, zl = cg.layout(self.x), cg.layout(self.z)
        emit_fill(cg, op, zl, 0.0)
        zs = zl.strides
        emit_copy(cg, op, xl, Layout(zl.buf, zl.off, zl.dtype, xl.shape,
                                     (zs[0], zs[1], zs[2] * self.strides[0], zs[3] * self.strides[1])))


def _non_overlapping(node) -> bool:
    """Whether every output pixel gets exactly one tap: stride = kernel, no dilation, pad or
    output_padding, one group (an upsampling head's 2x2 stride-2 ConvTranspose)."""
    xs, ws, ys = shape(node.inputs[0]), shape(node.inputs[1]), shape(node.outputs[0])
    k = list(ws[2:])
    return (a_ints(node, "strides", [1, 1]) == k and a_ints(node, "dilations", [1, 1]) == [1, 1]
            and a_int(node, "group", 1) == 1 and list(ys[2:]) == [xs[2] * k[0], xs[3] * k[1]]
            and conv_geometry(node)[2] == [k[0] - 1, k[1] - 1])


class ScatterKernel(Kernel):
    """The columns of a non-overlapping ConvTranspose's GEMM, (H*W, M*KH*KW), copied to their
    output pixels: out[m, h*KH + a, w*KW + b] = cols[h*W + w, (m*KH + a)*KW + b] (core 0's DMA)."""

    kind = "copy"

    def __init__(self, node, spec, cols: ir.Value, image: int):
        super().__init__(node, spec)
        self.cols, self.image = cols, image

    def cost(self) -> Cost:
        eb = self.spec.elem_bytes
        lat = int(self.spec.dram.latency_s * self.spec.clock_hz)
        return Cost(cycles=dma_cycles(2 * opinfo.numel(self.cols) * eb, self.spec.dram_bytes_per_cycle, lat)
                    + self.spec.issue_cycles)

    def emit(self, cg, op):
        xs, ws = shape(self.node.inputs[0]), shape(self.node.inputs[1])
        h, w, m, kh, kw = xs[2], xs[3], ws[1], ws[2], ws[3]
        mkk = m * kh * kw
        cl, ol = cg.layout(self.cols), cg.layout(self.out)
        os_ = ol.strides
        dst = Layout(ol.buf, ol.off + self.image * os_[0] * ol.esize, ol.dtype, (m, h, kh, w, kw),
                     (os_[1], kh * os_[2], os_[2], kw * os_[3], os_[3]))
        emit_copy(cg, op, cl, dst, src_strides=(kh * kw, w * mkk, kw, mkk, 1))


class ConvTransposeKernel(CompositeKernel):
    """ConvTranspose. Non-overlapping (stride = kernel): per image a GEMM of the input's pixels by
    the weights, (H*W, C) @ (C, M*KH*KW) plus the bias, whose columns a DMA scatters to their
    pixels. Otherwise zero insertion (when a stride exceeds 1 or outputs read only padding), then
    the equivalent convolution."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        if _non_overlapping(node):
            self._gemm_scatter(node, spec)
        else:
            self._zero_insert_conv(node, spec)

    def _gemm_scatter(self, node, spec):
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        xs, ws = shape(x), shape(w)
        base = self.out.name or node.name
        c, hw, mkk = xs[1], xs[2] * xs[3], ws[1] * ws[2] * ws[3]
        wm = const_value(f"{base}/convt_wmat", w.dtype, (c, mkk),
                         lambda: np.asarray(opinfo.const_value(w), np.float64).reshape(c, mkk))
        bias = None if b is None else const_value(
            f"{base}/convt_bias", b.dtype, (mkk,),
            lambda: np.repeat(np.asarray(opinfo.const_value(b), np.float64).reshape(-1), ws[2] * ws[3]))
        cols = stand_in(x, f"{base}/convt_cols", (hw, mkk))
        for n in range(xs[0]):
            a = Alias(f"{base}/convt_x{n}", stand_in(x), (c, hw), offset=n * c * hw)
            gemm = stand_in_node("Gemm", [a.value(x.dtype), wm] + ([bias] if bias is not None else []), stand_in(cols),
                                 f"{node.name}/convt_gemm{n}", [ir.AttrInt64("transA", 1)])
            self.add(GemmKernel(gemm, spec), [a])
            self.add(ScatterKernel(node, spec, stand_in(cols), n))

    def _zero_insert_conv(self, node, spec):
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        xs, ws = shape(x), shape(w)
        st, dl, begin, end, extra = conv_geometry(node)
        g = a_int(node, "group", 1)
        base = self.out.name or node.name
        src = stand_in(x)
        if st != [1, 1] or any(extra):
            zs = (xs[0], xs[1], (xs[2] - 1) * st[0] + 1 + extra[0], (xs[3] - 1) * st[1] + 1 + extra[1])
            z = stand_in(x, f"{base}/convt_zeros", zs)
            self.add(ZeroInsertKernel(node, spec, stand_in(x), z, st))
            src = stand_in(z)
        cin_g, mg = ws[0] // g, ws[1]
        wc_shape = (g * mg, cin_g, ws[2], ws[3])

        def flipped():
            wt = np.asarray(opinfo.const_value(w), np.float64).reshape(g, cin_g, mg, ws[2], ws[3])
            return wt.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1].reshape(wc_shape)

        wc = const_value(f"{base}/convt_weights", w.dtype, wc_shape, flipped)
        inputs = [src, wc] + ([stand_in(b)] if b is not None else [])
        attrs = [ir.AttrInt64s("strides", [1, 1]), ir.AttrInt64s("dilations", dl), ir.AttrInt64("group", g),
                 ir.AttrInt64s("kernel_shape", list(ws[2:])), ir.AttrInt64s("pads", begin + end)]
        conv = stand_in_node("Conv", inputs, stand_in(self.out), f"{node.name}/convt_conv", attrs)
        self.add(GemmKernel(conv, spec))
