"""Functional simulation of an NPU program: instructions executed over memory images.

The simulator sees a program (instructions, buffer table, input/output bindings, the initial
DRAM contents the compiler laid out) and nothing else: it imports neither onnx nor onnx_ir
and never looks at a model. Each device has one DRAM image (bytes); each core a scratchpad
(bytes). Values follow program order; tokens only order time (timing.py).

Before a program first runs, ``check`` walks it once over validity maps of the same memories:
every access must lie inside its buffer (DRAM) or scratchpad (SRAM), read only bytes some
earlier instruction (or the initial image, or an input) wrote, and never write a weight or an
input; reserved fields must be zero. These checks depend on no data, so they run once. A
failure is an ExecutionError naming the instruction, its assembly text and its op.

A program compiled for a partition of a chip (a virtual NPU) has a DRAM window: its buffers and
every DRAM access must lie inside it, or the program faults (PartitionFault). The fence is in the
Decoder, which every path (the checker, the reference walk, the Replay's plan) decodes DRAM
accesses through; the DRAM image covers the window from its base, not the chip's whole DRAM.

Two ways to run it, with the same values bit for bit (tests/backends/npu/test_npu_sim.py): the
reference walk decodes every instruction and executes it on the images (``Machine``); the
``Replay`` compiles the same walk once into closures over precomputed views, and does not copy a
tile into the scratchpad while its consumers can read it where it came from (the LOAD becomes a
view of DRAM until the DRAM or the scratchpad under it changes). Every closure makes the calls
the walk makes (same BLAS shapes and orientation: OpenBLAS rounds differently when those change),
so nothing is shortcut: a changed field changes what runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from kcompiler.backends.npu import isa, vfn
from kcompiler.backends.npu.isa import (ACCUMULATE, BARRIER, CONFIG, COPY, DTYPE_BYTES, FILL, GATHER, LOAD, MATMUL,
                                        NONE, STORE, VECTOR, WINDOW, Instr)
from kcompiler.errors import ExecutionError, PartitionFault

F32 = np.float32
NP_DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
             "i8": np.dtype(np.int8), "i32": np.dtype(np.int32), "i64": np.dtype(np.int64), "u8": np.dtype(np.uint8),
             "u16": np.dtype(np.uint16), "u32": np.dtype(np.uint32), "u64": np.dtype(np.uint64)}
ROLES = ("const", "input", "output", "temp")


@dataclass(frozen=True)
class Buffer:
    """A named region of the DRAM image. Buffers may alias (a view, an in-place append)."""

    name: str
    addr: int
    nbytes: int
    role: str  # const (weights: read-only), input, output, temp (an activation)


@dataclass(frozen=True)
class Binding:
    """A program input or output: a tensor in DRAM at (buffer, byte offset) with element strides."""

    name: str
    buf: int
    off: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]


@dataclass
class ProgramData:
    """Everything the simulator executes: plain data, no model."""

    instrs: list[Instr]
    buffers: list[Buffer]
    inputs: list[Binding]
    outputs: list[Binding]
    #: initial DRAM contents: (buffer index, byte offset in it, bytes)
    init: list[tuple[int, int, np.ndarray]]
    cores: int
    sram_bytes: int
    #: (name, op type) of each op, for messages and profiles only
    ops: list[tuple[str, str]] = field(default_factory=list)
    #: a partition's DRAM window [lo, hi) (absolute addresses): every buffer and access must lie in it;
    #: None: the whole chip's, unfenced
    window: tuple[int, int] | None = None

    @property
    def dram_base(self) -> int:
        """The absolute address of byte 0 of the DRAM image (a partition's window starts there)."""
        return self.window[0] if self.window is not None else 0

    @property
    def dram_bytes(self) -> int:
        """The size of the DRAM image: from dram_base to the end of the last buffer."""
        return max((b.addr + b.nbytes for b in self.buffers), default=self.dram_base) - self.dram_base

    def image_addr(self, buf: int) -> int:
        """Where buffer `buf` starts in the DRAM image."""
        return self.buffers[buf].addr - self.dram_base


def _fail(prog: ProgramData, i: int, what: "str | Exception") -> ExecutionError:
    ins = prog.instrs[i]
    name, op_type = prog.ops[ins.op] if ins.op < len(prog.ops) else ("?", "?")
    text = f"NPU instruction {i} `{ins.text()}` (op {ins.op}: '{name}', {op_type}): {what}"
    if isinstance(what, _Fault):
        return PartitionFault(text, hint="the program reaches outside the DRAM of the partition it was compiled "
                                         "for: another tenant's memory; if kcompiler generated it, this is a bug in "
                                         "its NPU code generator")
    return ExecutionError(text, hint="the program is malformed: if kcompiler generated it, this is a bug in its NPU "
                                     "code generator")


class _Bad(Exception):
    """A check failed (turned into an ExecutionError naming the instruction)."""


class _Fault(_Bad):
    """A DRAM access outside the program's partition window (turned into a PartitionFault)."""


# ---- decoding the fields of an instruction -------------------------------------------------
def _dt(code: int) -> str:
    if code >= len(isa.DTYPES):
        raise _Bad(f"unknown dtype code {code}")
    return isa.DTYPES[code]


def _raw(code: int) -> str:
    """The raw element type a DMA of size code `code` moves."""
    if code >= len(isa.ESIZES):
        raise _Bad(f"unknown element size code {code}")
    return isa.RAW[isa.ESIZES[code]]


def _block(ins: Instr, names=("n0", "n1", "n2", "n3")) -> tuple[int, ...]:
    return tuple(ins.arg(n) for n in names)


def _canonical_strides(shape, strides, what: str) -> None:
    for d, (n, s) in enumerate(zip(shape, strides)):
        if n == 1 and s != 0:
            raise _Bad(f"{what} stride of dim {d} is {s}, but the dim has size 1 (reserved: must be 0)")


def _dense_pitches(shape) -> tuple[int, int, int]:
    n0, n1, n2, n3 = shape
    return n1 * n2 * n3, n2 * n3, n3


@dataclass(frozen=True)
class Access:
    space: str  # "dram" | "sram"
    core: int
    addr: int  # absolute byte address in the image
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements
    write: bool
    region: tuple[int, int]  # [lo, hi) bytes the access must stay inside

    @property
    def esize(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def extent(self) -> tuple[int, int] | None:
        """[lo, hi) bytes touched, None if empty."""
        if any(n == 0 for n in self.shape):
            return None
        e = self.esize
        lo = self.addr + sum(min(0, (n - 1) * s) * e for n, s in zip(self.shape, self.strides))
        hi = self.addr + sum(max(0, (n - 1) * s) * e for n, s in zip(self.shape, self.strides)) + e
        return lo, hi


def byte_view(mem: np.ndarray, addr: int, esize: int, shape, strides) -> np.ndarray:
    """A view of every byte of every element of a block of `mem`, a map with one entry per byte of
    memory (bool, uint8, int16, ...): shape + (esize,)."""
    k = mem.itemsize
    return np.lib.stride_tricks.as_strided(mem[addr:], tuple(shape) + (esize,),
                                           tuple(s * esize * k for s in strides) + (k,))


def data_view(mem: np.ndarray, addr: int, dtype: str, shape, strides, writeable: bool = True) -> np.ndarray:
    """A block of `mem` (uint8) as an array of `dtype` (bounds already checked)."""
    dt = NP_DTYPES[dtype]
    e = dt.itemsize
    shape, strides = tuple(shape), tuple(strides)
    if any(n == 0 for n in shape):
        return np.zeros(shape, dt)
    lo = addr + sum(min(0, (n - 1) * s) * e for n, s in zip(shape, strides))
    hi = addr + sum(max(0, (n - 1) * s) * e for n, s in zip(shape, strides)) + e
    base = mem[lo:hi].view(dt)
    start = (addr - lo) // e
    return np.lib.stride_tricks.as_strided(base[start:], shape, tuple(s * e for s in strides), writeable=writeable)


# ---- the window registers ------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    h: int
    w: int
    oh: int
    ow: int
    flags: int

    @classmethod
    def of(cls, ins: Instr) -> "Window":
        f = ins.fields()
        w = cls(**f)
        if min(w.kh, w.kw, w.sh, w.sw, w.dh, w.dw, w.h, w.w, w.oh, w.ow) < 1:
            raise _Bad("window sizes, strides and dilations must be at least 1")
        for name, used, size in (("dh", "kh", w.kh), ("dw", "kw", w.kw), ("sh", "oh", w.oh), ("sw", "ow", w.ow)):
            if size == 1 and f[name] != 1:
                raise _Bad(f"{name} means nothing when {used} is 1 (reserved: must be 1)")
        for dim, size, k, s, d, pad, out in (("rows", w.h, w.kh, w.sh, w.dh, w.pt, w.oh),
                                             ("columns", w.w, w.kw, w.sw, w.dw, w.pl, w.ow)):
            # the output extent follows from the input's, as ONNX computes it: out = floor((size + pad +
            # end pad - extent) / stride) + 1 for an end pad below extent + stride - 1 (ceil mode too)
            extent = (k - 1) * d + 1
            lo = max(0, (out - 1) * s - size - pad + extent)
            hi = min(extent + s - 2, out * s - 1 - size - pad + extent)
            if lo > hi:
                raise _Bad(f"a window of {k} taps (dilation {d}, stride {s}, pad {pad}) over {size} input {dim} "
                           f"cannot give {out} outputs")
        if w.flags & ~1:
            raise _Bad(f"unknown window flags {w.flags:#x}")
        return w


def _window_rows(w: Window, p0: int, m: int) -> tuple[int, int, int, int]:
    """(first image, images, lowest input row, highest input row + 1) the feeder reads for output
    pixels [p0, p0 + m) (rows clipped to the image; padding reads nothing)."""
    P = w.oh * w.ow
    img0, img1 = p0 // P, (p0 + m - 1) // P
    if img1 > img0:
        oh_lo, oh_hi = 0, w.oh - 1
    else:
        oh_lo, oh_hi = (p0 % P) // w.ow, ((p0 + m - 1) % P) // w.ow
    rows = _touched(oh_lo, oh_hi, w.kh, w.sh, w.dh, w.pt, w.h)
    if rows is None:
        return img0, img1 - img0 + 1, 0, 0
    return img0, img1 - img0 + 1, rows[0], rows[1]


def _window_cols(w: Window) -> tuple[int, int] | None:
    """[lowest, highest + 1) input column any output column's taps read (None: none)."""
    return _touched(0, w.ow - 1, w.kw, w.sw, w.dw, w.pl, w.w)


def _touched(o_lo: int, o_hi: int, k: int, s: int, d: int, pad: int, size: int) -> tuple[int, int] | None:
    """[lowest, highest + 1) input index o * s - pad + t * d (o in [o_lo, o_hi], t < k) inside [0, size)."""
    lo, hi = None, None
    for t in range(k):
        a, b = _valid(t, d, pad, s, size, o_hi + 1)
        a = max(a, o_lo)
        if b <= a:
            continue
        first, last = a * s - pad + t * d, (b - 1) * s - pad + t * d
        lo = first if lo is None else min(lo, first)
        hi = last + 1 if hi is None else max(hi, last + 1)
    return None if lo is None else (lo, hi)


# ---- accesses of each instruction ----------------------------------------------------------
class Decoder:
    """Turns instructions into the memory accesses they make, with their reserved-field checks.
    Shared by the checker and the executor so both read the fields the same way."""

    def __init__(self, prog: ProgramData):
        self.prog = prog
        self.windows: dict[tuple[int, int], Window] = {}
        self.base = prog.dram_base
        self.fence = prog.window
        if self.fence is not None:
            lo, hi = self.fence
            for i, b in enumerate(prog.buffers):
                if b.addr < lo or b.addr + b.nbytes > hi:
                    raise PartitionFault(f"NPU program: buffer {i} ('{b.name}') at DRAM [{b.addr:#x}, "
                                         f"{b.addr + b.nbytes:#x}) lies outside its partition's window "
                                         f"[{lo:#x}, {hi:#x})", hint="the program's buffer table reaches another "
                                         "tenant's memory: recompile the model for this partition")

    def reset(self) -> None:
        self.windows.clear()

    def dram(self, buf: int, off: int, dtype: str, shape, strides, write: bool) -> Access:
        if buf >= len(self.prog.buffers):
            raise _Bad(f"buffer {buf} is not in the program's table of {len(self.prog.buffers)} buffers")
        b = self.prog.buffers[buf]
        lo = b.addr - self.base  # addresses in the image, which starts at the window's base
        a = Access("dram", 0, lo + off, dtype, tuple(shape), tuple(strides), write, (lo, lo + b.nbytes))
        if self.fence is not None:
            ext = a.extent()
            if ext is not None and (ext[0] < 0 or ext[1] > self.fence[1] - self.base):
                w0, w1 = self.fence
                raise _Fault(f"{'writes' if write else 'reads'} DRAM bytes [{ext[0] + w0:#x}, {ext[1] + w0:#x}) "
                             f"(buffer {buf} '{b.name}' at {b.addr:#x} + {off:#x}), outside its partition's "
                             f"window [{w0:#x}, {w1:#x})")
        return a

    def sram(self, core: int, addr: int, dtype: str, shape, strides, write: bool) -> Access:
        if addr == NONE:
            raise _Bad("a required scratchpad operand is absent")
        return Access("sram", core, addr, dtype, tuple(shape), tuple(strides), write, (0, self.prog.sram_bytes))

    def core_of(self, ins: Instr) -> int:
        if ins.core >= self.prog.cores:
            raise _Bad(f"core {ins.core} does not exist (the chip has {self.prog.cores})")
        return ins.core

    def accesses(self, ins: Instr) -> list[Access]:
        oc = ins.opcode
        if oc == BARRIER:
            if ins.core != isa.ALL_CORES or ins.aux:
                raise _Bad("a barrier runs on all cores and has no flags")
            self.reset()
            return []
        core = self.core_of(ins)
        f = ins.fields()
        if oc in (LOAD, STORE):
            dt = _raw(ins.aux)
            shape = _block(ins)
            strides = tuple(f[f"s{d}"] for d in range(4))
            pitches = (f["p0"], f["p1"], f["p2"], 1)
            _canonical_strides(shape, strides, "DRAM")
            _canonical_strides(shape[:3], pitches[:3], "SRAM")
            d = self.dram(f["buf"], f["off"], dt, shape, strides, oc == STORE)
            s = self.sram(core, f["sram"], dt, shape, pitches, oc == LOAD)
            return [d, s] if oc == LOAD else [s, d]
        if oc == COPY:
            dt = _raw(ins.aux)
            shape = _block(ins)
            ss = tuple(f[f"s{d}"] for d in range(4))
            ds = tuple(f[f"d{d}"] for d in range(4))
            _canonical_strides(shape, ss, "source")
            _canonical_strides(shape, ds, "destination")
            return [self.dram(f["sbuf"], f["soff"], dt, shape, ss, False),
                    self.dram(f["dbuf"], f["doff"], dt, shape, ds, True)]
        if oc == FILL:
            dt = _dt(ins.aux & 0xF)
            if ins.aux & ~0xF:
                raise _Bad("reserved bits of aux are set")
            shape = _block(ins)
            ds = tuple(f[f"d{d}"] for d in range(4))
            _canonical_strides(shape, ds, "destination")
            return [self.dram(f["buf"], f["off"], dt, shape, ds, True)]
        if oc == GATHER:
            dt, it = _raw(ins.aux & 0xF), _dt(ins.aux >> 4 & 0xF)
            if ins.aux & ~0xFF or it not in ("i32", "i64"):
                raise _Bad("a gather's indices are i32 or i64")
            o, j, n, rows = f["outer"], f["count"], f["inner"], f["rows"]
            if o == 1 and (f["sstride"] or f["dstride"]):
                raise _Bad("outer strides of a single outer row are reserved (must be 0)")
            return [self.dram(f["ibuf"], f["ioff"], it, (j,), (1,), False),
                    self.dram(f["sbuf"], f["soff"], dt, (o, rows, n), (f["sstride"], n, 1), False),
                    self.dram(f["dbuf"], f["doff"], dt, (o, j, n), (f["dstride"], n, 1), True)]
        if oc == MATMUL:
            return self._matmul(ins, core, f)
        if oc == VECTOR:
            return self._vector(ins, core, f)
        if oc == CONFIG:
            if ins.aux & ~1:
                raise _Bad("reserved bits of aux are set")
            w = Window.of(ins)
            if ins.aux == 0 and (w.pb or w.pr or w.flags):
                raise _Bad("the matrix feeder's window reads no bottom/right pads or flags (reserved: must be 0)")
            self.windows[(core, ins.aux)] = w
            return []
        raise _Bad(f"unknown opcode {oc}")

    def _matmul(self, ins: Instr, core: int, f: dict) -> list[Access]:
        if ins.aux & ~0x3F:
            raise _Bad("reserved bits of aux are set")
        dt = _dt(ins.aux & 0xF)
        if dt not in isa.FLOAT_DTYPES:
            raise _Bad(f"the array multiplies float operands, not {dt}")
        m, n, k, g = f["m"], f["n"], f["k"], f["g"]
        acc = self.sram(core, f["acc"], "f32", (g, m, n), (f["acc_sg"], f["acc_sm"], f["acc_sn"]), True)
        b = self.sram(core, f["b"], dt, (g, k, n), (f["b_sg"], f["b_sk"], f["b_sn"]), False)
        out = [b]
        if ins.aux & ACCUMULATE:
            out.append(_read(acc))
        if g == 1 and (f["b_sg"] or f["acc_sg"] or (not ins.aux & WINDOW and f["a_sg"])):
            raise _Bad("group strides of a single group are reserved (must be 0)")
        for name, size, stride in (("m", m, f["acc_sm"]), ("n", n, f["acc_sn"])):
            if size == 1 and stride:
                raise _Bad(f"the accumulator stride along {name} (size 1) is reserved (must be 0)")
        if ins.aux & WINDOW:
            w = self.windows.get((core, 0))
            if w is None:
                raise _Bad("a window MATMUL before any CONFIG of the matrix feeder since the last barrier")
            if g != 1:
                raise _Bad("a window MATMUL has one group")
            taps = w.kh * w.kw
            if k % taps:
                raise _Bad(f"K = {k} is not a whole number of channels of {taps} taps")
            p0, r0, rows = f["a_sm"], f["a_sk"], f["a_sg"]
            if p0 < 0 or m < 0 or p0 + m > 1 << 40:
                raise _Bad("bad pixel range")
            img0, imgs, ylo, yhi = _window_rows(w, p0, m)
            if yhi > ylo and (ylo < r0 or yhi > r0 + rows):
                raise _Bad(f"the window reads input rows [{ylo}, {yhi}) but the patch holds rows [{r0}, {r0 + rows})")
            c = k // taps
            cols = _window_cols(w)
            if yhi > ylo and cols is not None:
                xlo, xhi = cols
                # the patch elements the taps read: those rows and columns of each image and channel
                box = self.sram(core, f["a"] + ((ylo - r0) * w.w + xlo) * DTYPE_BYTES[dt], dt,
                                (imgs, c, yhi - ylo, xhi - xlo), (c * rows * w.w, rows * w.w, w.w, 1), False)
                out.append(box)
        else:
            if m == 1 and f["a_sm"] or k == 1 and f["a_sk"] or g == 1 and f["a_sg"]:
                raise _Bad("an A stride of a dim of size 1 is reserved (must be 0)")
            out.append(self.sram(core, f["a"], dt, (g, m, k), (f["a_sg"], f["a_sm"], f["a_sk"]), False))
        if k == 1 and f["b_sk"] or n == 1 and f["b_sn"]:
            raise _Bad("a B stride of a dim of size 1 is reserved (must be 0)")
        out.append(acc)
        return out

    def _vector(self, ins: Instr, core: int, f: dict) -> list[Access]:
        if ins.aux >= len(isa.VFN_NAMES):
            raise _Bad(f"unknown vector function {ins.aux}")
        fn = isa.VFN_NAMES[ins.aux]
        shape = _block(ins)
        masks = [f["bcast"] >> (4 * i) & 0xF for i in range(5)]
        axes = f["bcast"] >> 20 & 0xF
        if f["bcast"] >> 24:
            raise _Bad("reserved bits of bcast are set")
        dtypes = [f["dtypes"] >> (4 * i) & 0xF for i in range(5)]
        if f["dtypes"] >> 20:
            raise _Bad("reserved bits of dtypes are set")
        spec = _VSPEC[fn]
        srcs = [f["src0"], f["src1"], f["src2"], f["src3"]]
        n_src = spec.sources(f)
        for i in range(4):
            if i >= n_src and i not in spec.optional:
                if srcs[i] != NONE or masks[i + 1] or dtypes[i + 1]:
                    raise _Bad(f"{fn} reads no operand {i} (reserved: address none, mask and dtype 0)")
            elif i in spec.optional and srcs[i] == NONE and (masks[i + 1] or dtypes[i + 1]):
                raise _Bad(f"operand {i} of {fn} is absent: its mask and dtype are reserved (must be 0)")
        for name in ("imm0", "imm1", "imm2"):
            if name not in spec.imms and f[name]:
                raise _Bad(f"{fn} takes no {name} (reserved: must be 0)")
        if "arg" not in spec.imms and f["arg"]:
            raise _Bad(f"{fn} takes no arg (reserved: must be 0)")
        if not spec.axes and axes:
            raise _Bad(f"{fn} reduces over no axes (reserved: must be 0)")
        for i, m in enumerate(masks):
            for d in range(4):
                if m >> d & 1 and shape[d] == 1:
                    raise _Bad(f"operand {i - 1 if i else 'dst'} broadcasts over dim {d}, of size 1 (reserved: must "
                               "be 0)")
        names = [_dt(x) for x in dtypes]
        for i in range(5):
            if (i == 0 or srcs[i - 1] != NONE) and names[i] not in isa.FLOAT_DTYPES and not (
                    fn == "attn_step" and i == 2 and names[i] == "u8"):  # a boolean mask
                raise _Bad(f"the vector unit computes on float operands, not {names[i]}")
        return spec.accesses(self, ins, core, f, shape, masks, axes, names, srcs)


def _masked(shape, mask) -> tuple[int, ...]:
    return tuple(1 if mask >> d & 1 else n for d, n in enumerate(shape))


def _dense(shape) -> tuple[int, ...]:
    out, s = [], 1
    for n in reversed(shape):
        out.append(s if n > 1 else 0)
        s *= n
    return tuple(reversed(out))


@dataclass(frozen=True)
class _VSpec:
    """How a vector function reads and writes: its operand count, the immediates it takes."""

    kind: str  # elementwise | reduce | norm | softmax | window | lrn | attn_step | attn_final
    n: int = 1
    optional: frozenset = frozenset()
    imms: frozenset = frozenset()
    axes: bool = False

    def sources(self, f) -> int:
        return self.n

    def accesses(self, dec: Decoder, ins, core, f, shape, masks, axes, dt, srcs) -> list[Access]:
        def sram(i, addr, shp, write=False):
            return dec.sram(core, addr, dt[i], shp, _dense(shp), write)

        k = self.kind
        if k == "elementwise":
            dst_shape = _masked(shape, masks[0])
            ins_ = [sram(i + 1, srcs[i], _masked(shape, masks[i + 1])) for i in range(self.n)]
            for a in ins_:
                if any(x != 1 and x != y for x, y in zip(a.shape, dst_shape)):
                    raise _Bad(f"an operand of shape {a.shape} does not broadcast to the destination's {dst_shape}")
            return ins_ + [sram(0, f["dst"], dst_shape, True)]
        if k in ("reduce", "softmax", "norm", "lrn"):
            if not axes:
                raise _Bad("no axis to reduce or normalise over")
            if masks[0] or masks[1]:
                raise _Bad("the tile operand and destination of a reduction are not broadcast")
            if k == "lrn" and bin(axes).count("1") != 1:
                raise _Bad("LRN runs across exactly one dim")
            if isa.VFN_NAMES[ins.aux] == "hardmax" and bin(axes).count("1") != 1:
                raise _Bad("hardmax runs along exactly one dim")
            out = [sram(1, srcs[0], shape)]
            for i in range(1, 4):
                if srcs[i] != NONE and (i < self.n or i in self.optional):
                    opnd = _masked(shape, masks[i + 1])
                    if any(x != 1 for d, x in enumerate(opnd) if not axes >> d & 1):
                        raise _Bad("a normalisation's scale and shift vary only along the normalised dims")
                    out.append(sram(i + 1, srcs[i], opnd))
            dst = tuple(1 if axes >> d & 1 else n for d, n in enumerate(shape)) if k == "reduce" else shape
            return out + [sram(0, f["dst"], dst, True)]
        if k == "window":
            w = dec.windows.get((core, 1))
            if w is None:
                raise _Bad("a window function before any CONFIG of the vector unit since the last barrier")
            fn = isa.VFN_NAMES[ins.aux]
            if any(masks):
                raise _Bad("window functions do not broadcast")
            if (shape[2], shape[3]) != (w.oh, w.ow):
                raise _Bad(f"the tile's output planes {shape[2]}x{shape[3]} are not the window's {w.oh}x{w.ow}")
            if fn != "avgpool" and (w.flags or w.pb or w.pr):
                raise _Bad(f"{fn} reads no bottom/right pads or flags (reserved: must be 0)")
            if fn == "avgpool" and not w.flags and (w.pb or w.pr):
                raise _Bad("avgpool without pads in the count reads no bottom/right pads (reserved: must be 0)")
            if fn in ("maxpool", "avgpool") and not w.flags:
                for dim, k, d, pad, s, size, out in (("row", w.kh, w.dh, w.pt, w.sh, w.h, w.oh),
                                                     ("column", w.kw, w.dw, w.pl, w.sw, w.w, w.ow)):
                    for t in (0, k - 1):  # (taps in between read inside when the first and last do)
                        lo, hi = _valid(t, d, pad, s, size, out)
                        if hi <= lo:
                            raise _Bad(f"{dim} tap {t} of the window never reads the input, so it changes "
                                       "nothing (reserved: the window ends at its last tap that reads)")
            planes = (shape[0], shape[1], w.h, w.w)
            out = [sram(1, srcs[0], planes)]
            mult = 1
            if fn == "dwconv":
                mult = f["arg"]
                if mult < 1:
                    raise _Bad("a depthwise conv has a channel multiplier of at least 1")
                out.append(sram(2, srcs[1], (shape[1], mult, w.kh * w.kw)))
            elif f["arg"]:
                raise _Bad(f"{fn} takes no arg (reserved: must be 0)")
            return out + [sram(0, f["dst"], (shape[0], shape[1] * mult, w.oh, w.ow), True)]
        if k == "attn_step":
            tq, tk, hdv, one = shape
            if one != 1 or masks[0] or masks[1] or masks[3] or masks[4] or axes:
                raise _Bad("attention tiles are tq x tk x hdv (reserved fields must be 0)")
            if f["arg"] & ~1:
                raise _Bad("reserved bits of arg are set")
            if dt[1] != "f32" or dt[3] != "f32" or dt[4] != "f32":
                raise _Bad("scores, running max/sum and the output accumulator are float32")
            reads = [sram(1, srcs[0], (tq, tk))]
            if srcs[1] != NONE:
                if masks[2] & ~3:
                    raise _Bad("a mask tile broadcasts only over query rows or keys")
                reads.append(sram(2, srcs[1], _masked((tq, tk, 1, 1), masks[2])[:2]))
            state, acc = sram(3, srcs[2], (2, tq)), sram(4, srcs[3], (tq, hdv))
            first = f["arg"] & 1
            if not first:
                reads += [state, acc]
            return reads + [_w(state), _w(acc), sram(0, f["dst"], (tq, tk), True)]
        if k == "attn_final":
            tq, hdv, one, one2 = shape
            if one != 1 or one2 != 1 or any(masks) or axes:
                raise _Bad("the attention output tile is tq x hdv (reserved fields must be 0)")
            if dt[1] != "f32" or dt[2] != "f32":
                raise _Bad("the output accumulator and running sum are float32")
            return [sram(1, srcs[0], (tq, hdv)), sram(2, srcs[1], (2, tq)), sram(0, f["dst"], (tq, hdv), True)]
        raise AssertionError(k)


def _w(a: Access) -> Access:
    return Access(a.space, a.core, a.addr, a.dtype, a.shape, a.strides, True, a.region)


def _read(a: Access) -> Access:
    return Access(a.space, a.core, a.addr, a.dtype, a.shape, a.strides, False, a.region)


_ELEMENTWISE_ARITY = {name: n for name, (_, n, _) in isa.VECTOR_FNS.items()}
_IMMS = {"leakyrelu": {"imm0"}, "clip": {"imm0", "imm1"}, "elu": {"imm0"}, "hardsigmoid": {"imm0", "imm1"},
         "scale": {"imm0", "imm1"}, "axpy": {"imm0"}, "selu": {"imm0", "imm1"}, "celu": {"imm0"},
         "thresholdedrelu": {"imm0"}, "shrink": {"imm0", "imm1"}, "swish": {"imm0"}}
_VSPEC: dict[str, _VSpec] = {}
for _name in vfn.ELEMENTWISE:
    _VSPEC[_name] = _VSpec("elementwise", _ELEMENTWISE_ARITY[_name], imms=frozenset(_IMMS.get(_name, ())))
_VSPEC.update({
    "softmax": _VSpec("softmax", 1, axes=True),
    "layernorm": _VSpec("norm", 2, optional=frozenset({2}), imms=frozenset({"imm0"}), axes=True),
    "rmsnorm": _VSpec("norm", 2, imms=frozenset({"imm0"}), axes=True),
    "reduce_sum": _VSpec("reduce", 1, axes=True), "reduce_mean": _VSpec("reduce", 1, axes=True),
    "reduce_max": _VSpec("reduce", 1, axes=True), "reduce_min": _VSpec("reduce", 1, axes=True),
    "reduce_rstd": _VSpec("reduce", 1, imms=frozenset({"imm0"}), axes=True),
    "logsoftmax": _VSpec("softmax", 1, axes=True), "hardmax": _VSpec("softmax", 1, axes=True),
    "maxpool": _VSpec("window", 1), "avgpool": _VSpec("window", 1),
    "dwconv": _VSpec("window", 2, imms=frozenset({"arg"})),
    "lrn": _VSpec("lrn", 1, imms=frozenset({"imm0", "imm1", "imm2", "arg"}), axes=True),
    # reads the score tile (src0), a mask tile (src1, optional), the running max and sum (src2) and the
    # output accumulator (src3)
    "attn_step": _VSpec("attn_step", 4, optional=frozenset({1}), imms=frozenset({"imm0", "arg"})),
    "attn_final": _VSpec("attn_final", 2),
})
assert set(_VSPEC) == set(isa.VFN_NAMES), set(isa.VFN_NAMES) ^ set(_VSPEC)


# ---- the static checker ---------------------------------------------------------------------
def check(prog: ProgramData) -> None:
    """Bounds, validity, write protection and reserved fields of every instruction, in program
    order, on validity maps (no data). Raises ExecutionError at the first violation."""
    dram_size = prog.dram_bytes
    for i, b in enumerate(prog.buffers):
        if b.addr < 0 or b.nbytes < 0 or b.role not in ROLES:
            raise ExecutionError(f"NPU program: buffer {i} ('{b.name}') is malformed")
    valid = np.zeros(dram_size, bool)
    protect = np.zeros(dram_size, bool)
    dec = Decoder(prog)  # first: it refuses a buffer outside the partition's window
    for bi, off, data in prog.init:
        b = prog.buffers[bi]
        if off < 0 or off + len(data) > b.nbytes:
            raise ExecutionError(f"NPU program: the initial contents of buffer {bi} ('{b.name}') overflow it")
        at = prog.image_addr(bi) + off
        valid[at: at + len(data)] = True
        if b.role == "const":
            protect[at: at + len(data)] = True
    for bind in prog.inputs:
        a = _binding_access(dec, bind, "input")
        bv = byte_view(valid, a.addr, a.esize, a.shape, a.strides)
        bv[...] = True
        byte_view(protect, a.addr, a.esize, a.shape, a.strides)[...] = True
    sram_valid = [np.zeros(prog.sram_bytes, bool) for _ in range(prog.cores)]
    for i, ins in enumerate(prog.instrs):
        try:
            accs = dec.accesses(ins)
            if ins.opcode == BARRIER:
                for v in sram_valid:
                    v[...] = False  # the scratchpad holds nothing across a barrier
                continue
            for a in accs:
                ext = a.extent()
                if ext is None:
                    continue
                lo, hi = ext
                if lo < a.region[0] or hi > a.region[1]:
                    where = "its buffer" if a.space == "dram" else "the scratchpad"
                    raise _Bad(f"{'writes' if a.write else 'reads'} bytes [{lo - a.region[0]}, {hi - a.region[0]}) "
                               f"outside {where} of {a.region[1] - a.region[0]} bytes")
                vmap = valid if a.space == "dram" else sram_valid[a.core]
                bv = byte_view(vmap, a.addr, a.esize, a.shape, a.strides)
                if a.write and not _injective(a, lo, hi):
                    raise _Bad("writes some bytes more than once (its destination's elements overlap)")
                if a.write:
                    if a.space == "dram" and byte_view(protect, a.addr, a.esize, a.shape, a.strides).any():
                        raise _Bad("writes over a weight or an input of the program")
                    bv[...] = True
                elif not bv.all():
                    bad = np.argwhere(~bv)[0]
                    addr = a.addr + int(sum(int(x) * s * a.esize for x, s in zip(bad[:-1], a.strides))) + int(bad[-1])
                    where = (f"byte {addr - a.region[0]} of buffer" if a.space == "dram" else
                             f"scratchpad byte {addr} of core {a.core},")
                    raise _Bad(f"reads {where} which nothing wrote before it")
        except _Bad as exc:
            raise _fail(prog, i, exc) from None
    for bind in prog.outputs:
        a = _binding_access(dec, bind, "output")
        if not byte_view(valid, a.addr, a.esize, a.shape, a.strides).all():
            raise ExecutionError(f"NPU program: output '{bind.name}' is not (entirely) written by the program",
                                 hint="the program is malformed")


def _injective(a: Access, lo: int, hi: int) -> bool:
    """Whether no two elements of an access share a byte (every write lands each byte once)."""
    n = math.prod(a.shape) * a.esize
    if n > hi - lo:
        return False
    strides = sorted((abs(s) * a.esize, k) for s, k in zip(a.strides, a.shape) if k > 1)
    span = a.esize
    for s, k in strides:  # nested without gaps: injective, no need to look at the bytes
        if s < span:
            break
        span = s * (k - 1) + span
    else:
        return True
    mark = np.zeros(hi - lo, bool)
    byte_view(mark, a.addr - lo, a.esize, a.shape, a.strides)[...] = True
    return int(mark.sum()) == n


def _binding_access(dec: Decoder, bind: Binding, what: str) -> Access:
    try:
        a = dec.dram(bind.buf, bind.off, bind.dtype, bind.shape, bind.strides, False)
    except _Bad as exc:
        raise ExecutionError(f"NPU program: {what} '{bind.name}': {exc}") from None
    ext = a.extent()
    if ext is not None and (ext[0] < a.region[0] or ext[1] > a.region[1]):
        raise ExecutionError(f"NPU program: {what} '{bind.name}' lies outside its buffer")
    return a


# ---- the semantics of instructions, on arrays -------------------------------------------------
def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == F32 else x.astype(F32)


def matmul_into(a: np.ndarray, b: np.ndarray, acc: np.ndarray, accumulate: bool) -> None:
    """acc (+)= a @ b in float32 (operands widened exactly; one BLAS call per group).

    The product is formed in the accumulator's orientation (as (b.T @ a.T).T when its rows are
    strided and its columns not), so storing or adding it streams through memory: numpy's
    `+=` between a row-major product and a column-major view measured 5x slower than the
    product itself. An operand strided in both of its last two dims is packed first (numpy's
    matmul would take a slow non-BLAS loop)."""
    a, b = _blasable(_f32(a)), _blasable(_f32(b))
    st = acc.strides
    if len(st) >= 2 and abs(st[-2]) < abs(st[-1]):
        x, y, dst = b.swapaxes(-1, -2), a.swapaxes(-1, -2), acc.swapaxes(-1, -2)
    else:
        x, y, dst = a, b, acc
    if not accumulate and dst.ndim == 2 and dst.flags.c_contiguous:
        np.matmul(x, y, out=dst)  # straight into the accumulator: no temporary to copy
    elif accumulate:
        dst += np.matmul(x, y)
    else:
        dst[...] = np.matmul(x, y)


def _blasable(x: np.ndarray) -> np.ndarray:
    e = x.itemsize
    if x.ndim >= 2 and x.strides[-1] != e and x.strides[-2] != e and x.shape[-1] > 1 and x.shape[-2] > 1:
        return np.ascontiguousarray(x)
    return x


class WindowCols:
    """How a window MATMUL's feeder builds A[m, k] (k = (channel, tap row, tap column), m = output
    pixels p0.. of the window's images; zero where a tap falls outside the image) from the patch
    elements it reads: `box`, input rows [ylo, ...) and columns [xlo, ...) of the images from p0's
    on (images, channels, rows, columns), or None when it reads none. Worked out once per
    instruction; the reference walk and the replay call the same object, so they build the same A."""

    _cache: dict = {}

    @classmethod
    def of(cls, w: "Window", p0: int, m: int, k: int, ylo: int, xlo: int) -> "WindowCols":
        key = (w, p0, m, k, ylo, xlo)
        hit = cls._cache.get(key)
        if hit is None:
            if len(cls._cache) > 4096:
                cls._cache.clear()
            hit = cls._cache[key] = cls(w, p0, m, k, ylo, xlo)
        return hit

    def __init__(self, w: "Window", p0: int, m: int, k: int, ylo: int, xlo: int):
        self.c, self.kh, self.kw, self.m, self.k = k // (w.kh * w.kw), w.kh, w.kw, m, k
        P = w.oh * w.ow
        img0 = p0 // P
        #: per image segment: (box image, pixels [lo, hi) of A, output rows [oh0, oh1), first pixel in
        #: them, taps [(i, j, dst rows, dst cols, src rows, src cols)])
        self.segments = []
        p = p0
        while p < p0 + m:
            img, rem = divmod(p, P)
            end = min(p0 + m, (img + 1) * P)
            oh0, oh1 = rem // w.ow, (end - 1 - img * P) // w.ow + 1
            taps = []
            for i in range(w.kh):
                ra, rb = _valid(i, w.dh, w.pt, w.sh, w.h, w.oh)
                ra, rb = max(ra, oh0), min(rb, oh1)
                if rb <= ra:
                    continue
                y0 = ra * w.sh - w.pt + i * w.dh - ylo
                for j in range(w.kw):
                    ca, cb = _valid(j, w.dw, w.pl, w.sw, w.w, w.ow)
                    if cb <= ca:
                        continue
                    x0 = ca * w.sw - w.pl + j * w.dw - xlo
                    taps.append((i, j, slice(ra - oh0, rb - oh0), slice(ca, cb),
                                 slice(y0, y0 + (rb - ra - 1) * w.sh + 1, w.sh),
                                 slice(x0, x0 + (cb - ca - 1) * w.sw + 1, w.sw)))
            self.segments.append((img - img0, p - p0, end - p0, oh0, oh1, rem - oh0 * w.ow, w.ow, taps))
            p = end

    def __call__(self, box: np.ndarray | None) -> np.ndarray:
        if box is not None and len(self.segments) == 1 and self.kh == self.kw == 1:
            img, lo, hi, oh0, oh1, first, ow, taps = self.segments[0]
            if len(taps) == 1:
                # one tap: A is the patch itself when each channel's pixels are one run of it
                _, _, dr, dc, sr, sc = taps[0]
                x = box[img][:, sr, sc]
                e = x.itemsize
                if x.shape[1:] == (oh1 - oh0, ow) and x.strides[2] == e and x.strides[1] == ow * e:
                    x = x[:, first // ow:, first % ow:]
                    return np.lib.stride_tricks.as_strided(x, (self.k, self.m), (x.strides[0], e),
                                                           writeable=False).T
        out = np.zeros((self.c, self.kh, self.kw, self.m), F32)
        if box is not None:
            for img, lo, hi, oh0, oh1, first, ow, taps in self.segments:
                whole = first == 0 and (hi - lo) == (oh1 - oh0) * ow
                # whole output rows: write the taps straight into A; else through the rows they cover
                rows = out[..., lo:hi].reshape(self.c, self.kh, self.kw, oh1 - oh0, ow) if whole else \
                    np.zeros((self.c, self.kh, self.kw, oh1 - oh0, ow), F32)
                x = box[img]
                for i, j, dr, dc, sr, sc in taps:
                    rows[:, i, j, dr, dc] = x[:, sr, sc]
                if not whole:
                    out[..., lo:hi] = rows.reshape(self.c, self.kh, self.kw, -1)[..., first: first + (hi - lo)]
        return out.reshape(self.k, self.m).T


def _valid(tap: int, dil: int, pad: int, stride: int, size: int, out: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose input index o * stride - pad + tap * dil lies in [0, size)."""
    lo = max(0, -((tap * dil - pad) // stride))
    hi = min(out, (size - 1 + pad - tap * dil) // stride + 1) if size - 1 + pad - tap * dil >= 0 else 0
    return lo, max(lo, hi)


def vector_result(fn: str, f: dict, srcs: list[np.ndarray], dst_shape, window: "Window | None") -> np.ndarray:
    """What a VECTOR computes (float32) from its source operands (all but attention's)."""
    kind = _VSPEC[fn].kind
    i0, i1, i2 = isa.bits_f32(f["imm0"]), isa.bits_f32(f["imm1"]), isa.bits_f32(f["imm2"])
    if kind == "elementwise":
        r = vfn.ELEMENTWISE[fn]([_f32(x) for x in srcs], i0, i1, i2)
        return np.broadcast_to(np.asarray(r, F32), dst_shape)
    if kind in ("reduce", "softmax", "norm", "lrn"):
        axes_mask = f["bcast"] >> 20 & 0xF
        axes = tuple(d for d in range(4) if axes_mask >> d & 1)
        x = _f32(srcs[0])
        if kind == "reduce":
            if fn == "reduce_rstd":
                return vfn.rstd(x, axes, i0)
            return {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max,
                    "reduce_min": np.min}[fn](x, axis=axes, keepdims=True)
        if kind == "softmax":
            if fn == "hardmax":
                return vfn.hardmax(x, axes)
            return vfn.logsoftmax(x, axes) if fn == "logsoftmax" else vfn.softmax(x, axes)
        if kind == "lrn":
            return vfn.lrn(x, axes[0], f["arg"], i0, i1, i2)
        gamma = _f32(srcs[1])
        if fn == "layernorm":
            return vfn.layernorm(x, axes, i0, gamma, _f32(srcs[2]) if len(srcs) > 2 else None)
        return vfn.rmsnorm(x, axes, i0, gamma)
    if kind == "window":
        return _window_fn(fn, srcs, window)
    if kind == "attn_final":
        return _f32(srcs[0]) / _f32(srcs[1])[1][:, None]
    raise AssertionError(kind)


def attn_step(f: dict, s: np.ndarray, mask: np.ndarray | None, state: np.ndarray | None, acc_in: np.ndarray | None,
              state_out: np.ndarray, acc_out: np.ndarray, dst: np.ndarray) -> None:
    """One score tile of online softmax: scale and mask S, update the running max and sum, rescale
    the output accumulator, write P (the probabilities) in place of S. The running sum adds P as
    written (rounded to the destination's dtype), the values the P·V matmul then reads: the output
    is divided by the sum of the weights it was actually made of."""
    scale = F32(isa.bits_f32(f["imm0"]))
    s = _f32(s) * scale
    if mask is not None:
        if mask.dtype == np.uint8:  # a boolean mask: False hides the key
            s = np.where(mask.astype(bool), s, F32(-np.inf))
        else:
            s = s + _f32(mask)
    if state is None:  # the first tile of a row block
        m_old = np.full(s.shape[0], -np.inf, F32)
        l_old = np.zeros(s.shape[0], F32)
        o_old = np.zeros(acc_out.shape, F32)
    else:
        m_old, l_old = _f32(state[0]), _f32(state[1])
        o_old = _f32(acc_in)
    with np.errstate(invalid="ignore"):
        m_new = np.maximum(m_old, s.max(axis=1))
        p = np.exp(s - m_new[:, None])
        corr = np.exp(m_old - m_new)
    corr = np.where(np.isneginf(m_old), F32(0), corr)
    dst[...] = p.astype(dst.dtype)
    l_new = l_old * corr + (p if dst.dtype == F32 else _f32(dst)).sum(axis=1)
    state_out[...] = np.stack([m_new, l_new]).astype(F32)
    acc_out[...] = o_old * corr[:, None]


def _window_fn(fn: str, srcs: list[np.ndarray], w: "Window") -> np.ndarray:
    x = _f32(srcs[0])  # (images, channels, h, w)
    fill = -np.inf if fn == "maxpool" else 0.0
    xp, pt, pl = _pad_planes(x, w, fill)
    taps = [(i, j) for i in range(w.kh) for j in range(w.kw)]
    if fn == "dwconv":
        wt = _f32(srcs[1])  # (channels, mult, taps)
        mult = wt.shape[1]
        out = np.zeros((x.shape[0], x.shape[1], mult, w.oh, w.ow), F32)
        for t, (i, j) in enumerate(taps):
            out += _tap(xp, w, i, j, pt, pl)[:, :, None] * wt[None, :, :, t, None, None]
        return out.reshape(x.shape[0], x.shape[1] * mult, w.oh, w.ow)
    acc = None
    for i, j in taps:
        win = _tap(xp, w, i, j, pt, pl)
        if acc is None:
            acc = np.array(win, F32)
        elif fn == "maxpool":
            np.maximum(acc, win, out=acc)
        else:
            acc += win
    return acc if fn == "maxpool" else acc / _pool_count(w)


def _pad_planes(x: np.ndarray, w: "Window", fill: float):
    """The planes padded so every tap of every output reads inside: (array, top pad, left pad)."""
    need_h = (w.oh - 1) * w.sh + (w.kh - 1) * w.dh + 1
    need_w = (w.ow - 1) * w.sw + (w.kw - 1) * w.dw + 1
    pt, pl = max(0, w.pt), max(0, w.pl)
    pb = max(0, need_h - w.pt - w.h)
    pr = max(0, need_w - w.pl - w.w)
    if pt or pl or pb or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    return x, pt, pl


def _tap(xp: np.ndarray, w: "Window", i: int, j: int, pt: int, pl: int) -> np.ndarray:
    y0 = i * w.dh - w.pt + pt
    x0 = j * w.dw - w.pl + pl
    return xp[:, :, y0: y0 + (w.oh - 1) * w.sh + 1: w.sh, x0: x0 + (w.ow - 1) * w.sw + 1: w.sw]


def _pool_count(w: "Window") -> np.ndarray:
    """How many taps of each output an average divides by: those inside the input, or with
    flags bit 0 those inside the input padded by the window's pads."""
    lo_y, hi_y, lo_x, hi_x = 0, w.h, 0, w.w
    if w.flags & 1:
        lo_y, hi_y, lo_x, hi_x = -w.pt, w.h + w.pb, -w.pl, w.w + w.pr
    oy = np.arange(w.oh)[:, None] * w.sh - w.pt + np.arange(w.kh)[None, :] * w.dh
    ox = np.arange(w.ow)[:, None] * w.sw - w.pl + np.arange(w.kw)[None, :] * w.dw
    cy = ((oy >= lo_y) & (oy < hi_y)).sum(1)
    cx = ((ox >= lo_x) & (ox < hi_x)).sum(1)
    return np.maximum(cy[:, None] * cx[None, :], 1).astype(F32)


def gather_rows(idx: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    rows = src.shape[1]
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -rows or idx.max() >= rows):
        bad = int(idx[(idx < -rows) | (idx >= rows)][0])
        raise _Bad(f"index {bad} is outside the {rows} rows of the table")
    dst[...] = src[:, np.where(idx < 0, idx + rows, idx), :]


# ---- one instruction at a time ----------------------------------------------------------------
class Machine:
    """The memory images of one device, and the reference walk: every instruction decoded and
    executed on them in program order."""

    def __init__(self, prog: ProgramData):
        self.prog = prog
        self.dec = Decoder(prog)  # first: it refuses a buffer outside the partition's window
        self.dram = np.zeros(prog.dram_bytes, np.uint8)
        for bi, off, data in prog.init:
            at = prog.image_addr(bi) + off
            self.dram[at: at + len(data)] = np.asarray(data, np.uint8)
        self.sram = [np.zeros(prog.sram_bytes, np.uint8) for _ in range(prog.cores)]

    def view(self, a: Access, writeable: bool = False) -> np.ndarray:
        mem = self.dram if a.space == "dram" else self.sram[a.core]
        return data_view(mem, a.addr, a.dtype, a.shape, a.strides, writeable)

    def load_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Write the program's inputs into DRAM where their bindings put them."""
        for bind in self.prog.inputs:
            x = feeds.get(bind.name)
            if x is None:
                raise ExecutionError(f"NPU program: input '{bind.name}' was not given")
            x = np.asarray(x)
            if tuple(x.shape) != tuple(bind.shape):
                raise ExecutionError(f"NPU program: input '{bind.name}' has shape {x.shape}, the program reads "
                                     f"{tuple(bind.shape)}")
            data_view(self.dram, self.prog.image_addr(bind.buf) + bind.off, bind.dtype, bind.shape, bind.strides)[...] = \
                x.astype(NP_DTYPES[bind.dtype], copy=False)

    def step(self, i: int) -> None:
        ins = self.prog.instrs[i]
        try:
            accs = self.dec.accesses(ins)
            execute(ins, accs, lambda a: self.view(a, a.write), self.dec)
        except _Bad as exc:
            raise _fail(self.prog, i, exc) from None
        except (ValueError, FloatingPointError, IndexError) as exc:
            raise _fail(self.prog, i, f"{type(exc).__name__}: {exc}") from None


def execute(ins: Instr, accs: list[Access], view, dec: Decoder) -> None:
    """Execute one (decoded) instruction; `view(access)` gives the array an access reads or writes."""
    oc = ins.opcode
    if oc in (LOAD, STORE, COPY):
        src, dst = accs
        view(dst)[...] = view(src)
    elif oc == FILL:
        (dst,) = accs
        view(dst)[...] = np.asarray(isa.bits_f32(ins.arg("value")), F32).astype(NP_DTYPES[dst.dtype])
    elif oc == GATHER:
        idx_a, src_a, dst_a = accs
        gather_rows(view(idx_a), view(src_a), view(dst_a))
    elif oc == MATMUL:
        op = matmul_operands(ins, accs, dec)
        a = op[1](view(op[0]) if op[0] is not None else None) if op[1] is not None else view(op[0])
        if op[1] is not None:
            a = a[None]
        matmul_into(a, view(op[2]), view(op[3]), bool(ins.aux & ACCUMULATE))
    elif oc == VECTOR:
        fn = isa.VFN_NAMES[ins.aux]
        f = ins.fields()
        if fn == "attn_step":
            reads, (state_w, acc_w, dst_w) = accs[:-3], accs[-3:]
            k = 0
            s = view(reads[k])
            k += 1
            mask = None
            if f["src1"] != NONE:
                mask = view(reads[k])
                k += 1
            state = view(reads[k]) if len(reads) > k else None
            acc_in = view(reads[k + 1]) if len(reads) > k + 1 else None
            attn_step(f, s, mask, state, acc_in, view(state_w), view(acc_w), view(dst_w))
            return
        dst = accs[-1]
        window = dec.windows.get((ins.core, 1)) if fn in isa.WINDOW_FNS else None
        r = vector_result(fn, f, [view(a) for a in accs[:-1]], dst.shape, window)
        view(dst)[...] = np.asarray(r).astype(NP_DTYPES[dst.dtype])


def matmul_operands(ins: Instr, accs: list[Access], dec: Decoder):
    """(A access or window box access or None, the window's WindowCols or None, B access, accumulator
    access), from the accesses Decoder.accesses gave: B, the accumulator read when accumulating, A
    (or the patch rows the window reads, if any), the accumulator write."""
    b, acc = accs[0], accs[-1]
    at = 2 if ins.aux & ACCUMULATE else 1
    a = accs[at] if len(accs) > at + 1 else None
    if ins.aux & WINDOW:
        w = dec.windows[(ins.core, 0)]
        f = ins.fields()
        _, _, ylo, _ = _window_rows(w, f["a_sm"], f["m"])
        cols = _window_cols(w)
        return a, WindowCols.of(w, f["a_sm"], f["m"], f["k"], ylo, cols[0] if cols else 0), b, acc
    return a, None, b, acc


# ---- the same walk, precompiled ---------------------------------------------------------------
class _Lazy:
    """A LOAD the replay does not perform while its block of SRAM can be read as a view of the DRAM
    it came from (no instruction wrote that DRAM since, none overwrote that SRAM)."""

    __slots__ = ("step", "dtype", "addr", "shape", "pitches", "src", "dram", "live")

    def __init__(self, step, dtype, addr, shape, pitches, src, dram):
        self.step, self.dtype, self.addr, self.shape, self.pitches = step, dtype, addr, shape, pitches
        self.src, self.dram = src, dram
        self.live = True

    def map(self, a: Access) -> np.ndarray | None:
        """The DRAM view of access `a` if it reads only elements of this block, else None (the DMA
        moved raw elements: the reader sees them as its own dtype of that size)."""
        if DTYPE_BYTES[a.dtype] != DTYPE_BYTES[self.dtype]:
            return None
        e = DTYPE_BYTES[self.dtype]
        delta, rem = divmod(a.addr - self.addr, e)
        if rem or delta < 0:
            return None
        dims = sorted((d for d in range(4) if self.shape[d] > 1), key=lambda d: -self.pitches[d])
        if any(self.pitches[d] <= 0 for d in dims):
            return None  # elements written over each other: not a view of the source
        start = [0, 0, 0, 0]
        for d in dims:
            start[d], delta = divmod(delta, self.pitches[d])
            if start[d] >= self.shape[d]:
                return None
        if delta:
            return None
        by_pitch = {self.pitches[d]: d for d in dims}
        used, strides = set(), []
        for n, s in zip(a.shape, a.strides):
            if n == 1:
                strides.append(0)
                continue
            d = by_pitch.get(s)
            if d is None or d in used or start[d] + n > self.shape[d]:
                return None
            used.add(d)
            strides.append(self.src.strides[d])
        base = self.src[start[0]:, start[1]:, start[2]:, start[3]:].view(NP_DTYPES[a.dtype])
        return np.lib.stride_tricks.as_strided(base, a.shape, tuple(strides), writeable=False)


class Replay:
    """The program as a list of closures over precomputed views of the memory images: what the
    instruction walk does, without decoding anything again or copying a tile the consumer can read
    where it came from. Each closure makes exactly the calls (same shapes, same operands) the walk
    makes, so the results are the same, bit for bit."""

    def __init__(self, m: Machine):
        self.m = m
        self.prog = m.prog
        self.steps: list[list] = []  # [instruction index, callable, enabled]
        self.owners = [[] for _ in range(self.prog.cores)]  # per core: [lo, hi, _Lazy | None], sorted
        self.lazies: list[_Lazy] = []
        #: per segment (between barriers), per core: the DRAM it reads and writes
        self._dram: list[dict[int, tuple[list[Access], list[Access]]]] = [{}]
        dec = Decoder(self.prog)
        for i, ins in enumerate(self.prog.instrs):
            try:
                self._plan(i, ins, dec)
            except _Bad as exc:
                raise _fail(self.prog, i, exc) from None
        self.segments = self._segments()

    # ---- ownership of scratchpad bytes ----
    def _materialize(self, lz: _Lazy) -> None:
        if lz.live:
            self.steps[lz.step][2] = True
            lz.live = False
            for own in self.owners:
                for seg in own:
                    if seg[2] is lz:
                        seg[2] = None

    def _claim(self, core: int, lo: int, hi: int, owner, dense: bool) -> None:
        own = self.owners[core]
        out = []
        for seg in own:
            a, b, o = seg
            if b <= lo or a >= hi:
                out.append(seg)
                continue
            if o is not None and not dense:
                self._materialize(o)  # a gappy write must not hide bytes of a block never copied
                o = None
            if a < lo:
                out.append([a, lo, o])
            if b > hi:
                out.append([hi, b, o])
        out.append([lo, hi, owner])
        out.sort(key=lambda s: s[0])
        self.owners[core] = out

    def _note_dram(self, a: Access) -> None:
        if a.space == "dram":
            reads, writes = self._dram[-1].setdefault(self._core, ([], []))
            (writes if a.write else reads).append(a)

    def _read(self, a: Access) -> np.ndarray:
        if a.space == "dram":
            self._note_dram(a)
            return self.m.view(a)
        ext = a.extent()
        if ext is None:
            return self.m.view(a)
        lo, hi = ext
        segs = [s for s in self.owners[a.core] if s[0] < hi and s[1] > lo]
        if len(segs) == 1 and segs[0][2] is not None and segs[0][0] <= lo and segs[0][1] >= hi:
            v = segs[0][2].map(a)
            if v is not None:
                return v
        for s in segs:
            if s[2] is not None:
                self._materialize(s[2])
        return self.m.view(a)

    def _write(self, a: Access) -> np.ndarray:
        ext = a.extent()
        self._note_dram(a)
        if ext is not None:
            if a.space == "dram":
                lo, hi = ext
                for lz in self.lazies:
                    if lz.live and lz.dram[0] < hi and lz.dram[1] > lo:
                        self._materialize(lz)
                self.lazies = [lz for lz in self.lazies if lz.live]
            else:
                self._claim(a.core, ext[0], ext[1], None, _dense_access(a))
        return self.m.view(a, True)

    # ---- one instruction ----
    def _plan(self, i: int, ins: Instr, dec: Decoder) -> None:
        accs = dec.accesses(ins)
        oc = ins.opcode
        self._core = ins.core
        if oc == BARRIER:
            self.owners = [[] for _ in range(self.prog.cores)]  # the scratchpad holds nothing across it
            for lz in self.lazies:
                lz.live = False
            self.lazies = []
            self.steps.append([i, None, False])  # a segment boundary
            self._dram.append({})
            return
        if oc == CONFIG:
            return
        if oc == LOAD:
            src, dst = accs
            self._note_dram(src)  # read by this core whenever the data is used
            sv, dv = self.m.view(src), self.m.view(dst, True)
            step = len(self.steps)
            self.steps.append([i, _copier(dv, sv), False])
            ext = dst.extent()
            if ext is None:
                return
            pitches = tuple(dst.strides)
            lz = _Lazy(step, dst.dtype, dst.addr, tuple(dst.shape), pitches, sv, src.extent())
            self._claim(dst.core, ext[0], ext[1], lz, _dense_access(dst))
            self.lazies.append(lz)
            return
        if oc in (STORE, COPY):
            src, dst = accs
            sv = self._read(src)
            dv = self._write(dst)
            self.steps.append([i, _copier(dv, sv), True])
            return
        if oc == FILL:
            (dst,) = accs
            dv = self._write(dst)
            value = np.asarray(isa.bits_f32(ins.arg("value")), F32).astype(NP_DTYPES[dst.dtype])
            self.steps.append([i, _filler(dv, value), True])
            return
        if oc == GATHER:
            idx_a, src_a, dst_a = accs
            iv, sv = self._read(idx_a), self._read(src_a)
            dv = self._write(dst_a)
            self.steps.append([i, lambda iv=iv, sv=sv, dv=dv: gather_rows(iv, sv, dv), True])
            return
        if oc == MATMUL:
            a, win, b, acc = matmul_operands(ins, accs, dec)
            av = self._read(a) if a is not None else None
            bv = self._read(b)
            if ins.aux & ACCUMULATE:
                self._read(accs[1])
            accv = self._write(acc)
            accumulate = bool(ins.aux & ACCUMULATE)
            if win is not None:
                def f(av=av, bv=bv, accv=accv, cols=win, accumulate=accumulate):
                    matmul_into(cols(av)[None], bv, accv, accumulate)
            else:
                def f(av=av, bv=bv, accv=accv, accumulate=accumulate):
                    matmul_into(av, bv, accv, accumulate)
            self.steps.append([i, f, True])
            return
        if oc == VECTOR:
            fn = isa.VFN_NAMES[ins.aux]
            fields = ins.fields()
            if fn == "attn_step":
                reads, writes = accs[:-3], accs[-3:]
                rv = [self._read(r) for r in reads]
                wv = [self._write(w) for w in writes]
                k = 1
                mask = None
                if fields["src1"] != NONE:
                    mask = rv[k]
                    k += 1
                state = rv[k] if len(rv) > k else None
                acc_in = rv[k + 1] if len(rv) > k + 1 else None
                self.steps.append([i, lambda s=rv[0], mask=mask, state=state, acc_in=acc_in, wv=wv, f=fields:
                                   attn_step(f, s, mask, state, acc_in, *wv), True])
                return
            srcs = [self._read(a) for a in accs[:-1]]
            dst = accs[-1]
            dv = self._write(dst)
            window = dec.windows.get((ins.core, 1)) if fn in isa.WINDOW_FNS else None
            out_dt = NP_DTYPES[dst.dtype]
            if fn in vfn.INTO and out_dt == F32 and all(v.dtype == F32 for v in srcs) and \
                    np.broadcast_shapes(*(v.shape for v in srcs)) == dv.shape:
                # what vector_result computes, with no temporaries
                self.steps.append([i, lambda into=vfn.INTO[fn], srcs=srcs, dv=dv: into(srcs, dv), True])
                return

            def g(fn=fn, f=fields, srcs=srcs, dv=dv, window=window, out_dt=out_dt):
                dv[...] = np.asarray(vector_result(fn, f, srcs, dv.shape, window)).astype(out_dt)
            self.steps.append([i, g, True])
            return
        raise _Bad(f"unknown opcode {oc}")

    def _segments(self) -> list[tuple[list[tuple[int, object]], list[list[tuple[int, object]]] | None]]:
        """Per segment: its steps in program order, and per core its own steps when the cores'
        steps may run at the same time (no core writes DRAM another core of the segment reads or
        writes: checked byte by byte), else None."""
        out, seg, k = [], [], 0
        for i, f, on in self.steps:
            if f is None:
                out.append(self._split(seg, self._dram[k]))
                seg, k = [], k + 1
            elif on:
                seg.append((i, f))
        out.append(self._split(seg, self._dram[k]))
        return out

    def _split(self, seg, dram):
        instrs = self.prog.instrs
        cores = sorted({instrs[i].core for i, _ in seg})
        if len(cores) < 2 or not _disjoint(dram, self.prog.dram_bytes):
            return seg, None
        return seg, [[(i, f) for i, f in seg if instrs[i].core == c] for c in cores]

    def run(self, pool=None) -> None:
        for seg, chains in self.segments:
            if pool is not None and chains is not None:
                errors = [e for e in pool.map(self._run_chain, chains) if e is not None]
                if errors:
                    raise min(errors, key=lambda e: e[0])[1]
            else:
                err = self._run_chain(seg)
                if err is not None:
                    raise err[1]

    def _run_chain(self, chain) -> tuple[int, Exception] | None:
        i = -1
        try:
            for i, f in chain:
                f()
        except _Bad as exc:
            return i, _fail(self.prog, i, exc)
        except (ValueError, FloatingPointError, IndexError) as exc:
            return i, _fail(self.prog, i, f"{type(exc).__name__}: {exc}")
        return None


def _disjoint(dram: dict[int, tuple[list[Access], list[Access]]], size: int) -> bool:
    """Whether no core writes a DRAM byte another core reads or writes."""
    spans = [a.extent() for reads, writes in dram.values() for a in writes]
    spans = [s for s in spans if s is not None]
    if not spans:
        return True
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    owner = np.full(hi - lo, -1, np.int16)
    for core, (reads, writes) in dram.items():
        for a in writes:
            if a.extent() is None:
                continue
            v = byte_view(owner, a.addr - lo, a.esize, a.shape, a.strides)
            if ((v != -1) & (v != core)).any():
                return False
            v[...] = core
    for core, (reads, writes) in dram.items():
        for a in reads:
            ext = a.extent()
            if ext is None or ext[1] <= lo or ext[0] >= hi:
                continue
            if a.addr < lo or ext[1] > hi or ext[0] < lo:
                # partly outside the written span: look only at the part inside
                v = _clipped_owner(owner, lo, a)
            else:
                v = byte_view(owner, a.addr - lo, a.esize, a.shape, a.strides)
            if ((v != -1) & (v != core)).any():
                return False
    return True


def _clipped_owner(owner: np.ndarray, lo: int, a: Access) -> np.ndarray:
    """The owners of the bytes of access `a` that lie inside owner's span (which starts at `lo`)."""
    full = np.full(a.extent()[1] - a.extent()[0], -1, np.int16)
    start, end = max(lo, a.extent()[0]), min(lo + len(owner), a.extent()[1])
    full[start - a.extent()[0]: end - a.extent()[0]] = owner[start - lo: end - lo]
    return byte_view(full, a.addr - a.extent()[0], a.esize, a.shape, a.strides)


def _dense_access(a: Access) -> bool:
    ext = a.extent()
    return ext is None or ext[1] - ext[0] == math.prod(a.shape) * a.esize


def _copier(dv, sv):
    def f():
        dv[...] = sv
    return f


def _filler(dv, value):
    def f():
        dv[...] = value
    return f


# ---- the simulator ----------------------------------------------------------------------------
_POOL: list = [None, 0]


def _pool():
    """A pool of KC_NPU_THREADS host threads (see blas.py) running the chip's cores side by side,
    or None for one thread. Every BLAS call runs on one thread, so how many threads the host uses
    changes nothing in the results."""
    from concurrent.futures import ThreadPoolExecutor

    from kcompiler.backends.npu.blas import host_threads

    n = host_threads()
    if n <= 1:
        return None
    if _POOL[0] is None or _POOL[1] != n:
        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=False)
        _POOL[0], _POOL[1] = ThreadPoolExecutor(n, thread_name_prefix="kc-npu"), n
    return _POOL[0]


class Simulator:
    """Runs one program on its own memory images (kept between runs; weights are written once).
    `exact` decodes and executes every instruction on every run (the reference walk); otherwise the
    program runs as its Replay, which computes the same values bit for bit."""

    def __init__(self, prog: ProgramData, exact: bool = False):
        self.prog = prog
        self.exact = exact
        self._machine: Machine | None = None
        self._replay: Replay | None = None
        self._checked = False

    def invalidate(self) -> None:
        """Forget the checks, the replay and the memory images (after the program was changed)."""
        self._machine = None
        self._replay = None
        self._checked = False

    def machine(self) -> Machine:
        if not self._checked:
            check(self.prog)
            self._checked = True
        if self._machine is None:
            self._machine = Machine(self.prog)
        return self._machine

    def replay(self) -> Replay:
        if self._replay is None:
            self._replay = Replay(self.machine())
        return self._replay

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.machine()
        rp = None if self.exact else self.replay()
        m.load_inputs(feeds)
        if rp is not None:
            rp.run(_pool())
        else:
            m.dec.reset()
            for i in range(len(self.prog.instrs)):
                m.step(i)
        out = {}
        for bind in self.prog.outputs:
            out[bind.name] = np.array(data_view(m.dram, self.prog.image_addr(bind.buf) + bind.off, bind.dtype,
                                                bind.shape, bind.strides,
                                                writeable=False))
        return out
