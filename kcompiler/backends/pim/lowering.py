"""The lowering context: values in the staging area, and the host commands that move them.

A node's lowering (products.py, elementwise.py, views.py, kvcache.py; ops.py says which) turns a
placed node into commands over staging buffers through a `Lowering`: it allocates buffers, copies
and converts them on the host (HCOPY over at most 4 strided dimensions), moves element streams in
and out of the device dtype's per-channel blocks, and collects the constant matrices the compiler
writes into the bank image. This is the planning side: it may read the graph."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.geometry import merge_dims
from kcompiler.backends.pim.isa import Command
from kcompiler.backends.pim.kernels.emitter import Emitter
from kcompiler.backends.pim.kernels.stream import StreamLayout
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import LoweringError


def dtype_code(dt) -> int:
    """The staging dtype code of an ONNX dtype (sim.NP_DTYPES), -1 for one staging does not hold."""
    return {ir.DataType.FLOAT: 0, ir.DataType.BFLOAT16: 1, ir.DataType.FLOAT16: 2,
            ir.DataType.INT64: 3, ir.DataType.INT32: 4}.get(dt, -1)


@dataclass
class Buf:
    """A value in the staging area."""

    addr: int
    dtype: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Lowering:
    """Turns placed nodes into commands over staging buffers (the planning side: may read the graph)."""

    def __init__(self, spec: PimSpec, em: Emitter, env: dict[str, Buf], timing_only: bool):
        self.s = spec
        self.em = em
        self.env = env
        self.timing_only = timing_only
        self.fns: list[tuple[str, float]] = []
        self.writes: list[tuple[np.ndarray, list[Command]]] = []  # constant matrices for the bank image
        self.dev = 1 if self.s.dtype == "bfloat16" else 2
        self.fp16 = self.s.dtype == "float16"

    # ---- buffers -------------------------------------------------------------------------
    def const(self, v: ir.Value) -> Buf:
        """A constant's staging buffer: its bytes, or in timing mode only its place."""
        # timing mode reads no tensor data: the constant's place is reserved from its shape
        c = None if self.timing_only else opinfo.const_value(v)
        code = dtype_code(v.dtype) if v.dtype is not None else 0
        if code not in (0, 3, 4):
            code = 0  # other float constants are held as float32, as the host hands them over
        dt = sim.NP_DTYPES[code]
        shape = tuple(np.shape(c)) if c is not None else tuple(opinfo.shape_of(v) or ())
        if c is None:
            return Buf(self.em.alloc(dt.itemsize * math.prod(shape)), code, shape)
        return Buf(self.em.const(np.ascontiguousarray(np.asarray(c).astype(dt)).tobytes()), code, shape)

    def buf(self, v: ir.Value) -> Buf:
        """The staging buffer holding `v` (a constant's is made when first asked for)."""
        b = self.env.get(v.name)
        if b is None:
            if not opinfo.is_const(v):
                raise LoweringError(f"PIM: value '{v.name}' is used before it is computed")
            b = self.env[v.name] = self.const(v)
        return b

    def new(self, shape, dtype: int = 0) -> Buf:
        """A fresh staging buffer of `shape` (float32 unless `dtype` says otherwise)."""
        return Buf(self.em.alloc(sim.NP_DTYPES[dtype].itemsize * math.prod(shape)), dtype, tuple(shape))

    def hcopy(self, dst_addr: int, dst_dtype: int, src_addr: int, src_dtype: int, dims, sstr, dstr,
              reg: int = 0, flags: int = 0) -> None:
        """A host copy (HCOPY, converting dtypes) of `dims` elements read at strides `sstr`, written at `dstr`."""
        m = merge_dims(list(dims), list(sstr), list(dstr))
        if m is None:
            raise LoweringError(f"PIM: a host copy of shape {list(dims)} has more than 4 strided dimensions")
        d, (ss, ds) = m
        self.em.emit("HCOPY", addr=dst_addr, dtype=dst_dtype, addr2=src_addr, dtype2=src_dtype,
                     desc=self.em.desc(*d, *ss, *ds), reg=reg, flags=flags)

    def copy(self, b: Buf, dtype: int) -> Buf:
        """`b` converted to `dtype` in a new buffer."""
        out = self.new(b.shape, dtype)
        self.hcopy(out.addr, dtype, b.addr, b.dtype, [b.numel], [1], [1])
        return out

    def zero(self, addr: int, n: int, dtype: int) -> None:
        """Zero `n` elements of `dtype` at `addr` (HZERO)."""
        self.em.emit("HZERO", addr=addr, length=n * sim.NP_DTYPES[dtype].itemsize)

    # ---- element streams (kernels/stream.py) ---------------------------------------------
    def to_stream(self, src: Buf, sl: StreamLayout, dst: int, reg: int = 0) -> None:
        """Row-major float32 (or bf16/fp16) -> per-channel padded blocks of the device dtype (scaled by
        2**-sreg[reg])."""
        nf, rest = divmod(src.numel, sl.share)
        if nf:
            self.hcopy(dst, self.dev, src.addr, src.dtype, [nf, sl.share], [sl.share, 1], [sl.block, 1], reg=reg)
        if rest:
            at = src.addr + nf * sl.share * sim.NP_DTYPES[src.dtype].itemsize
            self.hcopy(dst + nf * sl.block * 2, self.dev, at, src.dtype, [rest], [1], [1], reg=reg)

    def from_stream(self, src: int, sl: StreamLayout, dst: Buf, reg: int = 0, flags: int = 0) -> None:
        """Per-channel padded blocks of the device dtype -> row-major float32 (scaled back through `reg`)."""
        nf, rest = divmod(dst.numel, sl.share)
        if nf:
            self.hcopy(dst.addr, 0, src, self.dev, [nf, sl.share], [sl.block, 1], [sl.share, 1], reg=reg,
                       flags=flags)
        if rest:
            self.hcopy(dst.addr + nf * sl.share * 4, 0, src + nf * sl.block * 2, self.dev, [rest], [1], [1], reg=reg,
                       flags=flags)

    def stream_buf(self, sl: StreamLayout, numel: int) -> int:
        """A staging buffer for a stream of `numel` elements in `sl`'s padded blocks."""
        n = sl.channels * sl.block
        addr = self.em.alloc(2 * n)
        if n != numel:
            self.zero(addr, n, self.dev)  # the padding of the last columns
        return addr

    # ---- two-operand host ops and the bank image -----------------------------------------
    def copy_desc(self, dims, sstr, dstr) -> int:
        """The descriptor of a host op over `dims` reading its second operand at `sstr`, writing at `dstr`."""
        m = merge_dims(list(dims), list(sstr), list(dstr))
        d, (ss, ds) = m
        return self.em.desc(*d, *ss, *ds)

    def image(self) -> tuple[np.ndarray, np.ndarray]:
        """The bank image (and its valid columns) the constant matrices' WR_BK commands write."""
        s = self.s
        shape = (s.channels, s.banks_per_channel, self.em.rows, s.columns_per_row, s.simd_lanes)
        image = np.zeros(shape, np.uint16)
        valid = np.zeros(shape[:4], bool)
        for data, cmds, descs in self.writes:
            sim.write_image(s, image, valid, descs, cmds, data)
        return image, valid


