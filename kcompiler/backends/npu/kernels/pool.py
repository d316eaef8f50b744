"""MaxPool and AveragePool: a window function of the vector unit (window.py) over whole input
planes; the taps that read only padding are trimmed when pads do not count. A 3-D pool is two
2-D ones (Pool3dKernel)."""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler.backends.npu.kernels.attrs import a_int, a_ints, a_str, shape
from kcompiler.backends.npu.kernels.composite import Alias, CompositeKernel, stand_in, stand_in_node
from kcompiler.backends.npu.kernels.vector import VectorKernel
from kcompiler.backends.npu.kernels.window import emit_window_op, same_pads, trim_taps


class PoolKernel(VectorKernel):
    """MaxPool / AveragePool: the window of the vector unit's CONFIG over whole input planes, tiled
    over channels (or images). One-dimensional pools are two-dimensional with a height of one."""

    def __init__(self, node, spec):
        op = node.op_type
        self.is_max = op == "MaxPool"
        self.fn = "maxpool" if self.is_max else "avgpool"
        super().__init__(node, spec)
        xs = shape(node.inputs[0])
        self.spatial = list(xs[2:])
        self.kernel = a_ints(node, "kernel_shape")
        k = len(self.kernel)
        self.strides = a_ints(node, "strides", [1] * k)
        self.dil = a_ints(node, "dilations", [1] * k)
        self.pads = a_ints(node, "pads", [0] * (2 * k))
        auto = a_str(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            self.pads = same_pads(self.spatial, self.out_shape[2:], self.kernel, self.strides, self.dil, auto)
        elif auto == "VALID":
            self.pads = [0] * (2 * k)
        self.work_per_elem = float(math.prod(self.kernel)) / max(1, math.prod(self.strides))

    def stream_inputs(self):
        return [self.node.inputs[0]]

    def pick_axis(self):
        return 1 if self.out_shape[1] > 1 else (0 if self.out_shape[0] > 1 else -1)

    def window(self) -> dict:
        """The CONFIG fields (a 1-D pool is a 2-D one of height 1)."""
        if len(self.kernel) == 1:
            kh, kw, sh, sw, dh, dw = 1, self.kernel[0], 1, self.strides[0], 1, self.dil[0]
            pt, pl, pb, pr = 0, self.pads[0], 0, self.pads[1]
            h, w, oh, ow = 1, self.spatial[0], 1, self.out_shape[2]
        else:
            kh, kw = self.kernel
            sh, sw = self.strides
            dh, dw = self.dil
            pt, pl, pb, pr = self.pads
            h, w = self.spatial
            oh, ow = self.out_shape[2:]
        include = not self.is_max and a_int(self.node, "count_include_pad", 0)
        if not include:
            pb = pr = 0  # only a count that includes the pads reads the bottom/right ones
            # taps that read only padding (a 3x3 pool padded by 1 over a 1x1 input) change nothing
            # when pads do not count: the window starts and ends at taps that read the input
            kh, pt = trim_taps(kh, dh, pt, sh, h, oh)
            kw, pl = trim_taps(kw, dw, pl, sw, w, ow)
        # rows and columns past the last one a window reads are not loaded: a window that stops short
        # of the input's end (a 1x1 pool of stride 2 over 2x2, ceil_mode) has the extent it reads, as
        # the CONFIG's stride (reserved 1 for one output) cannot say it skips the rest
        h = min(h, (oh - 1) * sh - pt + (kh - 1) * dh + 1)
        w = min(w, (ow - 1) * sw - pl + (kw - 1) * dw + 1)
        return dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, pb=pb, pr=pr, h=h, w=w, oh=oh, ow=ow,
                    flags=1 if include else 0)

    def emit(self, cg, op):
        emit_window_op(self, cg, op, self.window(), self.fn, self.node.inputs[0], None, [], 1)


class Pool3dKernel(CompositeKernel):
    """A 3-D MaxPool / AveragePool as two 2-D ones: the window is a box, so its max is the max over
    depth of the max over each (H, W) plane, and its average (counting pads or not: the counted taps
    are a box too) the average over depth of the planes' averages. Part one pools the (H, W) planes
    of x viewed as (N, C*D, H, W); part two pools depth, the result viewed as (N, C, D, OH*OW)."""

    def __init__(self, node, spec):
        super().__init__(node, spec)
        x, out = node.inputs[0], self.out
        xs, ys = shape(x), shape(out)
        k = a_ints(node, "kernel_shape")
        st = a_ints(node, "strides", [1, 1, 1])
        dl = a_ints(node, "dilations", [1, 1, 1])
        pads = a_ints(node, "pads", [0] * 6)
        auto = a_str(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = same_pads(xs[2:], ys[2:], k, st, dl, auto)
        elif auto == "VALID":
            pads = [0] * 6
        common = [ir.AttrInt64("count_include_pad", a_int(node, "count_include_pad", 0))] \
            if node.op_type == "AveragePool" else []
        base = out.name or node.name
        n, c, d, h, w = xs
        od, oh, ow = ys[2:]
        planes_in = Alias(f"{base}/pool3d_in", stand_in(x), (n, c * d, h, w))
        mid = stand_in(x, f"{base}/pool3d_mid", (n, c * d, oh, ow))
        hw = stand_in_node(node.op_type, [planes_in.value(x.dtype)], mid, f"{node.name}/pool3d_hw", common + [
            ir.AttrInt64s("kernel_shape", k[1:]), ir.AttrInt64s("strides", st[1:]), ir.AttrInt64s("dilations", dl[1:]),
            ir.AttrInt64s("pads", [pads[1], pads[2], pads[4], pads[5]])])
        self.add(PoolKernel(hw, spec), [planes_in])
        depth_in = Alias(f"{base}/pool3d_depth_in", stand_in(mid), (n, c, d, oh * ow))
        depth_out = Alias(f"{base}/pool3d_out", stand_in(out), (n, c, od, oh * ow))
        dd = stand_in_node(node.op_type, [depth_in.value(x.dtype)], depth_out.value(x.dtype), f"{node.name}/pool3d_d",
                           common + [ir.AttrInt64s("kernel_shape", [k[0], 1]), ir.AttrInt64s("strides", [st[0], 1]),
                                     ir.AttrInt64s("dilations", [dl[0], 1]), ir.AttrInt64s("pads", [pads[0], 0, pads[3], 0])])
        self.add(PoolKernel(dd, spec), [depth_in, depth_out])


def pool_kernel(node, spec):
    """The kernel of a MaxPool / AveragePool: 1-D and 2-D ones are one window op, 3-D ones two."""
    return Pool3dKernel(node, spec) if len(shape(node.inputs[0])) == 5 else PoolKernel(node, spec)
