"""The decoder: an instruction's fields turned into the memory accesses it makes, with the
reserved-field checks. The checker, the reference walk and the Replay's plan all decode through it,
so they read the fields the same way; it also holds the partition fence on DRAM."""

from __future__ import annotations

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.isa import (ACCUMULATE, BARRIER, CONFIG, COPY, DTYPE_BYTES, FILL, GATHER, LOAD, MATMUL,
                                        NONE, STORE, VECTOR, WINDOW, Instr)
from kcompiler.backends.npu.sim.data import ProgramData
from kcompiler.backends.npu.sim.faults import _Bad, _Fault
from kcompiler.backends.npu.sim.lowbit import LOWBIT_FNS, lowbit_accesses
from kcompiler.backends.npu.sim.maskvec import MASK_FNS, check_dtypes
from kcompiler.backends.npu.sim.memory import Access, _read
from kcompiler.backends.npu.sim.intvec import RANGE
from kcompiler.backends.npu.sim.vector_spec import _VSPEC, INT_DTYPE_RULES
from kcompiler.backends.npu.sim.window import Window, _window_cols, _window_rows, reads_pad
from kcompiler.errors import PartitionFault


def _dt(code: int) -> str:
    """The dtype name of a dtype code."""
    if code >= len(isa.DTYPES):
        raise _Bad(f"unknown dtype code {code}")
    return isa.DTYPES[code]


def _raw(code: int) -> str:
    """The raw element type a DMA of size code `code` moves."""
    if code >= len(isa.ESIZES):
        raise _Bad(f"unknown element size code {code}")
    return isa.RAW[isa.ESIZES[code]]


def _block(ins: Instr, names=("n0", "n1", "n2", "n3")) -> tuple[int, ...]:
    """The block shape an instruction's size fields give."""
    return tuple(ins.arg(n) for n in names)


def _canonical_strides(shape, strides, what: str) -> None:
    """A dim of size 1 has stride 0 (the field is reserved)."""
    for d, (n, s) in enumerate(zip(shape, strides)):
        if n == 1 and s != 0:
            raise _Bad(f"{what} stride of dim {d} is {s}, but the dim has size 1 (reserved: must be 0)")


def _check_int_dtypes(fn: str, f: dict, names: list[str], srcs: list[int]) -> None:
    """An integer-datapath VECTOR's operand dtypes (INT_DTYPE_RULES), the zero point's dtype that of
    the quantised side, and requant's zero point immediate an integer in the output's range."""
    rule = INT_DTYPE_RULES[fn]
    for i, allowed in enumerate(rule):
        if (i == 0 or srcs[i - 1] != NONE) and names[i] not in allowed:
            raise _Bad(f"operand {i - 1 if i else 'dst'} of {fn} is {names[i]}, not one of {allowed}")
    if fn in ("requant", "requant_f32"):
        zp = isa.bits_f32(f["imm0"])
        lo, hi = RANGE[names[0]]
        if not (zp == int(zp) and lo <= zp <= hi):
            raise _Bad(f"an output zero point of {zp} is not an integer of {names[0]}")
    if fn == "requant":
        r = isa.bits_f32(f["imm1"])
        if not (r == int(r) and 1 <= r <= 62):
            raise _Bad(f"a requantisation shift of {r} bits (an integer 1..62)")


class Decoder:
    """Turns instructions into the memory accesses they make, with their reserved-field checks.
    Shared by the checker and the executor so both read the fields the same way."""

    def __init__(self, prog: ProgramData):
        self.prog = prog
        self.windows: dict[tuple[int, int], Window] = {}
        #: per core, the matrix feeder's zero-point registers (A's, B's) as raw bytes (CONFIG unit 2)
        self.zero_points: dict[int, tuple[int, int]] = {}
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
        self.zero_points.clear()

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
            if dt not in DTYPE_BYTES:
                raise _Bad(f"a fill writes whole-byte elements, not {dt}")
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
            if ins.aux == 2:  # the feeder's zero-point registers: flags only
                f = ins.fields()
                if any(v for k, v in f.items() if k != "flags") or f["flags"] >> 16:
                    raise _Bad("a zero-point CONFIG holds two bytes in flags bits 0-15 (every other field "
                               "reserved: must be 0)")
                self.zero_points[core] = (f["flags"] & 0xFF, f["flags"] >> 8 & 0xFF)
                return []
            if ins.aux & ~1:
                raise _Bad("reserved bits of aux are set")
            w = Window.of(ins)
            if ins.aux == 0 and (w.pb or w.pr or w.flags & ~(0xFF << isa.PAD_SHIFT)):
                raise _Bad("the matrix feeder's window reads no bottom/right pads or flags but its pad byte "
                           "(reserved: must be 0)")
            if ins.aux == 1 and w.flags & ~1:
                raise _Bad(f"unknown window flags {w.flags:#x}")
            self.windows[(core, ins.aux)] = w
            return []
        raise _Bad(f"unknown opcode {oc}")

    def _matmul(self, ins: Instr, core: int, f: dict) -> list[Access]:
        if ins.aux & ~(0x3F | isa.ZERO_POINTS | 0xF << isa.B_DTYPE_SHIFT):
            raise _Bad("reserved bits of aux are set")
        dt = _dt(ins.aux & 0xF)
        integer = dt in isa.INT_DTYPES
        if dt not in isa.ARRAY_DTYPES and not integer:
            raise _Bad(f"the array multiplies float, FP8 or i8/u8 operands, not {dt}")
        bdt = _dt(ins.aux >> isa.B_DTYPE_SHIFT & 0xF) if integer else dt
        if integer and bdt not in isa.INT_DTYPES:
            raise _Bad(f"an integer MATMUL's B is i8 or u8, not {bdt}")
        if not integer and ins.aux >> isa.B_DTYPE_SHIFT:
            raise _Bad("a float MATMUL's B has A's dtype (aux bits 8-11 reserved: must be 0)")
        if ins.aux & isa.ZERO_POINTS and (not integer or ins.aux & WINDOW or core not in self.zero_points):
            raise _Bad("a MATMUL subtracting zero points is a plain integer one after a zero-point CONFIG of its "
                       "core since the last barrier")
        m, n, k, g = f["m"], f["n"], f["k"], f["g"]
        acc = self.sram(core, f["acc"], "i32" if integer else "f32", (g, m, n),
                        (f["acc_sg"], f["acc_sm"], f["acc_sn"]), True)
        b = self.sram(core, f["b"], bdt, (g, k, n), (f["b_sg"], f["b_sk"], f["b_sn"]), False)
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
            if w.flags >> isa.PAD_SHIFT and not (integer and reads_pad(w)):
                raise _Bad("the feeder's pad byte is reserved (must be 0) unless an integer window reads padding")
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
        if fn in LOWBIT_FNS:  # the quantisation functions read and write integer and FP8 operands
            return lowbit_accesses(self, ins, core, f, shape, masks, axes, names, srcs)
        if fn in INT_DTYPE_RULES:
            _check_int_dtypes(fn, f, names, srcs)
            return spec.accesses(self, ins, core, f, shape, masks, axes, names, srcs)
        if fn in MASK_FNS:  # the exact functions compute in their operands' own dtypes
            check_dtypes(fn, f, names, n_src)
            return spec.accesses(self, ins, core, f, shape, masks, axes, names, srcs)
        if fn == "maxpool" and names[0] in ("i8", "u8"):  # a window's max of int8/uint8 bytes is exact
            if names[1] != names[0]:
                raise _Bad(f"an {names[0]} maxpool reads {names[0]}, not {names[1]}")
            return spec.accesses(self, ins, core, f, shape, masks, axes, names, srcs)
        for i in range(5):
            if (i == 0 or srcs[i - 1] != NONE) and names[i] not in isa.FLOAT_DTYPES and not (
                    fn == "attn_step" and i == 2 and names[i] == "u8") and not (  # a boolean mask
                    fn == "nll" and i == 2 and names[i] in ("i32", "i64")):  # integer class targets
                raise _Bad(f"the vector unit computes on float operands, not {names[i]}")
        return spec.accesses(self, ins, core, f, shape, masks, axes, names, srcs)
