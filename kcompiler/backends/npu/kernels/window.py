"""Window functions of the vector unit (pools, depthwise convolution): the window of a CONFIG
instruction slides over whole input planes in the scratchpad, tiled over channels (or images),
with the op's epilogue steps run on each output tile. Also the window geometry both ops share:
SAME padding and the taps that never read the input."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import canonical_window, dma, make, split_range
from kcompiler.backends.npu.isa import CH, NONE
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout
from kcompiler.backends.npu.kernels.common import Kernel, sram_aligned
from kcompiler.backends.npu.kernels.vector import VTile
from kcompiler.backends.npu.sim import _valid
from kcompiler.backends.npu.tiler import tile_vector
from kcompiler.errors import LoweringError


def emit_window_op(k: Kernel, cg: Codegen, op: int, window: dict, fn: str, x: ir.Value, weight: Layout | None,
                   steps: list, mult: int) -> None:
    """A window function (pool, depthwise conv) of the vector unit over whole planes, tiled over
    channels (or images), then `steps` (vector function, immediates, operand or None) on the
    tile; the output is (images, channels * mult, OH, OW)."""
    w_op = _WindowOp(k, cg, op, window, fn, cg.layout(x), weight, steps, mult)
    c = w_op.xl.shape[1]
    # one tile: (images, channels) planes of every image and a channel range
    per_core = split_range(c, k.spec.cores) if c > 1 else [(0, 1)]
    for core, (lo, hi) in enumerate(per_core):
        w_op.emit_core(core, lo, hi)


@dataclass
class _Slots:
    """One core's channel tiles and their double-buffered scratchpad slots (bytes per buffer):
    input planes, weights, the float32 output tile, one per epilogue step operand."""

    tiles: list[tuple[int, int]]
    in_b: int
    w_b: int
    out_b: int
    op_b: list[int]

    a_in = 0

    @property
    def a_w(self) -> int:
        return 2 * self.in_b

    @property
    def a_out(self) -> int:
        return 2 * self.in_b + 2 * self.w_b

    def a_ops(self) -> list[int]:
        """Scratchpad addresses of the epilogue operands' slots."""
        out, base = [], self.a_out + 2 * self.out_b
        for b in self.op_b:
            out.append(base)
            base += 2 * b
        return out


class _WindowOp:
    """The emission of one window op: its layouts, window and steps, core by core."""

    def __init__(self, k: Kernel, cg: Codegen, op: int, window: dict, fn: str, xl: Layout, weight: Layout | None,
                 steps: list, mult: int):
        self.k, self.cg, self.op, self.window, self.fn = k, cg, op, window, fn
        self.xl, self.weight, self.steps, self.mult = xl, weight, steps, mult
        self.outl = outl = cg.layout(k.out)
        self.n_img = xl.shape[0]
        self.oh, self.ow = window["oh"], window["ow"]
        self.h, self.w = window["h"], window["w"]
        self.taps = window["kh"] * window["kw"]
        self.x_str = xl.strides if len(xl.shape) == 4 else (xl.strides[0], xl.strides[1], 0, xl.strides[2])
        self.o_str = outl.strides if len(outl.shape) == 4 else (outl.strides[0], outl.strides[1], 0, outl.strides[2])

    def slots(self, lo: int, hi: int) -> _Slots:
        """The channel tiles of [lo, hi): the vector tiler's rows, halved until they fit the scratchpad."""
        spec, n_img, mult, weight = self.k.spec, self.n_img, self.mult, self.weight
        h, w, oh, ow, taps = self.h, self.w, self.oh, self.ow, self.taps
        rows, _ = tile_vector(spec, hi - lo, n_img * max(h * w, oh * ow * mult), 1 + (weight is not None),
                              isa.VFN_CLASS[self.fn], float(taps))
        while True:
            tiles = [(r, min(hi, r + rows)) for r in range(lo, hi, rows)]
            cc = max(b - a for a, b in tiles)
            in_b = sram_aligned(n_img * cc * h * w * self.xl.esize)
            w_b = sram_aligned(cc * mult * taps * weight.esize) if weight is not None else 0
            out_b = sram_aligned(n_img * cc * mult * oh * ow * 4)
            op_b = [sram_aligned(_step_operand_bytes(s, n_img, cc * mult, oh * ow)) for s in self.steps]
            total = 2 * in_b + 2 * w_b + 2 * out_b + 2 * sum(op_b)
            if total <= spec.sram_bytes or rows == 1:
                break
            rows = max(1, rows // 2)
        if total > spec.sram_bytes:
            raise LoweringError(f"NPU op '{self.k.node.name}': one channel's planes do not fit the scratchpad")
        return _Slots(tiles, in_b, w_b, out_b, op_b)

    def emit_core(self, core: int, lo: int, hi: int) -> None:
        s = self.slots(lo, hi)
        self.cg.emit(make(isa.CONFIG, core, self.op, aux=1, **canonical_window(**self.window)))
        a_ops = s.a_ops()
        n = len(s.tiles)
        for i, (r0, r1) in enumerate(s.tiles):
            step_srcs = self._loads(core, i, r0, r1, s, a_ops)
            self._compute_and_store(core, i, n, r0, r1, s, step_srcs)

    def _loads(self, core: int, i: int, r0: int, r1: int, s: _Slots, a_ops: list[int]) -> list:
        """Emit tile i's loads (input planes, weights, step operands); returns the steps' sources."""
        xl, weight, mult, op, n_img, oh, ow = self.xl, self.weight, self.mult, self.op, self.n_img, self.oh, self.ow
        cc = r1 - r0
        par = i % 2
        loads = [dma(isa.LOAD, core, op, xl.dtype, xl.buf, xl.off + r0 * self.x_str[1] * xl.esize,
                     s.a_in + par * s.in_b,
                     (n_img, cc, self.h, self.w), self.x_str)]
        if weight is not None:
            loads.append(dma(isa.LOAD, core, op, weight.dtype, weight.buf,
                             weight.off + r0 * mult * self.taps * weight.esize, s.a_w + par * s.w_b,
                             (cc, mult, self.taps), (mult * self.taps, self.taps, 1)))
        step_srcs = []
        for step, addr in zip(self.steps, a_ops):
            operand = step[2]
            if operand is None:
                step_srcs.append(None)
                continue
            lay, st = operand  # st: strides over (image, channel, oh, ow) of the output
            shp = (n_img if st[0] else 1, cc * mult if st[1] else 1, oh if st[2] else 1, ow if st[3] else 1)
            loads.append(dma(isa.LOAD, core, op, lay.dtype, lay.buf, lay.off + r0 * mult * st[1] * lay.esize,
                             addr + par * _step_operand_bytes(step, n_img, cc * mult, oh * ow), shp, st))
            mask = sum(1 << d for d, x_ in enumerate(shp) if x_ == 1)
            step_srcs.append((addr + par * _step_operand_bytes(step, n_img, cc * mult, oh * ow), mask, lay.dtype))
        for j, ins in enumerate(loads):
            self.cg.emit(ins.replace(wait=CH["vx>ld"] if (j == 0 and i >= 2) else 0,
                                     signal=CH["ld>vx"] if j == len(loads) - 1 else 0))
        return step_srcs

    def _compute_and_store(self, core: int, i: int, n: int, r0: int, r1: int, s: _Slots, step_srcs: list) -> None:
        """Emit tile i's window VECTOR, its epilogue steps, and the store of the result."""
        xl, weight, mult, op, outl, steps = self.xl, self.weight, self.mult, self.op, self.outl, self.steps
        cc = r1 - r0
        par = i % 2
        shape4 = (self.n_img, cc, self.oh, self.ow)
        out4 = (self.n_img, cc * mult, self.oh, self.ow)
        t = VTile(self.k, core, op, out4, 0, (s.a_out + par * s.out_b, 0, "f32"), [], [])
        final_dt = outl.dtype
        dst_dt = final_dt if not steps else "f32"
        vecs = [make(isa.VECTOR, core, op, aux=isa.VFN[self.fn], dst=s.a_out + par * s.out_b,
                     src0=s.a_in + par * s.in_b, src1=(s.a_w + par * s.w_b) if weight is not None else NONE,
                     src2=NONE, src3=NONE,
                     n0=shape4[0], n1=shape4[1], n2=shape4[2], n3=shape4[3], bcast=0,
                     dtypes=isa.pack_dtypes([dst_dt, xl.dtype, weight.dtype if weight is not None else None]),
                     arg=mult if self.fn == "dwconv" else 0)]
        acc = (s.a_out + par * s.out_b, 0, "f32")
        for si, (step, src) in enumerate(zip(steps, step_srcs)):
            fn_s, imms = step[0], step[1]
            last = si == len(steps) - 1
            dst = (acc[0], 0, final_dt if last else "f32")
            vecs.append(t.vec(fn_s, dst, [acc] + ([src] if src is not None else []), imms))
        wait = CH["ld>vx"] | (CH["st>vx"] if i >= 2 else 0)
        sig = CH["vx>st"] | (CH["vx>ld"] if i + 2 < n else 0)
        for j, ins in enumerate(vecs):
            self.cg.emit(ins.replace(wait=wait if j == 0 else 0, signal=sig if j == len(vecs) - 1 else 0))
        self.cg.emit(dma(isa.STORE, core, op, final_dt, outl.buf, outl.off + r0 * mult * self.o_str[1] * outl.esize,
                         s.a_out + par * s.out_b, out4, self.o_str, wait=CH["vx>st"],
                         signal=CH["st>vx"] if i + 2 < n else 0))


def _step_operand_bytes(step, n_img, ch, pix) -> int:
    """Bytes of an epilogue step operand's part of a tile (0 for a step without an operand)."""
    if step[2] is None:
        return 0
    lay, st = step[2]
    return (n_img if st[0] else 1) * (ch if st[1] else 1) * (pix if (st[2] or st[3]) else 1) * lay.esize


def trim_taps(k: int, d: int, pad: int, s: int, size: int, out: int) -> tuple[int, int]:
    """(taps, pad) of a window without its leading and trailing taps that never read the input."""
    reads = [t for t in range(k) if _valid(t, d, pad, s, size, out)[1] > _valid(t, d, pad, s, size, out)[0]]
    if not reads:
        return k, pad
    return reads[-1] - reads[0] + 1, pad - reads[0] * d


def same_pads(spatial, out, kernel, strides, dil, mode):
    """Begin and end pads of auto_pad SAME_UPPER / SAME_LOWER (ONNX: the odd pad goes last / first)."""
    k = len(kernel)
    begin, end = [0] * k, [0] * k
    for i in range(k):
        total = max(0, (out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
        small, big = total // 2, total - total // 2
        begin[i], end[i] = (small, big) if mode == "SAME_UPPER" else (big, small)
    return begin + end
