"""Lowered ops ("kernels"): for each node, its instructions over DRAM buffers and SRAM tiles.

A kernel is built from one ONNX node. ``emit`` appends the node's instructions to the
codegen: per core, DMA loads of operand tiles into the scratchpad at the addresses its layout
chose, MATMUL / VECTOR instructions over those addresses, DMA stores of the results, with
dependency tokens. Every value the program touches lives in a DRAM buffer at an address the
codegen chose; constant inputs (weights, folded batch-norm factors) are laid out there by the
compiler, in the layout the instructions read. The simulator executes these instructions and
nothing else (sim.py): no kernel computes a value.

In timing mode no kernel reads a weight: buffers are laid out, no bytes are written.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import dma_cycles
from kcompiler.backends.npu.emit import GemmDesc, canonical_window, dma, emit_gemm, make, split_range
from kcompiler.backends.npu.isa import CH, DTYPE_BYTES, NONE, Instr
from kcompiler.backends.npu.sim import Binding, Buffer
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.backends.npu.tiler import ConvGeom, tile_attention, tile_gemm, tile_vector
from kcompiler.errors import LoweringError
from kcompiler.frontend.state import is_resident_pair

F32 = np.float32

#: the float types the NPU claims: float32, and float16 / bfloat16, which it moves at their own
#: size and computes in float32 (accumulating in float32), rounding each op's output to them
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_CHIP_DTYPE = {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}
#: ONNX dtype -> instruction dtype of the values a program moves
IR_DTYPE = {ir.DataType.FLOAT: "f32", ir.DataType.FLOAT16: "f16", ir.DataType.BFLOAT16: "bf16",
            ir.DataType.INT64: "i64", ir.DataType.INT32: "i32", ir.DataType.INT8: "i8", ir.DataType.BOOL: "u8",
            ir.DataType.UINT8: "u8"}


def value_dtype(node: ir.Node) -> str:
    """The chip dtype name ('fp16', 'bf16', or 'fp32') of the float values a node moves."""
    for v in (*node.outputs, *node.inputs):
        if v is not None and v.dtype in FLOATS:
            return _CHIP_DTYPE.get(v.dtype, "fp32")
    return "fp32"


# ---- attribute helpers ---------------------------------------------------------------------
def a_int(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def a_float(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else float(a.value)


def a_ints(node, name, default=None):
    a = node.attributes.get(name)
    return default if a is None else [int(x) for x in a.value]


def a_str(node, name, default):
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    return v.decode() if isinstance(v, bytes) else str(v)


def a_strs(node, name, default=()):
    a = node.attributes.get(name)
    return list(default) if a is None else [x.decode() if isinstance(x, bytes) else str(x) for x in a.value]


def shape(v) -> tuple[int, ...]:
    return opinfo.shape_of(v)


def const_ints(v) -> list[int] | None:
    c = opinfo.const_value(v)
    return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]


def const_scalar(v) -> float | None:
    """A small constant's value as a float (an instruction immediate), None if not constant."""
    if v is None or opinfo.numel(v) > 16:
        return None
    c = opinfo.const_value(v)
    return None if c is None or np.asarray(c).size < 1 else float(np.asarray(c, np.float64).reshape(-1)[0])


def contiguous(shape_: tuple[int, ...]) -> tuple[int, ...]:
    out, s = [], 1
    for n in reversed(shape_):
        out.append(s)
        s *= n
    return tuple(reversed(out))


# ---- codegen --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where a value lives: a DRAM buffer, a byte offset, element strides per dim."""

    buf: int
    off: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def esize(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def is_contiguous(self) -> bool:
        return all(n == 1 or s == c for n, s, c in zip(self.shape, self.strides, contiguous(self.shape)))


class Codegen:
    """Collects one program: instructions, the DRAM buffer table, the initial image, IO bindings."""

    def __init__(self, spec: NpuSpec, functional: bool, inputs: list[ir.Value], outputs: list[ir.Value],
                 dram_base: int = 0):
        self.spec = spec
        self.functional = functional
        self.instrs: list[Instr] = []
        self.buffers: list[Buffer] = []
        self.init: list[tuple[int, int, np.ndarray]] = []
        self.layouts: dict[str, Layout] = {}
        #: buffers are laid out from here on (a partition's DRAM window starts at its base)
        self.dram_base = dram_base
        self._next = dram_base
        self._inputs = {v.name for v in inputs if not opinfo.is_const(v)}
        self._outputs = {v.name for v in outputs}

    def alloc(self, name: str, nbytes: int, role: str, reserve: int | None = None) -> int:
        self.buffers.append(Buffer(name, self._next, int(nbytes), role))
        self._next += (max(int(nbytes), reserve or 0) + 63) // 64 * 64
        return len(self.buffers) - 1

    def layout(self, v: ir.Value) -> Layout:
        """The value's layout, allocating its buffer (and laying out its bytes if it is constant)."""
        lay = self.layouts.get(v.name)
        if lay is not None:
            return lay
        dt = IR_DTYPE.get(v.dtype)
        sh = shape(v)
        if dt is None or sh is None:
            raise LoweringError(f"value '{v.name}' ({v.dtype}, shape {v.shape}) cannot live in NPU memory")
        nbytes = math.prod(sh) * DTYPE_BYTES[dt]
        if v.name in self._inputs:
            role = "input"
        elif opinfo.is_const(v):
            role = "const"
        elif v.name in self._outputs:
            role = "output"
        else:
            role = "temp"
        buf = self.alloc(v.name, nbytes, role)
        lay = Layout(buf, 0, dt, sh, contiguous(sh))
        self.layouts[v.name] = lay
        if role == "const" and self.functional:
            c = opinfo.const_value(v)
            self.init.append((buf, 0, _as_bytes(np.asarray(c), dt, sh)))
        return lay

    def const(self, name: str, dtype: str, shape_: tuple[int, ...], value: Callable[[], np.ndarray]) -> Layout:
        """A constant the compiler makes (e.g. batch norm folded into a scale and a shift); `value`
        is called only for functional programs."""
        nbytes = math.prod(shape_) * DTYPE_BYTES[dtype]
        buf = self.alloc(name, nbytes, "const")
        if self.functional:
            self.init.append((buf, 0, _as_bytes(np.asarray(value()), dtype, shape_)))
        return Layout(buf, 0, dtype, tuple(shape_), contiguous(shape_))

    def temp(self, name: str, dtype: str, shape_: tuple[int, ...]) -> Layout:
        buf = self.alloc(name, math.prod(shape_) * DTYPE_BYTES[dtype], "temp")
        return Layout(buf, 0, dtype, tuple(shape_), contiguous(shape_))

    def set_layout(self, v: ir.Value, lay: Layout) -> None:
        self.layouts[v.name] = lay

    def emit(self, ins: Instr) -> None:
        self.instrs.append(ins)

    def extend(self, instrs) -> None:
        self.instrs.extend(instrs)

    def binding(self, v: ir.Value) -> Binding:
        lay = self.layout(v)
        return Binding(v.name, lay.buf, lay.off, lay.dtype, lay.shape, lay.strides)


def _as_bytes(a: np.ndarray, dtype: str, shape_) -> np.ndarray:
    from kcompiler.backends.npu.sim import NP_DTYPES

    a = np.asarray(a)
    a = a.reshape(shape_) if a.size == math.prod(shape_) else np.broadcast_to(a, tuple(shape_))
    arr = np.ascontiguousarray(a.astype(NP_DTYPES[dtype], copy=False))
    return arr.reshape(-1).view(np.uint8)


# ---- base -----------------------------------------------------------------------------------
class Kernel:
    kind = "vector"

    def __init__(self, node: ir.Node, spec: NpuSpec):
        self.node = node
        self.spec = spec
        self.out = node.outputs[0]
        self.macs = opinfo.macs(node)

    def emit(self, cg: Codegen, op: int) -> None:
        """Append this op's instructions."""

    def cost(self) -> Cost:
        return Cost(macs=self.macs)


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


# ---- DRAM-to-DRAM copies ----------------------------------------------------------------------
def merge_dims(sizes, stride_lists, groups=None, keep=()) -> list[list[int]]:
    """Group the dims of a block (sizes > 1, and those in `keep`) into runs that every stride list
    can address as one dim: adjacent dims d, e merge when each list has both broadcast (stride 0)
    or stride[d] == stride[e] * size[e]; `groups` (a label per dim) keeps differently labelled dims
    apart."""
    out: list[list[int]] = []
    for d, n in enumerate(sizes):
        if n <= 1 and d not in keep:
            continue
        if out:
            p = out[-1][-1]
            same = groups is None or groups[p] == groups[d]
            if same and all((st[p] == 0 and st[d] == 0) or (st[d] != 0 and st[p] == st[d] * sizes[d])
                            for st in stride_lists):
                out[-1].append(d)
                continue
        out.append([d])
    return out


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
        cg.emit(make(isa.GATHER, 0, op, aux=isa.esize_code(src.dtype) | isa.DT[il.dtype] << 4, sbuf=src.buf, soff=src.off,
                     ibuf=il.buf, ioff=il.off, dbuf=out.buf, doff=out.off, outer=outer, count=count, inner=inner,
                     sstride=rows * inner if outer > 1 else 0, rows=rows, dstride=count * inner if outer > 1 else 0))


# ---- vector-tiled ops ----------------------------------------------------------------------
@dataclass
class Operand:
    """A tensor seen in an op's iteration space: its layout and element strides per space dim
    (0 where it is broadcast, or reduced away for an output)."""

    lay: Layout
    strides: tuple[int, ...]


def broadcast_operand(lay: Layout, space: tuple[int, ...]) -> Operand:
    """`lay`'s tensor broadcast to `space` (numpy rules, right-aligned)."""
    pad = len(space) - len(lay.shape)
    if pad < 0:
        raise LoweringError("an operand has more dims than the op's iteration space")
    st = [0] * pad
    for d, (n, s) in enumerate(zip(lay.shape, lay.strides)):
        full = space[pad + d]
        if n == full and n > 1:
            st.append(s)
        elif n == 1:
            st.append(0)
        else:
            raise LoweringError(f"an operand of shape {lay.shape} does not broadcast to {space}")
    return Operand(lay, tuple(st))


class VectorKernel(Kernel):
    """An op computed tile by tile on the vector unit along one axis of its iteration space."""

    fn = "copy"
    work_per_elem = 1.0

    @property
    def cost_class(self) -> str:
        """The vector unit's cost class the tiler estimates the op at."""
        return isa.VFN_CLASS[self.fn]

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.out_shape = shape(self.out)
        self.space = self.iteration_space()
        self.streams = [v for v in self.stream_inputs()]
        self.axis = self.pick_axis()

    # ---- what the op reads and how it is tiled ----
    def iteration_space(self) -> tuple[int, ...]:
        return self.out_shape

    def stream_inputs(self) -> list[ir.Value]:
        return [v for v in self.node.inputs if v is not None and opinfo.numel(v) > 0
                and shape(v) is not None and v.dtype in FLOATS]

    def reduced_axes(self) -> set[int]:
        return set()

    def pick_axis(self) -> int:
        red = self.reduced_axes()
        for ax, d in enumerate(self.space):
            if d > 1 and ax not in red:
                return ax
        return -1  # one tile

    def _next_axis(self) -> int | None:
        """The tiling axis after the current one (None: there is none)."""
        if self.axis < 0 or type(self).pick_axis is not VectorKernel.pick_axis:
            return None  # kernels that choose their own axis keep it
        red = self.reduced_axes()
        for ax in range(self.axis + 1, len(self.space)):
            if self.space[ax] > 1 and ax not in red:
                return ax
        return None

    @property
    def extent(self) -> int:
        return 1 if self.axis < 0 else self.space[self.axis]

    def in_inner(self) -> int:
        """Largest per-row element count among the inputs (pools read more than they write)."""
        ext = max(self.extent, 1)
        best = 0
        for v in self.streams:
            s = shape(v)
            a = self.axis - (len(self.space) - len(s)) if self.axis >= 0 else -1
            per = opinfo.numel(v) // (s[a] if a >= 0 and s[a] > 1 else ext if a >= 0 and s[a] == 1 else 1) \
                if s else 1
            best = max(best, per)
        return best

    def tiles(self, rows_cap: int | None = None) -> tuple[int, list[list[tuple[int, int]]]]:
        ext = self.extent
        inner = max(1, math.prod(self.space) // max(ext, 1))
        per_core = split_range(ext, self.spec.cores)
        cls = self.cost_class
        out, est = [], 0
        for lo, hi in per_core:
            rows, cyc = tile_vector(self.spec, hi - lo, max(inner, self.in_inner()), len(self.streams), cls,
                                    self.work_per_elem)
            if rows_cap is not None:
                rows = max(1, min(rows, rows_cap))
            est = max(est, cyc)
            out.append([(r, min(hi, r + rows)) for r in range(lo, hi, rows)])
        return est, out

    def cost(self) -> Cost:
        est, _ = self.tiles()
        return Cost(cycles=est + self.spec.issue_cycles, macs=self.macs)

    # ---- emission ----
    def operands(self, cg: Codegen) -> list[Operand]:
        """The operands the tiles read, in the iteration space (default: inputs broadcast)."""
        return [broadcast_operand(cg.layout(v), self.space) for v in self.streams]

    def result(self, cg: Codegen) -> Operand:
        lay = cg.layout(self.out)
        return Operand(lay, broadcast_operand(lay, self.space).strides)

    def temps(self) -> list[int]:
        """Masks (0 = the whole tile) of the float32 temporaries the vector body uses."""
        return []

    def body(self, tile: "VTile") -> list[Instr]:
        """The VECTOR instructions of one tile (default: one of `fn` over the operands)."""
        return [tile.vec(self.fn, tile.dst, [tile.src[i] for i in range(len(tile.src))])]

    def emit(self, cg, op):
        ops = self.operands(cg)
        res = self.result(cg)
        red = self.reduced_axes()
        cap = None
        while True:
            _, per_core = self.tiles(cap)
            try:
                plan = _VectorPlan(self, cg, op, ops, res, red, per_core)
                break
            except _NoFit:
                rows = max(hi - lo for t in per_core for lo, hi in t)
                if rows <= 1:
                    # one slice along the tiled axis is too big (attention scores of a long prompt:
                    # [1, heads, S, S] tiled by heads): tile along the next free axis instead, the
                    # axes before it becoming loops over sub-tiles
                    nxt = self._next_axis()
                    if nxt is not None:
                        self.axis, cap = nxt, None
                        continue
                    raise LoweringError(f"NPU op '{self.node.name}' ({self.node.op_type}): one row of its tile does "
                                        "not fit the scratchpad") from None
                cap = rows // 2
        plan.emit()


class _NoFit(Exception):
    pass


@dataclass
class VTile:
    """One tile's scratchpad operands, for a kernel's `body`."""

    kernel: VectorKernel
    core: int
    op: int
    shape4: tuple[int, int, int, int]
    axes: int  # mask of reduced dims
    dst: tuple[int, int, str]  # (address, mask, dtype)
    src: list[tuple[int, int, str]]
    tmp: list[tuple[int, int, str]]

    def vec(self, fn: str, dst, srcs, imms=(0.0, 0.0, 0.0), arg: int = 0, axes: int | None = None) -> Instr:
        srcs = list(srcs) + [None] * (4 - len(srcs))
        addrs = [s[0] if s is not None else NONE for s in srcs]
        masks = [dst[1]] + [s[1] if s is not None else 0 for s in srcs]
        dts = [dst[2]] + [s[2] if s is not None else None for s in srcs]
        keep = sum(1 << d for d, n in enumerate(self.shape4) if n > 1)
        masks = [m & keep for m in masks]
        ax = self.axes if axes is None else axes  # a reduction may run over a dim of size 1
        return make(isa.VECTOR, self.core, self.op, aux=isa.VFN[fn], dst=dst[0], src0=addrs[0], src1=addrs[1],
                    src2=addrs[2], src3=addrs[3], n0=self.shape4[0], n1=self.shape4[1], n2=self.shape4[2],
                    n3=self.shape4[3], bcast=isa.pack_masks(masks, ax), dtypes=isa.pack_dtypes(dts),
                    imm0=isa.f32_bits(imms[0]), imm1=isa.f32_bits(imms[1]), imm2=isa.f32_bits(imms[2]), arg=arg)


class _VectorPlan:
    """The tiles of a vector op on each core, their DMA blocks and scratchpad slots."""

    def __init__(self, k: VectorKernel, cg: Codegen, op: int, ops: list[Operand], res: Operand, red: set[int],
                 per_core):
        self.k, self.cg, self.op, self.ops, self.res, self.red = k, cg, op, ops, res, red
        self.space = k.space
        self.per_core = per_core
        self.axis = k.axis
        groups = [1 if d in red else 0 for d in range(len(self.space))]
        self.core_tiles = []
        sram = k.spec.sram_bytes
        for tiles in per_core:
            subs = []
            for r0, r1 in tiles:
                start = [0] * len(self.space)
                sizes = list(self.space)
                if self.axis >= 0:
                    start[self.axis], sizes[self.axis] = r0, r1 - r0
                dims = merge_dims(sizes, [o.strides for o in ops] + [res.strides], groups, keep=red)
                lead, tail = (dims[:-4], dims[-4:]) if len(dims) > 4 else ([], dims)
                for idx in np.ndindex(*[math.prod(sizes[d] for d in g) for g in lead]) if lead else [()]:
                    st = list(start)
                    sz = list(sizes)
                    for gi, g in zip(idx, lead):
                        # a merged leading dim: its index spread over the dims it merges
                        rem = gi
                        for d in reversed(g):
                            st[d] += rem % sizes[d]
                            rem //= sizes[d]
                            sz[d] = 1
                    subs.append((tuple(st), tuple(sz), tail))
            self.core_tiles.append(subs)
        # scratchpad: resident slots for operands that every tile of a core reads alike, two slots
        # for the others and for the result, one per temporary
        self.layouts = []
        for subs in self.core_tiles:
            resident = [self._same_everywhere(o, subs) for o in ops]
            sizes = [max((self._tile_bytes(o.lay.esize, o.strides, sz) for _, sz, _ in subs), default=0) for o in ops]
            out_size = max((self._tile_bytes(res.lay.esize, res.strides, sz) for _, sz, _ in subs), default=0)
            tmp_masks = k.temps()
            tmp_size = max((math.prod(sz) * 4 for _, sz, _ in subs), default=0)
            addr, slots = 0, []
            for o_res, size in zip(resident, sizes):
                a0 = addr
                addr += _al(size)
                a1 = a0 if o_res else addr
                addr += 0 if o_res else _al(size)
                slots.append((a0, a1))
            outs = (addr, addr + _al(out_size))
            addr += 2 * _al(out_size)
            tmps = []
            for _ in tmp_masks:
                tmps.append(addr)
                addr += _al(tmp_size)
            if addr > sram:
                raise _NoFit()
            self.layouts.append((resident, slots, outs, tmps))

    @staticmethod
    def _tile_bytes(esize, strides, sizes) -> int:
        return esize * math.prod(n if s else 1 for n, s in zip(sizes, strides))

    def _same_everywhere(self, o: Operand, subs) -> bool:
        first = None
        for st, sz, _ in subs:
            key = tuple((a if s else 0, n if s else 1) for a, n, s in zip(st, sz, o.strides))
            if first is None:
                first = key
            elif key != first:
                return False
        return True

    def _block(self, o: Operand, st, sz, tail) -> tuple[int, tuple, tuple]:
        """(byte offset, shape, element strides) of an operand's part of a (sub)tile, in merged dims."""
        off = o.lay.off + sum(a * s for a, s in zip(st, o.strides)) * o.lay.esize
        shp, strides = [], []
        for g in tail:
            s = o.strides[g[-1]]
            n = math.prod(sz[d] for d in g)
            shp.append(n if s else 1)
            strides.append(s)
        pad = 4 - len(shp)
        return off, (1,) * pad + tuple(shp), (0,) * pad + tuple(strides)

    def emit(self):
        k, cg, op = self.k, self.cg, self.op
        for core, subs in enumerate(self.core_tiles):
            resident, slots, outs, tmps = self.layouts[core]
            n = len(subs)
            loaded_resident = [False] * len(self.ops)
            for i, (st, sz, tail) in enumerate(subs):
                shape4 = (1,) * (4 - len(tail)) + tuple(math.prod(sz[d] for d in g) for g in tail)
                loads, srcs = [], []
                for j, o in enumerate(self.ops):
                    off, shp, strides = self._block(o, st, sz, tail)
                    addr = slots[j][0] if resident[j] else slots[j][i % 2]
                    if not (resident[j] and loaded_resident[j]):
                        loads.append(dma(isa.LOAD, core, op, o.lay.dtype, o.lay.buf, off, addr, shp, strides))
                        loaded_resident[j] = True
                    mask = sum(1 << d for d, x in enumerate(shp) if x == 1 and shape4[d] > 1)
                    srcs.append((addr, mask, o.lay.dtype))
                for j, ins in enumerate(loads):
                    cg.emit(ins.replace(wait=CH["vx>ld"] if (j == 0 and i >= 2) else 0,
                                        signal=CH["ld>vx"] if j == len(loads) - 1 else 0))
                out_off, out_shp, out_strides = self._block(self.res, st, sz, tail)
                axes = 0
                for d, g in enumerate(tail):
                    if g[0] in self.red:
                        axes |= 1 << (4 - len(tail) + d)
                # (a reduction's destination is the tile without its reduced dims, not a broadcast)
                dmask = sum(1 << d for d, x in enumerate(out_shp) if x == 1 and shape4[d] > 1 and not axes >> d & 1)
                tile = VTile(k, core, op, shape4, axes, (outs[i % 2], dmask, self.res.lay.dtype), srcs,
                             [(t, 0, "f32") for t in tmps])
                vecs = k.body(tile)
                wait = (CH["ld>vx"] if loads else 0) | (CH["st>vx"] if i >= 2 else 0)
                later = i + 2 < n and any(not r for r in resident)
                sig = CH["vx>st"] | (CH["vx>ld"] if later else 0)
                for j, ins in enumerate(vecs):
                    cg.emit(ins.replace(wait=wait if j == 0 else 0, signal=sig if j == len(vecs) - 1 else 0))
                cg.emit(dma(isa.STORE, core, op, self.res.lay.dtype, self.res.lay.buf, out_off, outs[i % 2],
                            out_shp, out_strides, wait=CH["vx>st"], signal=CH["st>vx"] if i + 2 < n else 0))


def _al(n: int) -> int:
    return (int(n) + 63) // 64 * 64


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


class ReduceKernel(VectorKernel):
    """ReduceMean / ReduceSum / ReduceMax over constant axes: the iteration space is the input."""

    def __init__(self, node, spec):
        self.fn = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
                   "ReduceMin": "reduce_min", "GlobalAveragePool": "reduce_mean",
                   "GlobalMaxPool": "reduce_max"}[node.op_type]
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
        lay = cg.layout(self.out)
        red = self.reduced_axes()
        if self.keepdims():
            st = [0 if d in red else s for d, s in enumerate(lay.strides)]
        else:
            it = iter(lay.strides)
            st = [0 if d in red else next(it) for d in range(len(self.space))]
        return Operand(lay, tuple(st))

    def body(self, t):
        if not self.reduced_axes():
            return [t.vec("copy", t.dst, t.src[:1])]
        return [t.vec(self.fn, t.dst, t.src[:1])]


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
            self.pads = _same_pads(self.spatial, self.out_shape[2:], self.kernel, self.strides, self.dil, auto)
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
            kh, pt = _trim_taps(kh, dh, pt, sh, h, oh)
            kw, pl = _trim_taps(kw, dw, pl, sw, w, ow)
        return dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, pb=pb, pr=pr, h=h, w=w, oh=oh, ow=ow,
                    flags=1 if include else 0)

    def emit(self, cg, op):
        emit_window_op(self, cg, op, self.window(), self.fn, self.node.inputs[0], None, [], 1)


def _trim_taps(k: int, d: int, pad: int, s: int, size: int, out: int) -> tuple[int, int]:
    """(taps, pad) of a window without its leading and trailing taps that never read the input."""
    from kcompiler.backends.npu.sim import _valid

    reads = [t for t in range(k) if _valid(t, d, pad, s, size, out)[1] > _valid(t, d, pad, s, size, out)[0]]
    if not reads:
        return k, pad
    return reads[-1] - reads[0] + 1, pad - reads[0] * d


def _same_pads(spatial, out, kernel, strides, dil, mode):
    k = len(kernel)
    begin, end = [0] * k, [0] * k
    for i in range(k):
        total = max(0, (out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
        small, big = total // 2, total - total // 2
        begin[i], end[i] = (small, big) if mode == "SAME_UPPER" else (big, small)
    return begin + end


def emit_window_op(k: Kernel, cg: Codegen, op: int, window: dict, fn: str, x: ir.Value, weight: Layout | None,
                   steps: list, mult: int) -> None:
    """A window function (pool, depthwise conv) of the vector unit over whole planes, tiled over
    channels (or images), then `steps` (vector function, immediates, operand or None) on the
    tile; the output is (images, channels * mult, OH, OW)."""
    spec = k.spec
    xl = cg.layout(x)
    outl = cg.layout(k.out)
    n_img, c = xl.shape[0], xl.shape[1]
    oh, ow = window["oh"], window["ow"]
    h, w = window["h"], window["w"]
    # one tile: (images, channels) planes of every image and a channel range
    cls = isa.VFN_CLASS[fn]
    taps = window["kh"] * window["kw"]
    per_core = split_range(c, spec.cores) if c > 1 else [(0, 1)]
    xs = (n_img, c, h, w)
    x_str = xl.strides if len(xl.shape) == 4 else (xl.strides[0], xl.strides[1], 0, xl.strides[2])
    o_str = outl.strides if len(outl.shape) == 4 else (outl.strides[0], outl.strides[1], 0, outl.strides[2])
    for core, (lo, hi) in enumerate(per_core):
        rows, _ = tile_vector(spec, hi - lo, n_img * max(h * w, oh * ow * mult), 1 + (weight is not None), cls,
                              float(taps))
        while True:
            tiles = [(r, min(hi, r + rows)) for r in range(lo, hi, rows)]
            cc = max(b - a for a, b in tiles)
            esize = xl.esize
            in_b = _al(n_img * cc * h * w * esize)
            w_b = _al(cc * mult * taps * weight.esize) if weight is not None else 0
            out_b = _al(n_img * cc * mult * oh * ow * 4)
            op_b = [_al(_step_operand_bytes(s, n_img, cc * mult, oh * ow)) for s in steps]
            total = 2 * in_b + 2 * w_b + 2 * out_b + 2 * sum(op_b)
            if total <= spec.sram_bytes or rows == 1:
                break
            rows = max(1, rows // 2)
        if total > spec.sram_bytes:
            raise LoweringError(f"NPU op '{k.node.name}': one channel's planes do not fit the scratchpad")
        a_in, a_w, a_out = 0, 2 * in_b, 2 * in_b + 2 * w_b
        a_ops = []
        base = a_out + 2 * out_b
        for b in op_b:
            a_ops.append(base)
            base += 2 * b
        cg.emit(make(isa.CONFIG, core, op, aux=1, **canonical_window(**window)))
        n = len(tiles)
        for i, (r0, r1) in enumerate(tiles):
            cc = r1 - r0
            par = i % 2
            loads = [dma(isa.LOAD, core, op, xl.dtype, xl.buf, xl.off + r0 * x_str[1] * xl.esize, a_in + par * in_b,
                         (n_img, cc, h, w), x_str)]
            if weight is not None:
                loads.append(dma(isa.LOAD, core, op, weight.dtype, weight.buf,
                                 weight.off + r0 * mult * taps * weight.esize, a_w + par * w_b, (cc, mult, taps),
                                 (mult * taps, taps, 1)))
            step_srcs = []
            for s, addr in zip(steps, a_ops):
                operand = s[2]
                if operand is None:
                    step_srcs.append(None)
                    continue
                lay, st = operand  # st: strides over (image, channel, oh, ow) of the output
                shp = (n_img if st[0] else 1, cc * mult if st[1] else 1, oh if st[2] else 1, ow if st[3] else 1)
                loads.append(dma(isa.LOAD, core, op, lay.dtype, lay.buf, lay.off + r0 * mult * st[1] * lay.esize,
                                 addr + par * _step_operand_bytes(s, n_img, cc * mult, oh * ow), shp, st))
                mask = sum(1 << d for d, x_ in enumerate(shp) if x_ == 1)
                step_srcs.append((addr + par * _step_operand_bytes(s, n_img, cc * mult, oh * ow), mask, lay.dtype))
            for j, ins in enumerate(loads):
                cg.emit(ins.replace(wait=CH["vx>ld"] if (j == 0 and i >= 2) else 0,
                                    signal=CH["ld>vx"] if j == len(loads) - 1 else 0))
            shape4 = (n_img, cc, oh, ow)
            out4 = (n_img, cc * mult, oh, ow)
            t = VTile(k, core, op, out4, 0, (a_out + par * out_b, 0, "f32"), [], [])
            final_dt = outl.dtype
            dst_dt = final_dt if not steps else "f32"
            vecs = [make(isa.VECTOR, core, op, aux=isa.VFN[fn], dst=a_out + par * out_b, src0=a_in + par * in_b,
                         src1=(a_w + par * w_b) if weight is not None else NONE, src2=NONE, src3=NONE,
                         n0=shape4[0], n1=shape4[1], n2=shape4[2], n3=shape4[3], bcast=0,
                         dtypes=isa.pack_dtypes([dst_dt, xl.dtype, weight.dtype if weight is not None else None]),
                         arg=mult if fn == "dwconv" else 0)]
            acc = (a_out + par * out_b, 0, "f32")
            for si, (s, src) in enumerate(zip(steps, step_srcs)):
                fn_s, imms = s[0], s[1]
                last = si == len(steps) - 1
                dst = (acc[0], 0, final_dt if last else "f32")
                vecs.append(t.vec(fn_s, dst, [acc] + ([src] if src is not None else []), imms))
            wait = CH["ld>vx"] | (CH["st>vx"] if i >= 2 else 0)
            sig = CH["vx>st"] | (CH["vx>ld"] if i + 2 < n else 0)
            for j, ins in enumerate(vecs):
                cg.emit(ins.replace(wait=wait if j == 0 else 0, signal=sig if j == len(vecs) - 1 else 0))
            cg.emit(dma(isa.STORE, core, op, final_dt, outl.buf, outl.off + r0 * mult * o_str[1] * outl.esize,
                        a_out + par * out_b, out4, o_str, wait=CH["vx>st"], signal=CH["st>vx"] if i + 2 < n else 0))


def _step_operand_bytes(step, n_img, ch, pix) -> int:
    if step[2] is None:
        return 0
    lay, st = step[2]
    return (n_img if st[0] else 1) * (ch if st[1] else 1) * (pix if (st[2] or st[3]) else 1) * lay.esize


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


# ---- GEMM-like ops on the systolic array ----------------------------------------------------
#: epilogue step (passes/fusion/epilogue.py) -> vector function
EPILOGUE = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu", "gelu": "gelu",
            "gelu_tanh": "gelu_tanh", "hardswish": "hardswish", "leakyrelu": "leakyrelu",
            "hardsigmoid": "hardsigmoid", "clip": "clip", "add": "add", "mul": "mul"}
_TRANSCENDENTAL = {"sigmoid", "tanh", "silu", "gelu", "gelu_tanh"}


def _epilogue_work(steps: list[str]) -> float:
    """Vector-unit passes over the tile an epilogue costs (one for the bare store)."""
    return float(max(1, len(steps)))


def parse_epilogue_step(step: str) -> tuple[str, tuple[float, float, float]]:
    name, *args = step.split(":")
    vals = [float(a) for a in args] + [0.0] * (3 - len(args))
    return EPILOGUE[name], (vals[0], vals[1], vals[2])


class GemmKernel(Kernel):
    """Conv (implicit GEMM), MatMul (batched) and Gemm on the systolic array (emit.GemmDesc)."""

    kind = "gemm"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.conv: ConvGeom | None = None
        self.base = op = node.op_type.removeprefix("Fused") if node.domain == "kcompiler" else node.op_type
        arity = {"Conv": 3, "MatMul": 2, "Gemm": 3}[op]
        a = node.attributes.get("epilogue")
        self.steps: list[str] = [str(x) for x in a.value] if a is not None else []
        self.operands: list[ir.Value] = list(node.inputs[arity:]) if node.domain == "kcompiler" else []
        self.base_inputs = list(node.inputs[:arity])
        self.fold_m = False
        if op == "Conv":
            self._init_conv()
        elif op == "MatMul":
            a, b = shape(node.inputs[0]), shape(node.inputs[1])
            self.m, self.k, self.n = a[-2], a[-1], b[-1]
            if len(b) == 2:
                self.g = 1
                self.m = math.prod(a[:-1])
                self.fold_m = True
            else:
                self.g = math.prod(shape(self.out)[:-2])
        else:  # Gemm
            a, b = shape(node.inputs[0]), shape(node.inputs[1])
            ta, tb = a_int(node, "transA", 0), a_int(node, "transB", 0)
            self.g = 1
            self.m, self.k = (a[1], a[0]) if ta else (a[0], a[1])
            self.n = b[0] if tb else b[1]
        self.depthwise = self.conv is not None and self.conv.cin_g == 1 and self.g > 1
        self.per_core = self._split()
        out_shape = shape(self.out)
        #: epilogue operands of the output's size are streamed per output tile; smaller ones
        #: (biases) too, at their own size
        self.full_operands = [v for v in self.operands if opinfo.numel(v) == math.prod(out_shape)]

    def _init_conv(self):
        node = self.node
        xs, ws, ys = shape(node.inputs[0]), shape(node.inputs[1]), shape(self.out)
        g = a_int(node, "group", 1)
        kh, kw = ws[2], ws[3]
        st = a_ints(node, "strides", [1, 1])
        dl = a_ints(node, "dilations", [1, 1])
        pads = a_ints(node, "pads", [0, 0, 0, 0])
        auto = a_str(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(xs[2:], ys[2:], [kh, kw], st, dl, auto)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        self.pads, self.strides, self.dil = pads, st, dl
        self.g, self.n, self.k = g, ws[0] // g, ws[1] * kh * kw
        self.m = ys[0] * ys[2] * ys[3]
        self.conv = ConvGeom(ys[0], ws[1], kh, kw, st[0], dl[0], ys[2], ys[3], xs[2] + pads[0] + pads[2],
                             xs[3] + pads[1] + pads[3])

    # ---- work split and tiling ----
    def _split(self):
        """Per core: (g range, m range, n range)."""
        cores = self.spec.cores
        a = self.spec.array
        full = ((0, self.g), (0, self.m), (0, self.n))
        if cores == 1:
            return [full]
        if self.depthwise:  # runs on the vector units tiled over groups (_emit_dw): split those
            return [(r, (0, self.m), (0, self.n)) for r in split_range(self.g, cores)]
        split_m, split_n = self.m >= cores * a.rows, self.n >= cores * a.cols
        if split_m and split_n and self.m * self.k < self.k * self.n:
            # each core streams all of the operand the split does not cut: cut the larger
            # one (the weights of a GEMM with few rows) so it crosses DRAM once
            split_m = False
        if split_m:
            return [((0, self.g), r, (0, self.n)) for r in split_range(self.m, cores, a.rows)]
        if split_n:
            return [((0, self.g), (0, self.m), r) for r in split_range(self.n, cores, a.cols)]
        if self.g >= cores:
            return [(r, (0, self.m), (0, self.n)) for r in split_range(self.g, cores)]
        if self.m >= self.n:
            return [((0, self.g), r, (0, self.n)) for r in split_range(self.m, cores, 8)]
        return [((0, self.g), (0, self.m), r) for r in split_range(self.n, cores, 8)]

    def tiling(self, gr, mr, nr):
        return tile_gemm(self.spec, gr[1] - gr[0], mr[1] - mr[0], self.k, nr[1] - nr[0], self.conv,
                         True, len(self.full_operands), _epilogue_work(self.steps))

    def _dw_tiles(self, gr):
        """Depthwise conv runs on the vector unit, tiled over channels."""
        cls = isa.VFN_CLASS["dwconv"]
        rows, cyc = tile_vector(self.spec, gr[1] - gr[0], self.m * self.n, 1, cls, float(self.k))
        return rows, cyc

    def cost(self) -> Cost:
        cyc = 0
        for gr, mr, nr in self.per_core:
            c = self._dw_tiles(gr)[1] if self.depthwise else self.tiling(gr, mr, nr).cycles
            cyc = max(cyc, c)
        return Cost(cycles=cyc + self.spec.issue_cycles, macs=self.macs)

    # ---- emission ----
    def _step_list(self, cg: Codegen) -> list[tuple[str, tuple, ir.Value | Layout | None, float]]:
        """(vector function, immediates, operand) of the epilogue, the base op's own bias first."""
        node = self.node
        out = []
        if self.base == "Conv" and len(self.base_inputs) > 2 and self.base_inputs[2] is not None:
            bias = cg.layout(self.base_inputs[2])  # (C,): one value per output channel
            out.append(("add", (0.0, 0.0, 0.0), Layout(bias.buf, bias.off, bias.dtype, (bias.shape[0], 1, 1),
                                                      (bias.strides[0], 0, 0))))
        if self.base == "Gemm":
            alpha, beta = a_float(node, "alpha", 1.0), a_float(node, "beta", 1.0)
            c = self.base_inputs[2] if len(self.base_inputs) > 2 else None
            if alpha != 1.0:
                out.append(("scale", (alpha, 0.0, 0.0), None))
            if c is not None and beta != 0.0:
                if beta == 1.0:
                    out.append(("add", (0.0, 0.0, 0.0), c))
                elif opinfo.is_const(c):
                    lay = cg.const(f"{node.name}/beta_c", IR_DTYPE[c.dtype], shape(c),
                                   lambda: np.asarray(opinfo.const_value(c), np.float64) * beta)
                    out.append(("add", (0.0, 0.0, 0.0), lay))
                else:
                    out.append(("axpy", (beta, 0.0, 0.0), c))
        operands = iter(self.operands)
        for s in self.steps:
            fn, imms = parse_epilogue_step(s)
            out.append((fn, imms, next(operands) if fn in ("add", "mul") else None))
        return out

    def emit(self, cg: Codegen, op: int) -> None:
        if self.depthwise:
            return self._emit_dw(cg, op)
        desc = self.desc(cg)
        cg.extend(emit_gemm(desc, op, self.spec.sram_bytes))

    def desc(self, cg: Codegen) -> GemmDesc:
        node = self.node
        a_v, b_v = node.inputs[0], node.inputs[1]
        A, B, Y = cg.layout(a_v), cg.layout(b_v), cg.layout(self.out)
        if A.dtype != B.dtype:
            raise LoweringError(f"'{node.name}': A is {A.dtype} and B {B.dtype}")
        eb, oeb = A.esize, Y.esize
        conv = None
        if self.base == "Conv":
            a, b, out, groups_n = self._conv_views(A, B, Y)
            c = self.conv
            conv = (c.kh, c.kw, self.strides[0], self.strides[1], self.dil[0], self.dil[1], self.pads[0], self.pads[1],
                    0, 0, shape(a_v)[2], shape(a_v)[3], c.oh, c.ow)
        elif self.base == "Gemm":
            ta, tb = a_int(node, "transA", 0), a_int(node, "transB", 0)
            sa, sb = A.strides, B.strides
            a = (A.buf, (A.off,), sa[1] if ta else sa[0], sa[0] if ta else sa[1])
            b = (B.buf, (B.off,), sb[1] if tb else sb[0], sb[0] if tb else sb[1])
            out = (Y.buf, (Y.off,), Y.strides[0], Y.strides[1], 0)
        else:
            a, b, out = self._matmul_views(A, B, Y)
        steps = []
        for fn, imms, operand in self._step_list(cg):
            steps.append((fn, float(imms[0]), float(imms[1]), float(imms[2]),
                          None if operand is None else self._operand_view(cg, operand, Y)))
        cores = []
        for gr, mr, nr in self.per_core:
            t = self.tiling(gr, mr, nr)
            tk = t.tk
            if conv is not None and tk % (conv[0] * conv[1]) and tk != self.k:
                raise LoweringError(f"'{node.name}': a K tile of {tk} is not whole channels")
            cores.append((gr[0], gr[1], mr[0], mr[1], nr[0], nr[1], t.tm, t.tn, tk, 0 if t.order == "mnk" else 1))
        return GemmDesc(A.dtype, Y.dtype, self.g, self.m, self.n, self.k, a, b, out, conv, tuple(cores), tuple(steps))

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
        return a, b, out, self.n

    def _matmul_views(self, A: Layout, B: Layout, Y: Layout):
        a_sh, b_sh, y_sh = A.shape, B.shape, Y.shape
        if self.fold_m:
            # A's leading dims fold into M when its layout (and the output's) allow it
            lead_ok = all(A.strides[d] == A.strides[d + 1] * a_sh[d + 1] for d in range(len(a_sh) - 2)) and all(
                Y.strides[d] == Y.strides[d + 1] * y_sh[d + 1] for d in range(len(y_sh) - 2))
            if lead_ok:
                return ((A.buf, (A.off,), A.strides[-2], A.strides[-1]), (B.buf, (B.off,), B.strides[0], B.strides[1]),
                        (Y.buf, (Y.off,), Y.strides[-2], Y.strides[-1], 0))
            raise LoweringError(f"'{self.node.name}': A's leading dims are not stored as one")
        batch = y_sh[:-2]
        a_b = broadcast_operand(Layout(A.buf, A.off, A.dtype, a_sh[:-2], A.strides[:-2]), batch).strides \
            if len(a_sh) > 2 else (0,) * len(batch)
        b_b = broadcast_operand(Layout(B.buf, B.off, B.dtype, b_sh[:-2], B.strides[:-2]), batch).strides \
            if len(b_sh) > 2 else (0,) * len(batch)
        offs_a, offs_b, offs_y = [], [], []
        for idx in np.ndindex(*batch):
            offs_a.append(A.off + sum(i * s for i, s in zip(idx, a_b)) * A.esize)
            offs_b.append(B.off + sum(i * s for i, s in zip(idx, b_b)) * B.esize)
            offs_y.append(Y.off + sum(i * s for i, s in zip(idx, Y.strides[:-2])) * Y.esize)
        return ((A.buf, tuple(offs_a), A.strides[-2], A.strides[-1]), (B.buf, tuple(offs_b), B.strides[-2],
                                                                       B.strides[-1]),
                (Y.buf, tuple(offs_y), Y.strides[-2], Y.strides[-1], 0))

    def _operand_view(self, cg: Codegen, v, Y: Layout):
        """An epilogue operand read in the output's (g, m, n) coordinates: (buf, per-group offsets,
        dtype, s_m, s_n, s_img)."""
        lay = v if isinstance(v, Layout) else cg.layout(v)
        y_sh = Y.shape
        if isinstance(v, ir.Value) and opinfo.numel(v) == math.prod(y_sh) and tuple(lay.shape) != tuple(y_sh):
            if not lay.is_contiguous():
                raise LoweringError(f"'{self.node.name}': a reshaped epilogue operand must be contiguous")
            lay = Layout(lay.buf, lay.off, lay.dtype, y_sh, contiguous(y_sh))
        st = broadcast_operand(lay, y_sh).strides
        e = lay.esize
        if self.base == "Conv":
            s_img, s_c, s_h, s_w = st
            if s_h != s_w * y_sh[3] and not (s_h == 0 and s_w == 0):
                raise LoweringError(f"'{self.node.name}': an epilogue operand varies over rows but not columns")
            if s_img and not s_w:
                raise LoweringError(f"'{self.node.name}': an epilogue operand constant over pixels but not images")
            offs = tuple(lay.off + g * self.n * s_c * e for g in range(self.g))
            return (lay.buf, offs, lay.dtype, s_w, s_c, s_img)
        if self.base == "Gemm" or self.fold_m:
            lead = st[:-1]
            rows = y_sh[:-1]
            # the folded M dims must read the operand as one strided dim: row m = sum(i_d * prod(rows[d+1:]))
            # is at m * s_m, so every dim longer than 1 has stride s_m * prod(rows[d+1:]) (dims of length
            # 1 never move, whatever their stride)
            live = [d for d in range(len(lead)) if rows[d] > 1]
            s_m = lead[live[-1]] if live else 0
            for d in live:
                if lead[d] != s_m * math.prod(rows[d + 1:]):
                    raise LoweringError(f"'{self.node.name}': an epilogue operand's rows are not one strided dim")
            return (lay.buf, (lay.off,), lay.dtype, s_m, st[-1], 0)
        batch = y_sh[:-2]
        offs = tuple(lay.off + sum(i * s for i, s in zip(idx, st[:-2])) * e for idx in np.ndindex(*batch))
        return (lay.buf, offs, lay.dtype, st[-2], st[-1], 0)

    def _emit_dw(self, cg, op):
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
        Y = cg.layout(self.out)
        for fn, imms, operand in self._step_list(cg):
            if operand is None:
                steps.append((fn, imms, None))
                continue
            lay = operand if isinstance(operand, Layout) else cg.layout(operand)
            if isinstance(operand, ir.Value) and opinfo.numel(operand) == math.prod(ys) and lay.shape != ys:
                lay = Layout(lay.buf, lay.off, lay.dtype, ys, contiguous(ys))
            steps.append((fn, imms, (lay, broadcast_operand(lay, ys).strides)))
        emit_window_op(self, cg, op, window, "dwconv", x, W, steps, mult)


def epilogue_fits(k: GemmKernel, full_operands: int) -> bool:
    """Whether every core's share of the GEMM `k` still has a tiling that fits the scratchpad
    with `full_operands` output-sized epilogue operands streamed alongside."""
    if k.depthwise:
        return True
    return all(tile_gemm(k.spec, gr[1] - gr[0], mr[1] - mr[0], k.k, nr[1] - nr[0], k.conv, True,
                         full_operands).fits for gr, mr, nr in k.per_core)


# ---- fused attention (passes/fusion/attention.py) ------------------------------------------
class AttentionKernel(Kernel):
    """ONNX Attention (opset 23), flash-attention style: per (batch, head) and tq query rows,
    K/V tiles of tk rows stream through SRAM; S = Q·Kᵀ on the array, the online-softmax update
    (attn_step) on the vector unit, O += P·V back on the array, then O / l (attn_final). The
    score matrix never reaches DRAM.

    Q/K/V are [B, H, S, hd] or, with q_num_heads/kv_num_heads, [B, S, H*hd]."""

    kind = "gemm"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        q, k, v = node.inputs[:3]
        self.mask = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] is not None else None
        qs, ks, vs = shape(q), shape(k), shape(v)
        if len(qs) == 3:
            self.hq, self.hk = a_int(node, "q_num_heads", 1), a_int(node, "kv_num_heads", 1)
            self.b, self.s, self.hd = qs[0], qs[1], qs[2] // self.hq
            self.t, self.hdv = ks[1], vs[2] // self.hk
            self.three_d = True
        else:
            self.b, self.hq, self.s, self.hd = qs
            self.hk, self.t, self.hdv = ks[1], ks[2], vs[3]
            self.three_d = False
        self.scale = a_float(node, "scale", 1.0 / math.sqrt(self.hd))
        self.macs = self.b * self.hq * self.s * self.t * (self.hd + self.hdv)
        self.bh = self.b * self.hq
        self.per_core = split_range(self.bh, spec.cores)

    def tiling(self, n_bh: int):
        return tile_attention(self.spec, n_bh, self.s, self.t, self.hd, self.hdv, self.mask is not None)

    def cost(self) -> Cost:
        cyc = max((self.tiling(hi - lo).cycles for lo, hi in self.per_core), default=0)
        return Cost(cycles=cyc + self.spec.issue_cycles, macs=self.macs)

    def _rows(self, lay: Layout, which: str, bh: int, r0: int, r1: int):
        """(byte offset, shape, strides) of rows [r0, r1) of head `bh`'s Q/K/V/O matrix."""
        b, h = divmod(bh, self.hq)
        if which != "q" and which != "o":
            h //= self.hq // self.hk
        d = {"q": self.hd, "k": self.hd, "v": self.hdv, "o": self.hdv}[which]
        st = lay.strides
        if self.three_d:
            off = lay.off + (b * st[0] + r0 * st[1] + h * d * st[2]) * lay.esize
            return off, (r1 - r0, d), (st[1], st[2])
        off = lay.off + (b * st[0] + h * st[1] + r0 * st[2]) * lay.esize
        return off, (r1 - r0, d), (st[2], st[3])

    def emit(self, cg: Codegen, op: int) -> None:
        q, k, v = self.node.inputs[:3]
        Q, K, V, O = cg.layout(q), cg.layout(k), cg.layout(v), cg.layout(self.out)
        M = cg.layout(self.mask) if self.mask is not None else None
        dt = Q.dtype
        eb = DTYPE_BYTES[dt]
        mdt = M.dtype if M is not None else None
        m_strides = None
        if M is not None:
            ms = (1,) * (4 - len(M.shape)) + tuple(M.shape)
            m_st = (0,) * (4 - len(M.shape)) + tuple(M.strides)
            m_strides = tuple(0 if n == 1 else s for n, s in zip(ms, m_st))
        for core, (lo, hi) in enumerate(self.per_core):
            t = self.tiling(hi - lo)
            if t is None:
                raise LoweringError("no attention tiling fits the scratchpad (the fusion check should have refused)")
            tq, tk = t.tq, t.tk
            # scratchpad: Q, K, V and mask tiles double-buffered; one score tile (P overwrites it),
            # the running max and sum, one output accumulator
            sizes = [tq * self.hd * eb, tk * self.hd * eb, tk * self.hdv * eb,
                     tq * tk * DTYPE_BYTES[mdt] if M is not None else 0]
            addr, slots = 0, []
            for s in sizes:
                slots.append((addr, addr + _al(s)))
                addr += 2 * _al(s)
            s_addr = addr
            addr += _al(tq * tk * 4)
            st_addr = addr
            addr += _al(2 * tq * 4)
            o_addr = addr
            addr += _al(tq * self.hdv * 4)
            if addr > self.spec.sram_bytes:
                raise LoweringError(f"attention tiles of '{self.node.name}' need {addr} bytes of scratchpad")
            qblocks = [(bh, q0, min(self.s, q0 + tq)) for bh in range(lo, hi) for q0 in range(0, self.s, tq)]
            kblocks = [(k0, min(self.t, k0 + tk)) for k0 in range(0, self.t, tk)]
            n_groups = len(qblocks) * len(kblocks)
            # an instruction without a DRAM address repeats across heads and K tiles: built once per
            # distinct set of the values it is made of (instructions are immutable values)
            made: dict[tuple, Instr] = {}

            def once(key, build):
                ins = made.get(key)
                if ins is None:
                    ins = made[key] = build()
                return ins

            g = 0
            for qi, (bh, q0, q1) in enumerate(qblocks):
                rq = q1 - q0
                q_slot = slots[0][qi % 2]
                for ki, (k0, k1) in enumerate(kblocks):
                    rk = k1 - k0
                    par = g % 2
                    loads = []  # (dtype, buf, byte offset, SRAM address, shape, strides)
                    if ki == 0:
                        off, shp, strd = self._rows(Q, "q", bh, q0, q1)
                        loads.append((dt, Q.buf, off, q_slot, shp, strd))
                    off, shp, strd = self._rows(K, "k", bh, k0, k1)
                    loads.append((dt, K.buf, off, slots[1][par], shp, strd))
                    off, shp, strd = self._rows(V, "v", bh, k0, k1)
                    loads.append((dt, V.buf, off, slots[2][par], shp, strd))
                    mask_src = None
                    if M is not None:
                        b, h = divmod(bh, self.hq)
                        sb, sh_, sq, sk = m_strides
                        mq, mk = (rq if sq else 1), (rk if sk else 1)
                        moff = M.off + (b * sb + h * sh_ + q0 * sq + k0 * sk) * M.esize
                        loads.append((mdt, M.buf, moff, slots[3][par], (mq, mk), (sq, sk)))
                        mask_src = (slots[3][par], (1 if mq == 1 and rq > 1 else 0) | (2 if mk == 1 and rk > 1 else 0),
                                    mdt)
                    for j, (ldt, buf, off, addr, shp, strd) in enumerate(loads):
                        cg.emit(dma(isa.LOAD, core, op, ldt, buf, off, addr, shp, strd,
                                    wait=CH["mx>ld"] if (j == 0 and g >= 2) else 0,
                                    signal=CH["ld>mx"] if j == len(loads) - 1 else 0))
                    # S = Q K^T: B[d, j] = K[j, d]
                    cg.emit(once(("qk", q_slot, par, rq, rk), lambda: make(
                        isa.MATMUL, core, op, CH["ld>mx"], CH["mx>vx"], isa.DT[dt], a=q_slot, b=slots[1][par],
                        acc=s_addr, m=rq, n=rk, k=self.hd, a_sm=self.hd if rq > 1 else 0, a_sk=1 if self.hd > 1 else 0,
                        b_sk=1 if self.hd > 1 else 0, b_sn=self.hd if rk > 1 else 0, acc_sm=rk if rq > 1 else 0,
                        acc_sn=1 if rk > 1 else 0, g=1)))
                    cg.emit(once(("step", rq, rk, mask_src, ki == 0), lambda: VTile(
                        self, core, op, (rq, rk, self.hdv, 1), 0, (s_addr, 0, dt), [], []).vec(
                        "attn_step", (s_addr, 0, dt), [(s_addr, 0, "f32"), mask_src, (st_addr, 0, "f32"),
                                                        (o_addr, 0, "f32")],
                        (self.scale, 0.0, 0.0), arg=1 if ki == 0 else 0).replace(wait=CH["mx>vx"], signal=CH["vx>mx"])))
                    last = ki == len(kblocks) - 1
                    # O += P V
                    sig = (CH["mx>ld"] if g + 2 < n_groups else 0) | (CH["mx>vx"] if last else 0)
                    cg.emit(once(("pv", par, rq, rk, sig), lambda: make(
                        isa.MATMUL, core, op, CH["vx>mx"], sig, isa.DT[dt] | isa.ACCUMULATE, a=s_addr,
                        b=slots[2][par], acc=o_addr, m=rq, n=self.hdv, k=rk, a_sm=rk if rq > 1 else 0,
                        a_sk=1 if rk > 1 else 0, b_sk=self.hdv if rk > 1 else 0, b_sn=1 if self.hdv > 1 else 0,
                        acc_sm=self.hdv if rq > 1 else 0, acc_sn=1 if self.hdv > 1 else 0, g=1)))
                    g += 1
                cg.emit(once(("final", rq, qi >= 2), lambda: VTile(
                    self, core, op, (rq, self.hdv, 1, 1), 0, (o_addr, 0, O.dtype), [], []).vec(
                    "attn_final", (o_addr, 0, O.dtype), [(o_addr, 0, "f32"), (st_addr, 0, "f32")]).replace(
                    wait=CH["mx>vx"] | (CH["st>vx"] if qi >= 2 else 0), signal=CH["vx>st"])))
                off, shp, strd = self._rows(O, "o", bh, q0, q1)
                cg.emit(dma(isa.STORE, core, op, O.dtype, O.buf, off, o_addr, shp, strd, wait=CH["vx>st"],
                            signal=CH["st>vx"] if qi + 2 < len(qblocks) else 0))
