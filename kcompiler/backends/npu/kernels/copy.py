"""Data movement without arithmetic: DRAM-to-DRAM copies on the DMA engine (Concat, Transpose,
Slice, Split, Pad, Gather, Expand), re-viewed buffers (Reshape and friends), constants laid out
by the compiler, and the in-place KV-cache append."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import dma_cycles
from kcompiler.backends.npu.emit import make
from kcompiler.backends.npu.isa import DTYPE_BYTES
from kcompiler.backends.npu.kernels.attrs import IR_DTYPE, a_int, a_ints, a_str, const_ints, const_scalar, shape
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout, contiguous
from kcompiler.backends.npu.kernels.common import Kernel, merge_dims
from kcompiler.backends.npu.sim import Buffer
from kcompiler.errors import LoweringError
from kcompiler.frontend.state import is_resident_pair


def emit_copy(cg: Codegen, op: int, src: Layout, dst: Layout, src_strides=None, src_off: int | None = None,
              core: int = 0) -> None:
    """COPY instructions moving a block of dst.shape from `src` (its strides, or `src_strides` in
    elements, from byte offset `src_off`) to `dst`."""
    sizes = dst.shape
    ss = tuple(src_strides if src_strides is not None else src.strides)
    ds = dst.strides
    groups = merge_dims(sizes, [ss, ds])
    dims = [(math.prod(sizes[d] for d in g), ss[g[-1]], ds[g[-1]]) for g in groups]
    base_s = src.off if src_off is None else src_off
    if any(n == 0 for n in sizes):
        return
    lead, tail = dims[:-4] if len(dims) > 4 else [], dims[-4:]
    tail = [(1, 0, 0)] * (4 - len(tail)) + tail
    for idx in np.ndindex(*[n for n, _, _ in lead]) if lead else [()]:
        so = base_s + sum(i * s for i, (_, s, _) in zip(idx, lead)) * src.esize
        do = dst.off + sum(i * d for i, (_, _, d) in zip(idx, lead)) * dst.esize
        f = {"sbuf": src.buf, "soff": so, "dbuf": dst.buf, "doff": do}
        for k, (n, s, d) in enumerate(tail):
            f[f"n{k}"], f[f"s{k}"], f[f"d{k}"] = n, (s if n > 1 else 0), (d if n > 1 else 0)
        cg.emit(make(isa.COPY, core, op, aux=isa.esize_code(dst.dtype), **f))


def emit_fill(cg: Codegen, op: int, dst: Layout, value: float, core: int = 0) -> None:
    sizes, ds = dst.shape, dst.strides
    groups = merge_dims(sizes, [ds])
    dims = [(math.prod(sizes[d] for d in g), ds[g[-1]]) for g in groups]
    if any(n == 0 for n in sizes):
        return
    lead, tail = dims[:-4] if len(dims) > 4 else [], dims[-4:]
    tail = [(1, 0)] * (4 - len(tail)) + tail
    for idx in np.ndindex(*[n for n, _ in lead]) if lead else [()]:
        do = dst.off + sum(i * d for i, (_, d) in zip(idx, lead)) * dst.esize
        f = {"buf": dst.buf, "off": do, "value": isa.f32_bits(value)}
        for k, (n, d) in enumerate(tail):
            f[f"n{k}"], f[f"d{k}"] = n, (d if n > 1 else 0)
        cg.emit(make(isa.FILL, core, op, aux=isa.DT[dst.dtype], **f))


def is_state_append(node: ir.Node) -> bool:
    """Concat(past, new, ...) -> present where past is a device-resident state input and present
    its paired state output, or one chip's slices of them under a tensor split (frontend/state.py):
    a KV-cache append, done in place."""
    if node.op_type != "Concat" or not node.inputs or node.inputs[0] is None or not node.outputs:
        return False
    return is_resident_pair(node.inputs[0], node.outputs[0])


def prepare_state_layouts(cg: Codegen, nodes: list[ir.Node]) -> None:
    """A resident KV cache is allocated at its appended size: `present` is one buffer and `past` a
    strided view of its first rows, so the append writes only the new rows (CopyKernel)."""
    for n in nodes:
        if not is_state_append(n):
            continue
        past, present = n.inputs[0], n.outputs[0]
        if past.name in cg.layouts or present.name in cg.layouts:
            continue
        dt = IR_DTYPE[present.dtype]
        psh, qsh = shape(present), shape(past)
        strides = contiguous(psh)
        extent = (sum((d - 1) * s for d, s in zip(qsh, strides)) + 1) if all(qsh) else 0
        buf = cg.alloc(present.name, math.prod(psh) * DTYPE_BYTES[dt], "output")
        cg.layouts[present.name] = Layout(buf, 0, dt, psh, strides)
        pbuf = len(cg.buffers)
        cg.buffers.append(Buffer(past.name, cg.buffers[buf].addr, extent * DTYPE_BYTES[dt], "input"))
        cg.layouts[past.name] = Layout(pbuf, 0, dt, qsh, strides)


class CopyKernel(Kernel):
    """Concat, Transpose, Slice, Split, Pad, Gather, Expand: DRAM-to-DRAM DMA on core 0 (COPY, FILL
    and, for runtime indices, GATHER); the DMA engine's address generator does the reordering.

    A KV-cache append (is_state_append) is done in place: only the new rows move (read from the
    new input, written after the cached rows, prepare_state_layouts)."""

    kind = "copy"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.append = is_state_append(node)

    def nbytes(self):
        eb = DTYPE_BYTES.get(IR_DTYPE.get(self.out.dtype, "f32"), 4)
        if self.append:
            new = sum(opinfo.numel(v) for v in self.node.inputs[1:] if v is not None)
            return int(new * eb), int(new * eb)
        src = sum(opinfo.numel(v) for v in self.node.inputs[:1 if self.node.op_type != "Concat" else None]
                  if v is not None)
        if self.node.op_type == "Gather":  # the DMA reads only the rows it gathers
            src = opinfo.numel(self.out)
        dst = sum(opinfo.numel(v) for v in self.node.outputs)
        return int(src * eb), int(dst * eb)

    def cost(self):
        s, d = self.nbytes()
        lat = int(self.spec.dram.latency_s * self.spec.clock_hz)
        return Cost(cycles=dma_cycles(s + d, self.spec.dram_bytes_per_cycle, lat) + self.spec.issue_cycles)

    def emit(self, cg, op):
        n = self.node
        getattr(self, "_" + n.op_type.lower())(cg, op, n)

    def _concat(self, cg, op, n):
        out = cg.layout(self.out)
        axis = a_int(n, "axis", 0) % len(out.shape)
        pos = 0
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            src = cg.layout(v)
            k = src.shape[axis]
            if not (self.append and i == 0):  # the cached rows are already in place
                dst = Layout(out.buf, out.off + pos * out.strides[axis] * out.esize, out.dtype, src.shape, out.strides)
                emit_copy(cg, op, src, dst)
            pos += k

    def _transpose(self, cg, op, n):
        src = cg.layout(n.inputs[0])
        out = cg.layout(self.out)
        perm = a_ints(n, "perm", list(range(len(src.shape)))[::-1])
        emit_copy(cg, op, src, out, src_strides=[src.strides[p] for p in perm])

    def _slice(self, cg, op, n):
        src = cg.layout(n.inputs[0])
        out = cg.layout(self.out)
        r = len(src.shape)
        starts, ends = const_ints(n.inputs[1]), const_ints(n.inputs[2])
        axes = const_ints(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None else list(range(len(starts)))
        steps = const_ints(n.inputs[4]) if len(n.inputs) > 4 and n.inputs[4] is not None else [1] * len(starts)
        off, strides = src.off, list(src.strides)
        for s, e, a, st in zip(starts, ends, axes, steps):
            a %= r
            lo, _, step = slice(s, e, st).indices(src.shape[a])
            off += lo * src.strides[a] * src.esize
            strides[a] = src.strides[a] * step
        emit_copy(cg, op, src, out, src_strides=strides, src_off=off)

    def _split(self, cg, op, n):
        src = cg.layout(n.inputs[0])
        axis = a_int(n, "axis", 0) % len(src.shape)
        pos = 0
        for o in n.outputs:
            if o is None or not o.name:
                continue
            dst = cg.layout(o)
            emit_copy(cg, op, src, dst, src_off=src.off + pos * src.strides[axis] * src.esize)
            pos += dst.shape[axis]

    def _expand(self, cg, op, n):
        src = cg.layout(n.inputs[0])
        out = cg.layout(self.out)
        r = len(out.shape)
        pad = r - len(src.shape)
        strides = [0] * pad + [s if d > 1 else 0 for d, s in zip(src.shape, src.strides)]
        emit_copy(cg, op, src, out, src_strides=strides)

    def _pad(self, cg, op, n):
        src = cg.layout(n.inputs[0])
        out = cg.layout(self.out)
        r = len(src.shape)
        pads = const_ints(n.inputs[1])
        axes = const_ints(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None else list(range(r))
        before, after = [0] * r, [0] * r
        for i, a in enumerate(axes):
            before[a % r], after[a % r] = pads[i], pads[len(axes) + i]
        mode = a_str(n, "mode", "constant")
        # per axis, the output segments: (out start, length, src start, src step) or (out start, length, None, 0)
        segs = []
        for a in range(r):
            dim, b, e = src.shape[a], before[a], after[a]
            inner_len = dim + min(b, 0) + min(e, 0)
            axis_segs = []
            if b > 0:
                axis_segs.append((0, b) + ({"constant": (None, 0), "edge": (0, 0), "reflect": (b, -1)}[mode]))
            if inner_len > 0:
                axis_segs.append((max(b, 0), inner_len, max(-b, 0), 1))
            if e > 0:
                axis_segs.append((max(b, 0) + max(inner_len, 0), e) +
                                 ({"constant": (None, 0), "edge": (dim - 1, 0), "reflect": (dim - 2, -1)}[mode]))
            segs.append(axis_segs)
        if mode == "constant":
            cval = const_scalar(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else 0.0
            emit_fill(cg, op, out, cval or 0.0)
        for combo in itertools.product(*segs):
            if any(s[2] is None for s in combo):
                continue
            doff = out.off + sum(s[0] * st for s, st in zip(combo, out.strides)) * out.esize
            soff = src.off + sum(s[2] * st for s, st in zip(combo, src.strides)) * src.esize
            shp = tuple(s[1] for s in combo)
            emit_copy(cg, op, src, Layout(out.buf, doff, out.dtype, shp, out.strides),
                      src_strides=[s[3] * st for s, st in zip(combo, src.strides)], src_off=soff)

    def _gather(self, cg, op, n):
        data, idx = n.inputs[0], n.inputs[1]
        src = cg.layout(data)
        out = cg.layout(self.out)
        r = len(src.shape)
        axis = a_int(n, "axis", 0) % r
        rows = src.shape[axis]
        outer, inner = math.prod(src.shape[:axis]), math.prod(src.shape[axis + 1:])
        ci = opinfo.const_value(idx) if opinfo.is_const(idx) else None
        if ci is not None:
            if not src.is_contiguous():
                raise LoweringError(f"Gather '{n.name}': a gather of constant indices reads a contiguous tensor")
            flat = [int(i) + rows if int(i) < 0 else int(i) for i in np.asarray(ci).reshape(-1)]
            # out is (outer, count, inner) of data's (outer, rows, inner): one COPY per run of indices
            o_st = contiguous((outer, len(flat), inner))
            j = 0
            while j < len(flat):
                k = j + 1
                while k < len(flat) and flat[k] == flat[k - 1] + 1:
                    k += 1
                dst = Layout(out.buf, out.off + j * o_st[1] * out.esize, out.dtype, (outer, k - j, inner), o_st)
                emit_copy(cg, op, src, dst, src_strides=(rows * inner, inner, 1),
                          src_off=src.off + flat[j] * inner * src.esize)
                j = k
            return
        il = cg.layout(idx)
        if not (src.is_contiguous() and il.is_contiguous() and out.is_contiguous()):
            raise LoweringError(f"Gather '{n.name}': an indirect DMA reads contiguous tables and indices")
        count = math.prod(il.shape)
        cg.emit(make(isa.GATHER, 0, op, aux=isa.esize_code(src.dtype) | isa.DT[il.dtype] << 4, sbuf=src.buf,
                     soff=src.off, ibuf=il.buf, ioff=il.off, dbuf=out.buf, doff=out.off, outer=outer, count=count,
                     inner=inner, sstride=rows * inner if outer > 1 else 0, rows=rows,
                     dstride=count * inner if outer > 1 else 0))


class ConstKernel(Kernel):
    """Constant / ConstantOfShape: the value is laid out in DRAM by the compiler; no instructions."""

    kind = "const"


class ViewKernel(Kernel):
    """Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout: the same bytes seen with another
    shape (a strided input is copied first: only a contiguous buffer can be re-viewed)."""

    kind = "view"

    def emit(self, cg, op):
        src = cg.layout(self.node.inputs[0])
        out_shape = shape(self.out)
        if src.is_contiguous():
            cg.set_layout(self.out, Layout(src.buf, src.off, src.dtype, out_shape, contiguous(out_shape)))
            return
        dst = cg.layout(self.out)
        emit_copy(cg, op, src, Layout(dst.buf, dst.off, dst.dtype, src.shape, contiguous(src.shape)))
