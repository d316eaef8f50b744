"""The vector unit's tiling of an op along one axis of its iteration space: ``VectorKernel``
(what an op reads, which axes it reduces, the VECTOR instructions of one tile), ``VTile`` (one
tile's scratchpad operands) and the plan that cuts the space into per-core tiles, gives them
double-buffered scratchpad slots and emits their loads, vector bodies and stores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emit import dma, make, split_range
from kcompiler.backends.npu.isa import CH, NONE, Instr
from kcompiler.backends.npu.kernels.attrs import FLOATS, shape
from kcompiler.backends.npu.kernels.codegen import Codegen
from kcompiler.backends.npu.kernels.common import Kernel, Operand, broadcast_operand, merge_dims, sram_aligned
from kcompiler.backends.npu.tiler import tile_vector
from kcompiler.errors import LoweringError


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

    def separate_dims(self) -> set[int]:
        """Dims a tile keeps as dims of their own, even of size 1 (never merged with a neighbour): a
        kernel whose body reads where in the space its tile lies (Trilu's rows and columns)."""
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

    def streamed(self) -> int:
        """How many inputs stream a tile each (the tiler's estimate; default: every stream)."""
        return len(self.streams)

    def tiles(self, rows_cap: int | None = None) -> tuple[int, list[list[tuple[int, int]]]]:
        ext = self.extent
        inner = max(1, math.prod(self.space) // max(ext, 1))
        per_core = split_range(ext, self.spec.cores)
        cls = self.cost_class
        out, est = [], 0
        for lo, hi in per_core:
            rows, cyc = tile_vector(self.spec, hi - lo, max(inner, self.in_inner()), self.streamed(), cls,
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
    """A plan's tiles do not fit the scratchpad (the kernel retries with smaller ones)."""


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
    origin: tuple[int, ...] = ()  # the (sub)tile's first index in each dim of the iteration space

    def vec(self, fn: str, dst, srcs, imms=(0.0, 0.0, 0.0), arg: int = 0, axes: int | None = None) -> Instr:
        """One VECTOR instruction of function `fn` over this tile: `dst` and `srcs` are (address, broadcast
        mask, dtype) scratchpad operands (None: unused)."""
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
        sep = k.separate_dims()
        groups = [1 if d in red else 2 + d if d in sep else 0 for d in range(len(self.space))]
        self.core_tiles = []
        sram = k.spec.sram_bytes
        for tiles in per_core:
            subs = []
            for r0, r1 in tiles:
                start = [0] * len(self.space)
                sizes = list(self.space)
                if self.axis >= 0:
                    start[self.axis], sizes[self.axis] = r0, r1 - r0
                dims = merge_dims(sizes, [o.strides for o in ops] + [res.strides], groups, keep=red | sep)
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
                addr += sram_aligned(size)
                a1 = a0 if o_res else addr
                addr += 0 if o_res else sram_aligned(size)
                slots.append((a0, a1))
            outs = (addr, addr + sram_aligned(out_size))
            addr += 2 * sram_aligned(out_size)
            tmps = []
            for _ in tmp_masks:
                tmps.append(addr)
                addr += sram_aligned(tmp_size)
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
                             [(t, 0, "f32") for t in tmps], st)
                vecs = k.body(tile)
                wait = (CH["ld>vx"] if loads else 0) | (CH["st>vx"] if i >= 2 else 0)
                later = i + 2 < n and any(not r for r in resident)
                sig = CH["vx>st"] | (CH["vx>ld"] if later else 0)
                for j, ins in enumerate(vecs):
                    cg.emit(ins.replace(wait=wait if j == 0 else 0, signal=sig if j == len(vecs) - 1 else 0))
                cg.emit(dma(isa.STORE, core, op, self.res.lay.dtype, self.res.lay.buf, out_off, outs[i % 2],
                            out_shp, out_strides, wait=CH["vx>st"], signal=CH["st>vx"] if i + 2 < n else 0))
