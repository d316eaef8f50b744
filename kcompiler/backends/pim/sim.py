"""Functional simulator of a PIM device: executes a program's command list over memory images.

The memories: per device the bank image ``bank[channel, bank, row, column, lane]`` (raw element
bits of the device dtype: bf16 on aim, fp16 on hbm-pim) with a validity bit per column; per
channel the global buffer (the input vector the units read); per unit the MAC result registers
(the accumulator dtype); the 16 host shift registers of the FP16 scaling; and the staging area,
the host-visible I/O buffer where program inputs are written, operands converted, partial sums
read back and reduced, and outputs read, with a validity bit per 16-bit word.

Nothing here knows the model: a program is commands + descriptors + a bank image + constants +
a table binding input/output names to staging addresses. This module imports neither onnx nor
onnx_ir (tests/backends/pim/test_sim.py checks it).

Two execution paths give identical results (tested): command by command, and a fast path used
only where the command fields prove it equivalent: within a run of device commands, the p-th
command of every channel executes as one numpy call when their fields are identical but for the
channel and staging address and no channel writes staging another channel of the run touches
(channels share nothing else); a run of HADDs is one unbuffered np.add.at, which adds repeated
destinations in command order. Field checks and staging geometry are done once per program.

Every run starts from the program's image (copied: a run's writes do not leak into the next).
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
import threading
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from kcompiler.backends.pim.isa import (ALLOWED_FLAGS, CLR, DTYPES, HOST, HOST_OPS, OPCODES, PAIR, RANGE_RULES, UP,
                                        Command)
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError

NP_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(ml_dtypes.bfloat16), 2: np.dtype(np.float16), 3: np.dtype(np.int64),
             4: np.dtype(np.int32)}
SREGS = 16
#: largest magnitude a scaled FP16 operand or partial sum may reach (half of FP16's 65504: headroom)
FP16_LIMIT = 2.0 ** 15


def shift_for(bound: float, limit: float = FP16_LIMIT) -> int:
    """Smallest s >= 0 with bound * 2**-s <= limit (0 for a zero or non-finite bound)."""
    if not math.isfinite(bound) or bound <= limit:
        return 0
    return int(math.ceil(math.log2(bound / limit)))


def split_shift(s: int, ea: float, eb: float, sa: int, sb: int) -> tuple[int, int]:
    """Share an extra shift s between two operands, larger scaled magnitude first (keeps both away from
    FP16's subnormal range)."""
    for _ in range(s):
        if ea * 2.0 ** -sa >= eb * 2.0 ** -sb:
            sa += 1
        else:
            sb += 1
    return sa, sb


def amax(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def _erf(x):
    """erf in float64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: far below BF16/FP16 resolution)."""
    x = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(
        -x * x)
    return (np.sign(x) * y).astype(np.float32)


def _gelu(p):
    if p:  # tanh approximation
        return lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))


#: the activation-function unit's table: name -> (parameter -> function on float32)
AF_FUNCS = {
    "Relu": lambda p: lambda x: np.maximum(x, 0),
    "LeakyRelu": lambda p: lambda x: np.where(x >= 0, x, np.float32(p) * x),
    "Sigmoid": lambda p: lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": lambda p: np.tanh,
    "Gelu": _gelu,
    "Erf": lambda p: _erf,
}


@dataclass
class Binding:
    """A program input or output: where it sits in the staging area."""

    name: str
    addr: int
    dtype: int
    shape: tuple[int, ...]


@dataclass
class Step:
    name: str
    op_type: str


@dataclass
class Code:
    """Everything a PIM program is, for the simulator: no graph."""

    commands: list[Command]
    descs: np.ndarray  # int64 [n, 12]: strides of HCOPY/HADD (dims, src, dst) and WR_BK/RD_BK
    image: np.ndarray | None  # uint16 bank image [channels, banks, rows, columns, lanes] (None: timing only)
    image_valid: np.ndarray | None  # bool [channels, banks, rows, columns]
    rows: int  # rows per bank the program reserves (image rows)
    staging_bytes: int
    consts: list[tuple[int, np.ndarray]]  # (staging address, uint8 bytes) written before the first command
    inputs: list[Binding]
    outputs: list[Binding]
    steps: list[Step]
    fns: list[tuple[str, float]]  # the activation-function unit's table
    #: the staging buffers [start, end) (sorted, disjoint): no access may cross a buffer's end
    regions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    _plan: object = field(default=None, repr=False)
    _views: dict = field(default_factory=dict, repr=False)  # staging geometry of a field tuple
    #: held by the run that shares the image's scratch rows; a concurrent run takes a private copy
    _image_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def invalidate(self) -> None:
        """Forget the fast path's cached grouping and geometry (the run rebuilds them anyway when the
        command list's content changed; call this after changing descriptors in place)."""
        self._plan = None
        self._views = {}


class _Fail(Exception):
    pass


class Machine:
    """The memories of one device during one run, and the commands' semantics over them."""

    def __init__(self, spec: PimSpec, code: Code, share: bool = True):
        self.spec = spec
        self.code = code
        s = spec
        self.lanes = s.simd_lanes
        self.bpu = s.banks_per_unit
        self.upc = s.units_per_channel
        self.dot = s.mac_dataflow == "dot"
        self.dev = NP_DTYPES[1 if s.dtype == "bfloat16" else 2]
        self.accdt = np.dtype(np.float32 if s.accumulate_dtype == "float32" else np.float16)
        self.lpa = 1 if self.dot else self.lanes  # lanes per accumulator register
        if code.image is None:
            raise ExecutionError("this PIM program was compiled in timing mode and holds no bank image",
                                 hint="compile with mode='functional'")
        # The compiler's rows (weights) are never written by a well-formed program: its commands write
        # only scratch rows, whose validity starts cleared every run, so the image is shared and
        # nothing a run leaves there can be read by the next. A program writing a row the compiler
        # filled (a mutant) runs on a private copy, so the program's image stays as compiled.
        written = sorted(_written_rows(code))
        hit = [r for r in written if r < code.rows and code.image_valid[:, :, r].any()]
        self.bank = code.image.copy() if hit or not share else code.image
        self.bank_valid = code.image_valid.copy()
        self.gb = np.zeros((s.channels, s.input_buffer_elems), np.uint16)
        self.gb_valid = np.zeros((s.channels, s.input_buffer_elems), bool)
        self.acc = np.zeros((s.channels, self.upc, s.accumulators_per_unit, self.lpa), self.accdt)
        self.acc_valid = np.zeros((s.channels, self.upc, s.accumulators_per_unit), bool)
        n = (code.staging_bytes + 3) // 4 * 4
        self.staging = np.zeros(n, np.uint8)
        self.words = self.staging.view(np.uint16)
        self.valid = np.zeros(n // 2, bool)  # per 16-bit word
        self.sreg = np.zeros(SREGS, np.int64)
        self.sreg_valid = np.zeros(SREGS, bool)
        self.sreg_valid[0] = True  # register 0 is zero: no scaling
        for addr, raw in code.consts:
            self._check_staging(addr, len(raw), "constant")
            self.staging[addr:addr + len(raw)] = raw
            self.valid[addr // 2:(addr + len(raw) + 1) // 2] = True
        self.counts = {"macs": 0}
        self._rel: dict = {}

    def clone(self, code: Code | None = None) -> "Machine":
        """An independent copy of the memories (views re-made over the copied staging)."""
        m = copy.copy(self)
        for name in ("bank", "bank_valid", "gb", "gb_valid", "acc", "acc_valid", "staging", "valid", "sreg",
                     "sreg_valid"):
            setattr(m, name, getattr(self, name).copy())
        m.words = m.staging.view(np.uint16)
        m.counts = dict(self.counts)
        m.code = code or self.code
        return m

    # ---- staging helpers ---------------------------------------------------------------------
    def _check_staging(self, addr: int, nbytes: int, what: str) -> None:
        if addr % 2 or addr < 0 or addr + nbytes > self.staging.size:
            raise _Fail(f"{what} staging bytes {addr}..{addr + nbytes} outside the staging area "
                        f"({self.staging.size} bytes) or misaligned")

    def _view(self, addr: int, dtype: int, dims, strides, what: str, read: bool, write: bool | None = None):
        """A strided view of staging elements, and the matching view of their validity words (the
        geometry, which depends on the fields only, is checked once per program and cached)."""
        key = (addr, dtype, tuple(dims), tuple(strides))
        g = self.code._views.get(key)
        if g is None:
            g = self.code._views[key] = self._geometry_of(addr, dtype, dims, strides)
        if isinstance(g, str):
            raise _Fail(f"{what}: {g}")
        dt, shape, bstrides, vshape, vstrides = g
        if dt is None:
            return np.zeros(shape, NP_DTYPES[dtype]), np.zeros(vshape, bool)
        v = np.ndarray(shape, dt, buffer=self.staging, offset=addr, strides=bstrides)
        ok = np.ndarray(vshape, bool, buffer=self.valid, offset=addr // 2, strides=vstrides)
        if read and not ok.all():
            raise _Fail(f"{what}: reads staging that nothing wrote")
        return v, ok

    def _geometry_of(self, addr, dtype, dims, strides):
        if dtype not in NP_DTYPES:
            return f"unknown dtype {dtype}"
        dt = NP_DTYPES[dtype]
        size = dt.itemsize
        if addr % min(size, 4):
            return f"address {addr} is not aligned to {min(size, 4)} bytes"
        dims = [int(d) for d in dims]
        strides = [int(s) for s in strides]
        if any(d < 0 for d in dims) or any(s < 0 for s in strides):
            return "negative extent or stride"
        words = size // 2
        if any(d == 0 for d in dims):
            return None, tuple(dims), None, tuple(dims) + (1,), None
        last = sum((d - 1) * s for d, s in zip(dims, strides))
        if addr < 0 or addr + (last + 1) * size > self.staging.size:
            return (f"staging bytes {addr}..{addr + (last + 1) * size} outside the staging area "
                    f"({self.staging.size} bytes)")
        return (dt, tuple(dims), tuple(s * size for s in strides), tuple(dims) + (words,),
                tuple(s * words for s in strides) + (1,))

    def _mark(self, ok: np.ndarray) -> None:
        """Mark the words behind a validity view written."""
        ok[...] = True

    def _words(self, addr: int, n: int, what: str) -> slice:
        self._check_staging(addr, 2 * n, what)
        return slice(addr // 2, addr // 2 + n)

    # ---- device commands: each on the channels `chs` (a lock-step group) ------------------------
    def _geometry(self, c: Command, rows=("row",)) -> None:
        s = self.spec
        if not 1 <= c.units <= self.upc:
            raise _Fail(f"units={c.units} outside 1..{self.upc}")
        if c.bank >= self.bpu:
            raise _Fail(f"bank={c.bank} outside a unit's {self.bpu} bank(s)")
        for r in rows:
            row = getattr(c, r)
            if row >= s.rows_per_bank:
                raise _Fail(f"{r}={row} beyond the bank ({s.rows_per_bank} rows)")
            if row >= self.code.rows:
                raise _Fail(f"{r}={row} beyond the {self.code.rows} rows this program reserved")
        if c.count < 1 or c.col + c.count > s.columns_per_row:
            raise _Fail(f"columns {c.col}..{c.col + c.count} past the row ({s.columns_per_row} columns)")

    def _banks(self, c: Command) -> np.ndarray:
        return np.arange(c.units) * self.bpu + c.bank

    def _bank_read(self, chs, c: Command, row: int):
        bk = self._banks(c)
        cols = slice(c.col, c.col + c.count)
        if not self.bank_valid[chs[:, None], bk[None, :], row, cols].all():
            raise _Fail(f"reads bank row {row} columns {c.col}..{c.col + c.count} that nothing wrote")
        return self.bank[chs[:, None], bk[None, :], row, cols].view(self.dev)  # [ch, unit, count, lanes]

    def _bank_write(self, chs, c: Command, row: int, data) -> None:
        bk = self._banks(c)
        cols = slice(c.col, c.col + c.count)
        self.bank[chs[:, None], bk[None, :], row, cols] = np.asarray(data, self.dev).view(np.uint16)
        self.bank_valid[chs[:, None], bk[None, :], row, cols] = True

    def wr_gb(self, chs, cs: list[Command]) -> None:
        c = cs[0]
        if c.gb + c.length > self.spec.input_buffer_elems or c.length < 1:
            raise _Fail(f"global buffer overflow: {c.gb}+{c.length} > {self.spec.input_buffer_elems} elements")
        for ch, ci in zip(chs, cs):
            w = self._words(ci.addr, c.length, "WR_GB source")
            if not self.valid[w].all():
                raise _Fail("reads staging that nothing wrote")
            self.gb[ch, c.gb:c.gb + c.length] = self.words[w]
            self.gb_valid[ch, c.gb:c.gb + c.length] = True

    def mac_abk(self, chs, c: Command) -> None:
        self._geometry(c)
        regs = self.spec.accumulators_per_unit
        lanes = self.lanes
        if self.dot:
            if c.nacc != 1 or c.acc >= regs:
                raise _Fail(f"accumulator {c.acc} (nacc={c.nacc}) outside the unit's {regs} register(s)")
            n = c.count * lanes
            if c.gb + n > self.spec.input_buffer_elems:
                raise _Fail(f"global buffer overflow: reads {c.gb}..{c.gb + n}")
            if not self.gb_valid[chs, c.gb:c.gb + n].all():
                raise _Fail("reads global-buffer elements nothing wrote")
            w = self._bank_read(chs, c, c.row).astype(np.float32)
            x = self.gb[chs, c.gb:c.gb + n].view(self.dev).astype(np.float32).reshape(len(chs), 1, c.count, lanes)
            prod = w * x  # BF16 x BF16 is exact in FP32
            while prod.shape[-1] > 1:  # the adder tree, level by level
                prod = prod[..., 0::2] + prod[..., 1::2]
            tree = prod[..., 0]  # [ch, unit, count]
            if c.flags & CLR:
                a0 = np.zeros(tree.shape[:2], np.float32)
            else:
                if not self.acc_valid[chs[:, None], np.arange(c.units)[None, :], c.acc].all():
                    raise _Fail(f"accumulates onto register {c.acc} that was never cleared")
                a0 = self.acc[chs[:, None], np.arange(c.units)[None, :], c.acc, 0]
            # the accumulator, one column command at a time (ufunc.accumulate adds in order)
            run = np.add.accumulate(np.concatenate([a0[..., None], tree], axis=-1), axis=-1)[..., -1]
            self.acc[chs[:, None], np.arange(c.units)[None, :], c.acc, 0] = run
            self.acc_valid[chs[:, None], np.arange(c.units)[None, :], c.acc] = True
        else:
            if not 1 <= c.nacc <= regs or c.acc >= c.nacc:
                raise _Fail(f"registers: phase {c.acc} of {c.nacc} outside the unit's {regs}")
            nk = (c.acc + c.count + c.nacc - 1) // c.nacc
            if c.gb + nk > self.spec.input_buffer_elems:
                raise _Fail(f"global buffer overflow: reads {c.gb}..{c.gb + nk}")
            if not self.gb_valid[chs, c.gb:c.gb + nk].all():
                raise _Fail("reads global-buffer elements nothing wrote")
            w = self._bank_read(chs, c, c.row)  # [ch, unit, count, lanes] fp16
            xk = self.gb[chs, c.gb:c.gb + nk].view(self.dev)  # [ch, nk]
            j = c.acc + np.arange(c.count)
            # FP16 multiply and FP16 accumulate. numpy's float16 arithmetic is float32 arithmetic rounded
            # to float16 after every operation; doing exactly that on float32 arrays gives the same bits
            # several times faster than numpy's float16 loops
            f16, f32 = np.float16, np.float32
            prod = (w.astype(f32) * xk[:, None, j // c.nacc, None].astype(f32)).astype(f16).astype(f32)
            units = np.arange(c.units)
            if c.flags & CLR:
                self.acc[chs[:, None], units[None, :], :c.nacc] = 0
                self.acc_valid[chs[:, None], units[None, :], :c.nacc] = True
            elif not self.acc_valid[chs[:, None], units[None, :], :c.nacc].all():
                raise _Fail(f"accumulates onto registers 0..{c.nacc - 1} that were never cleared")
            acc = self.acc[chs[:, None], units[None, :], :c.nacc].astype(f32)  # [ch, unit, nacc, lanes]
            if c.acc == 0 and c.count % c.nacc == 0:
                p = prod.reshape(len(chs), c.units, c.count // c.nacc, c.nacc, lanes)
                for k in range(p.shape[2]):  # in k order, each register rounding to FP16 after every add
                    acc = (acc + p[:, :, k]).astype(f16).astype(f32)
            else:  # a run starting mid-k: column by column
                for i, jj in enumerate(j):
                    r = jj % c.nacc
                    acc[:, :, r] = (acc[:, :, r] + prod[:, :, i]).astype(f16).astype(f32)
            self.acc[chs[:, None], units[None, :], :c.nacc] = acc.astype(f16)  # GRF_B holds FP16
        self.counts["macs"] += len(chs) * c.units * c.count * lanes

    def rd_mac(self, chs, cs: list[Command]) -> None:
        c = cs[0]
        regs = self.spec.accumulators_per_unit
        if not 1 <= c.units <= self.upc or c.nacc < 1 or c.acc + c.nacc > regs:
            raise _Fail(f"reads registers {c.acc}..{c.acc + c.nacc} of {c.units} units: outside the device")
        units = np.arange(c.units)
        regs_ = slice(c.acc, c.acc + c.nacc)
        if not self.acc_valid[chs[:, None], units[None, :], regs_].all():
            raise _Fail("reads accumulators nothing wrote")
        vals = self.acc[chs[:, None], units[None, :], regs_]
        nwords = c.units * c.nacc * self.lpa * self.accdt.itemsize // 2
        for k, (ch, ci) in enumerate(zip(chs, cs)):
            w = self._words(ci.addr, nwords, "RD_MAC destination")
            if self.accdt.itemsize == 4 and ci.addr % 4:
                raise _Fail(f"RD_MAC destination {ci.addr} not aligned to 4 bytes")
            self.words[w] = np.ascontiguousarray(vals[k]).reshape(-1).view(np.uint16)
            self.valid[w] = True

    def _bk_index(self, c: Command) -> np.ndarray:
        """Staging element index (relative to addr) of every (unit, column, lane) a bank transfer moves."""
        key = (c.desc, c.count, c.units)
        hit = self._rel.get(key)
        if hit is None:
            hit = self._rel[key] = self._bk_index1(c)
        return hit

    def _bk_index1(self, c: Command) -> np.ndarray:
        d = self.code.descs
        if c.desc >= len(d):
            raise _Fail(f"descriptor {c.desc} does not exist ({len(d)})")
        ustride, kstride, grp, phase = (int(v) for v in d[c.desc][:4])
        if grp < 1 or not 0 <= phase < grp or ustride < 0 or kstride < 0:
            raise _Fail(f"bad bank-transfer descriptor {d[c.desc][:4].tolist()}")
        one_group = (phase + c.count + grp - 1) // grp == 1
        if one_group and grp > 1:
            raise _Fail(f"descriptor {d[c.desc][:4].tolist()}: a run inside one group of columns is written "
                        "with grp 1")
        if (c.units == 1 and ustride) or (c.count == 1 and kstride):
            raise _Fail(f"descriptor {d[c.desc][:4].tolist()} sets a stride {c.op} of {c.units} unit(s) x "
                        f"{c.count} column(s) does not use")
        j = phase + np.arange(c.count)
        col = (j // grp) * kstride + (j % grp) * self.lanes
        return (np.arange(c.units)[:, None, None] * ustride + col[None, :, None]
                + np.arange(self.lanes)[None, None, :])

    def wr_bk(self, chs, cs: list[Command]) -> None:
        c = cs[0]
        self._geometry(c)
        rel = self._bk_index(c)
        hi = int(rel.max()) + 1
        for ci in cs:
            self._words(ci.addr, hi, "WR_BK source")
        idx = rel[None] + (np.array([ci.addr for ci in cs]) // 2)[:, None, None, None]
        if not self.valid[idx].all():
            raise _Fail("reads staging that nothing wrote")
        self._bank_write(chs, c, c.row, self.words[idx].view(self.dev))

    def rd_bk(self, chs, cs: list[Command]) -> None:
        c = cs[0]
        self._geometry(c)
        rel = self._bk_index(c)
        hi = int(rel.max()) + 1
        for ci in cs:
            self._words(ci.addr, hi, "RD_BK destination")
        data = self._bank_read(chs, c, c.row)
        # (channels of a lock-step group write disjoint staging: the plan proved it)
        idx = rel[None] + (np.array([ci.addr for ci in cs]) // 2)[:, None, None, None]
        self.words[idx] = data.view(np.uint16)
        self.valid[idx] = True

    def ew(self, chs, c: Command) -> None:
        rows = ("row", "row3") if c.op == "AF" else ("row", "row2", "row3")
        self._geometry(c, rows)
        a = self._bank_read(chs, c, c.row).astype(np.float32)
        if c.op == "AF":
            if c.fn >= len(self.code.fns):
                raise _Fail(f"activation function {c.fn} not in the program's table ({len(self.code.fns)})")
            name, p = self.code.fns[c.fn]
            y = AF_FUNCS[name](p)(a)
        else:
            b = self._bank_read(chs, c, c.row2).astype(np.float32)
            y = a + b if c.op == "EWADD" else a * b
        self._bank_write(chs, c, c.row3, y.astype(self.dev))

    # ---- host commands ---------------------------------------------------------------------
    def _desc3(self, c: Command):
        d = self.code.descs
        if c.desc >= len(d):
            raise _Fail(f"descriptor {c.desc} does not exist ({len(d)})")
        row = d[c.desc]
        return row[0:4], row[4:8], row[8:12]

    def _shift(self, c: Command) -> int:
        regs = [c.reg] + ([c.reg + 1] if c.flags & PAIR else [])
        if any(r >= SREGS for r in regs):
            raise _Fail(f"shift register {c.reg} outside 0..{SREGS - 1}")
        if not all(self.sreg_valid[r] for r in regs):
            raise _Fail(f"reads shift register {c.reg} that no HRANGE wrote")
        return int(sum(self.sreg[r] for r in regs))

    def host(self, c: Command) -> None:
        op = c.op
        if op == "HZERO":
            if c.length < 2 or c.length % 2:
                raise _Fail(f"HZERO of {c.length} bytes: not a whole number of 16-bit words")
            v, ok = self._view(c.addr, 2, [c.length // 2], [1], "HZERO", read=False)
            v[...] = 0
            self._mark(ok)
        elif op in ("HCOPY", "HADD"):
            dims, ss, ds = self._desc3(c)
            src, _ = self._view(c.addr2, c.dtype2, dims, ss, f"{op} source", read=True)
            dt = c.dtype if op == "HCOPY" else 0
            if _overlapping(dims, ds):
                raise _Fail(f"{op} destination elements overlap")
            dst, ok = self._view(c.addr, dt, dims, ds, f"{op} destination", read=(op == "HADD"), write=True)
            if op == "HADD":
                dst[...] = dst + src.astype(np.float32)
            else:
                s = self._shift(c) if (c.reg or c.flags & PAIR) else 0
                x = src.astype(np.float32) if src.dtype != np.float32 else np.array(src)
                if s:
                    x = np.ldexp(x, s if c.flags & UP else -s)
                dst[...] = x.astype(NP_DTYPES[c.dtype])
            self._mark(ok)
        elif op == "HMUL":
            v, _ = self._view(c.addr, 0, [c.length], [1], "HMUL", read=True, write=True)
            v[...] = v * np.float32(c.imm)
        elif op == "HRANGE":
            self.hrange(c)
        else:  # pragma: no cover - the opcode table and this dispatcher agree
            raise _Fail(f"no semantics for {op}")

    def hadd_run(self, cs: list[Command]) -> None:
        """Several HADDs as one unbuffered np.add.at (the same additions in the same order: repeated
        destinations are added in command order). Index arrays are built once per program."""
        key = ("hadd",) + tuple(cs)
        g = self.code._views.get(key)
        if g is None:
            g = self.code._views[key] = self._hadd_geometry(cs)
        if g is None:  # mixed source dtypes: one by one
            for c in cs:
                self.host(c)
            return
        src_dt, src_idx, src_w, dst_idx, dst_w = g
        if not (self.valid[src_w].all() and self.valid[dst_w].all()):
            for c in cs:  # the first command reading unwritten staging raises
                self.host(c)
            return
        vals = self.staging[:self.staging.size // src_dt.itemsize * src_dt.itemsize].view(src_dt)[src_idx]
        f32 = self.staging[:self.staging.size // 4 * 4].view(np.float32)
        np.add.at(f32, dst_idx, vals.astype(np.float32))

    def _hadd_geometry(self, cs: list[Command]):
        if len({c.dtype2 for c in cs}) != 1:
            return None
        src_dt = NP_DTYPES[cs[0].dtype2]
        sw = src_dt.itemsize // 2
        src_idx, dst_idx = [], []
        descs = self.code.descs
        d = np.array([c.desc for c in cs])
        if (d < len(descs)).all() and not np.any(descs[d][:, [0, 1, 2, 4, 5, 6, 8, 9, 10]] - [1, 1, 1, 0, 0, 0, 0, 0, 0]) \
                and (descs[d][:, [7, 11]] == 1).all():
            # all one-dimensional and contiguous (the reductions of read-back partial sums)
            n = descs[d][:, 3]
            for c, k in zip(cs, n):
                self._view(c.addr2, c.dtype2, [k], [1], "HADD source", read=False)
                self._view(c.addr, 0, [k], [1], "HADD destination", read=False)
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            src = np.repeat(np.array([c.addr2 // src_dt.itemsize for c in cs]), n) + within
            dst = np.repeat(np.array([c.addr // 4 for c in cs]), n) + within
            return src_dt, src, (src[:, None] * sw + np.arange(sw)).reshape(-1), dst, \
                (dst[:, None] * 2 + np.arange(2)).reshape(-1)
        for c in cs:
            dims, ss, ds = self._desc3(c)
            if _overlapping(dims, ds):
                raise _Fail("HADD destination elements overlap")
            self._view(c.addr2, c.dtype2, dims, ss, "HADD source", read=False)  # geometry checks only
            self._view(c.addr, 0, dims, ds, "HADD destination", read=False)
            for base, st, size, out in ((c.addr2, ss, src_dt.itemsize, src_idx), (c.addr, ds, 4, dst_idx)):
                off = np.zeros([int(d) for d in dims], np.int64) + base // size
                for ax, (d, stv) in enumerate(zip(dims, st)):
                    shape = [1] * len(dims)
                    shape[ax] = int(d)
                    off = off + (np.arange(int(d), dtype=np.int64) * int(stv)).reshape(shape)
                out.append(off.reshape(-1))
        src = np.concatenate(src_idx)
        dst = np.concatenate(dst_idx)
        src_w = (src[:, None] * sw + np.arange(sw)).reshape(-1)
        dst_w = (dst[:, None] * 2 + np.arange(2)).reshape(-1)
        return src_dt, src, src_w, dst, dst_w

    def hrange(self, c: Command) -> None:
        if c.fn >= len(RANGE_RULES) or c.reg + 1 >= SREGS or c.reg == 0:
            raise _Fail(f"range rule {c.fn} / registers {c.reg},{c.reg + 1} do not exist")
        rule = RANGE_RULES[c.fn]
        # each rule reads its own fields; one it does not read must be 0
        unused = {"one": ("addr2", "count", "col", "imm", "gb"), "add": ("col", "imm", "gb"),
                  "mul": ("col", "imm", "gb"), "matvec_const": ("addr2", "count", "col"),
                  "matvec": ("imm", "gb")}[rule]
        if any(getattr(c, f) for f in unused):
            raise _Fail(f"HRANGE rule '{rule}' does not use {', '.join(f for f in unused if getattr(c, f))}")
        if c.length < 1:
            raise _Fail("HRANGE over no element")
        a, _ = self._view(c.addr, 0, [c.length], [1], "HRANGE operand", read=True)
        ea = amax(a)
        if rule == "one":
            r = (shift_for(ea), 0)
        elif rule == "matvec_const":
            # the weight's shift (gb) was chosen when its bank image was written; the extra shift
            # keeping the FP16 partial sums (at most max|x| * imm = max_n sum_k |w|) in range goes to x
            sx = shift_for(ea)
            r = (sx + shift_for(ea * 2.0 ** -sx * float(np.float32(c.imm))), c.gb)
        else:
            b, _ = self._view(c.addr2, 0, [c.count], [1], "HRANGE operand", read=True)
            eb = amax(b)
            if rule == "add":
                s = shift_for(ea + eb)
                r = (s, s)
            elif rule == "mul":
                sa, sb = shift_for(ea), shift_for(eb)
                r = split_shift(shift_for(ea * 2.0 ** -sa * eb * 2.0 ** -sb), ea, eb, sa, sb)
            else:  # matvec over an activation matrix [rows, col]
                if c.col < 1 or c.count % c.col:
                    raise _Fail(f"matrix of {c.count} elements is not rows of {c.col}")
                l1 = float(np.max(np.sum(np.abs(b.reshape(-1, c.col)), axis=-1))) if b.size else 0.0
                sx, sw = shift_for(ea), shift_for(eb)
                r = split_shift(shift_for(ea * 2.0 ** -sx * l1 * 2.0 ** -sw), ea, eb, sx, sw)
        self.sreg[c.reg], self.sreg[c.reg + 1] = r
        self.sreg_valid[c.reg] = self.sreg_valid[c.reg + 1] = True

    # ---- dispatch ------------------------------------------------------------------------------
    def exec_group(self, cs: list[Command]) -> None:
        """One command on each of several channels (identical but for channel and staging address)."""
        c = cs[0]
        chs = np.array([x.channel for x in cs])
        if c.op == "MAC_ABK":
            self.mac_abk(chs, c)
        elif c.op == "WR_GB":
            self.wr_gb(chs, cs)
        elif c.op == "RD_MAC":
            self.rd_mac(chs, cs)
        elif c.op == "WR_BK":
            self.wr_bk(chs, cs)
        elif c.op == "RD_BK":
            self.rd_bk(chs, cs)
        else:
            self.ew(chs, c)


def _written_rows(code: Code) -> set[int]:
    key = ("written", len(code.commands), hash(tuple(code.commands)))
    hit = code._views.get("written")
    if hit is None or hit[0] != key:
        rows = {c.row for c in code.commands if c.op == "WR_BK"}
        rows |= {c.row3 for c in code.commands if c.op in ("EWADD", "EWMUL", "AF")}
        code._views["written"] = hit = (key, rows)
    return hit[1]


def _overlapping(dims, strides) -> bool:
    """Whether a strided layout names some element twice (checked innermost-out by stride)."""
    span = 1
    for d, st in sorted(((int(d), int(st)) for d, st in zip(dims, strides) if d > 1), key=lambda t: t[1]):
        if st < span:
            return True
        span = st * (d - 1) + span
    return False


def _check_desc(code: Code, c: Command) -> None:
    """Descriptors are canonical, so no entry is ignored: a bank transfer uses entries 0..3 (the rest
    0); a host copy's dims are >= 1 and a dim of 1 has stride 0."""
    if c.desc >= len(code.descs):
        raise _Fail(f"descriptor {c.desc} does not exist ({len(code.descs)})")
    d = code.descs[c.desc]
    if c.op in ("WR_BK", "RD_BK"):
        if d[4:].any() or d[2] < 1:
            raise _Fail(f"bank-transfer descriptor {d.tolist()} is not (ustride, kstride, grp >= 1, phase)")
    else:
        dims = d[0:4]
        if (dims < 1).any() or ((dims == 1) & ((d[4:8] != 0) | (d[8:12] != 0))).any():
            raise _Fail(f"copy descriptor {d.tolist()}: dims must be >= 1 and a dim of 1 has stride 0")


def _check_fields(c: Command, channels: int) -> None:
    if c.op in HOST_OPS:
        if c.channel != HOST:
            raise _Fail(f"host command on channel {c.channel}")
    elif c.channel >= channels:
        raise _Fail(f"channel {c.channel} outside the device's {channels}")
    bad = c.unused_fields()
    if bad:
        raise _Fail(f"fields {', '.join(bad)} are not used by {c.op} and must be 0")
    for name in ("dtype", "dtype2"):
        if name in OPCODES[c.op][2] and getattr(c, name) not in DTYPES:
            raise _Fail(f"unknown {name} {getattr(c, name)}")
    if c.flags & ~ALLOWED_FLAGS.get(c.op, 0):
        raise _Fail(f"flags {c.flags} not allowed on {c.op}")


def _error(code: Code, i: int, why: str) -> ExecutionError:
    c = code.commands[i]
    st = code.steps[c.step] if c.step < len(code.steps) else Step("?", "?")
    return ExecutionError(f"PIM command {i} `{c.text()}` of node '{st.name}' ({st.op_type}): {why}")


#: staging reads and writes of a device command, for the lock-step proof
def _staging_io(code: Code, c: Command, spec: PimSpec) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    eb = spec.element_bytes
    if c.op == "WR_GB":
        return (c.addr, c.addr + c.length * eb), None
    if c.op == "RD_MAC":
        accb = 4 if spec.accumulate_dtype == "float32" else 2
        lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
        return None, (c.addr, c.addr + c.units * c.nacc * lpa * accb)
    if c.op in ("WR_BK", "RD_BK"):
        if c.desc >= len(code.descs):
            return (0, 1 << 62), (0, 1 << 62)  # let the slow path report it
        u, k, g, p = (int(v) for v in code.descs[c.desc][:4])
        j = p + c.count - 1
        hi = c.addr + ((c.units - 1) * u + (j // max(g, 1)) * k + (j % max(g, 1)) * spec.simd_lanes
                       + spec.simd_lanes) * eb
        rng = (c.addr, hi)
        return (rng, None) if c.op == "WR_BK" else (None, rng)
    return None, None


def _key(c: Command):
    return (c.op, c.row, c.col, c.count, c.flags, c.bank, c.units, c.acc, c.nacc, c.row2, c.row3, c.gb, c.length,
            c.desc, c.fn, c.step)


def _plan(code: Code, spec: PimSpec, lockstep: bool = True) -> list:
    """Group the command list into host commands and lock-step groups of device commands.

    Channels share nothing but the staging area. So within a maximal run of device commands, if no
    channel writes staging that another channel of the run reads or writes, any interleaving that
    keeps each channel's own order gives the same memories: the run is executed position by
    position (the p-th command of every channel), one call per set of identical fields. Fields are
    checked here once (the plan is rebuilt whenever the command list changes)."""
    cmds = code.commands
    out: list = []
    i, n = 0, len(cmds)
    while i < n:
        bad = _static_error(code, cmds[i], spec)
        if bad:
            out.append(("error", i, bad))
            i += 1
            continue
        if cmds[i].op == "HADD" and lockstep:
            # a run of reductions: one np.add.at over all of them, which adds repeated destinations
            # in the order they appear, as the commands one by one would
            j = i + 1
            while j < n and cmds[j].op == "HADD" and not _static_error(code, cmds[j], spec):
                j += 1
            out.append(("hadd", list(range(i, j))) if j - i > 1 else ("one", i))
            i = j
            continue
        if cmds[i].op in HOST_OPS:
            out.append(("one", i))
            i += 1
            continue
        j = i + 1
        while j < n and cmds[j].op not in HOST_OPS and not _static_error(code, cmds[j], spec):
            j += 1
        blocks: dict[int, list[int]] = {}
        for k in range(i, j):
            blocks.setdefault(cmds[k].channel, []).append(k)
        if not lockstep or len(blocks) < 2 or not _independent(code, spec, blocks):
            out.extend(("one", k) for k in range(i, j))
        else:
            depth = max(len(b) for b in blocks.values())
            for p in range(depth):
                groups: dict = {}
                for b in blocks.values():
                    if p < len(b):
                        groups.setdefault(_key(cmds[b[p]]), []).append(b[p])
                out.extend(("group", g) if len(g) > 1 else ("one", g[0]) for g in groups.values())
        i = j
    return out


def _host_ranges(code: Code, c: Command) -> list[tuple[int, int]]:
    """Staging byte ranges a host command reads or writes (bounding ranges of strided views)."""
    def strided(addr, dtype, dims, strides):
        size = NP_DTYPES[dtype].itemsize if dtype in NP_DTYPES else 1
        return addr, addr + (sum((int(d) - 1) * int(st) for d, st in zip(dims, strides)) + 1) * size

    if c.op == "HZERO":
        return [(c.addr, c.addr + c.length)]
    if c.op == "HMUL":
        return [(c.addr, c.addr + 4 * c.length)]
    if c.op == "HRANGE":
        out = [(c.addr, c.addr + 4 * c.length)]
        return out + ([(c.addr2, c.addr2 + 4 * c.count)] if c.addr2 or c.count else [])
    if c.op in ("HCOPY", "HADD") and c.desc < len(code.descs):
        d = code.descs[c.desc]
        return [strided(c.addr2, c.dtype2, d[0:4], d[4:8]),
                strided(c.addr, c.dtype if c.op == "HCOPY" else 0, d[0:4], d[8:12])]
    return []


def _check_regions(code: Code, c: Command, spec: PimSpec) -> None:
    if not len(code.regions):
        return
    if c.op in HOST_OPS:
        ranges = _host_ranges(code, c)
    else:
        r, w = _staging_io(code, c, spec)
        ranges = [x for x in (r, w) if x]
    key = ("regions", len(code.regions))
    table = code._views.get(key)
    if table is None:
        table = code._views[key] = (code.regions[:, 0].tolist(), code.regions[:, 1].tolist())
    starts, ends = table
    for lo, hi in ranges:
        k = bisect.bisect_right(starts, lo) - 1
        if k < 0 or hi > ends[k]:
            raise _Fail(f"staging bytes {lo}..{hi} are not inside one buffer (buffer overflow)")


def _check_buffer_table(code: Code) -> None:
    r = code.regions
    if len(r) and ((r[:, 1] <= r[:, 0]).any() or (r[1:, 0] < r[:-1, 1]).any()):
        k = int(np.flatnonzero(r[1:, 0] < r[:-1, 1])[0]) if (r[1:, 0] < r[:-1, 1]).any() else 0
        raise ExecutionError(f"PIM program's buffer table: buffers {r[k].tolist()} and {r[k + 1].tolist()} "
                             "overlap or are empty", hint="the artifact's program table is damaged; recompile")


def _static_error(code: Code, c: Command, spec: PimSpec) -> str | None:
    try:
        _check_fields(c, spec.channels)
        if "desc" in OPCODES[c.op][2]:
            _check_desc(code, c)
        _check_regions(code, c, spec)
    except _Fail as exc:
        return str(exc)
    return None


def _independent(code: Code, spec: PimSpec, blocks: dict[int, list[int]]) -> bool:
    """No channel writes staging bytes another channel of the run reads or writes (a sweep over the
    intervals sorted by start, counting the open ones per channel)."""
    ev = []
    for ch, idx in blocks.items():
        for k in idx:
            r, w = _staging_io(code, code.commands[k], spec)
            if r:
                ev.append((r[0], r[1], ch, False))
            if w:
                ev.append((w[0], w[1], ch, True))
    if not any(e[3] for e in ev):
        return True
    ev.sort()
    heap: list = []
    open_all: dict[int, int] = {}
    open_w: dict[int, int] = {}
    n_all = n_w = 0
    for a0, a1, ch, is_w in ev:
        while heap and heap[0][0] <= a0:
            _e, och, ow = heapq.heappop(heap)
            open_all[och] -= 1
            n_all -= 1
            if ow:
                open_w[och] -= 1
                n_w -= 1
        if is_w and n_all - open_all.get(ch, 0) > 0:
            return False
        if n_w - open_w.get(ch, 0) > 0:
            return False
        heapq.heappush(heap, (a1, ch, is_w))
        open_all[ch] = open_all.get(ch, 0) + 1
        n_all += 1
        if is_w:
            open_w[ch] = open_w.get(ch, 0) + 1
            n_w += 1
    return True


def write_image(spec: PimSpec, image: np.ndarray, valid: np.ndarray, descs: np.ndarray, cmds: list[Command],
                data: np.ndarray) -> None:
    """Run WR_BK commands from `data` (16-bit words, addressed from 0) into a bank image: the compiler
    lays constant matrices out with the same command the program uses for activations."""
    lanes = spec.simd_lanes
    for c in cmds:
        ustride, kstride, grp, phase = (int(v) for v in descs[c.desc][:4])
        j = phase + np.arange(c.count)
        rel = (np.arange(c.units)[:, None, None] * ustride + ((j // grp) * kstride + (j % grp) * lanes)[None, :, None]
               + np.arange(lanes)[None, None, :])
        bk = np.arange(c.units) * spec.banks_per_unit + c.bank
        image[c.channel, bk, c.row, c.col:c.col + c.count] = data[c.addr // 2 + rel]
        valid[c.channel, bk, c.row, c.col:c.col + c.count] = True


def prefix_machine(spec: PimSpec, code: Code, feeds: dict, stop: int) -> Machine:
    """The memories after commands [0, stop) ran one by one (for mutation analysis)."""
    m = _start(spec, code, feeds)
    for i in range(stop):
        step(m, i, code.commands[i])
    return m


def step(m: Machine, i: int, c: Command) -> None:
    """Execute one command on a machine (ExecutionError on failure)."""
    code = m.code
    try:
        bad = _static_error(code, c, m.spec)
        if bad:
            raise _Fail(bad)
        if c.op in HOST_OPS:
            m.host(c)
        else:
            m.exec_group([c])
    except _Fail as exc:
        raise ExecutionError(f"PIM command {i} `{c.text()}`: {exc}") from None
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise ExecutionError(f"PIM command {i} `{c.text()}`: {type(exc).__name__}: {exc}") from None


def state(m: Machine) -> tuple:
    return (m.bank, m.bank_valid, m.gb, m.gb_valid, m.acc.view(np.uint8), m.acc_valid, m.staging, m.valid,
            m.sreg, m.sreg_valid)


def _start(spec: PimSpec, code: Code, feeds: dict, share: bool = True) -> Machine:
    """A machine with the program's image and constants, and the inputs written to their bindings."""
    m = Machine(spec, code, share)
    for b in code.inputs:
        if b.name not in feeds:
            raise ExecutionError(f"PIM program input '{b.name}' was not given")
        x = np.asarray(feeds[b.name])
        if math.prod(x.shape) != math.prod(b.shape):
            raise ExecutionError(f"PIM program input '{b.name}' has shape {x.shape}, the program {b.shape}")
        try:
            v, ok = m._view(b.addr, b.dtype, [math.prod(b.shape)], [1], f"input '{b.name}'", read=False)
        except _Fail as exc:
            raise ExecutionError(f"PIM program input '{b.name}': {exc}") from None
        v[...] = x.reshape(-1).astype(NP_DTYPES[b.dtype])
        m._mark(ok)
    return m


def execute(spec: PimSpec, code: Code, feeds: dict, fast: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Run the program on `feeds` (name -> array); returns (outputs, counts)."""
    cmds = code.commands
    key = (fast, len(cmds), hash(tuple(cmds)), code.descs.tobytes())
    if code._plan is None or code._plan[0] != key:
        _check_buffer_table(code)
        code._views = {}  # geometry cached for other fields or descriptors
        code._plan = (key, _plan(code, spec, lockstep=fast))
    shared = code._image_lock.acquire(blocking=False)
    try:
        return _run(spec, code, feeds, shared)
    finally:
        if shared:
            code._image_lock.release()


def _run(spec: PimSpec, code: Code, feeds: dict, shared: bool):
    cmds = code.commands
    m = _start(spec, code, feeds, share=shared)
    for entry in code._plan[1]:
        kind, what = entry[0], entry[1]
        if kind == "error":
            raise _error(code, what, entry[2])
        idx = [what] if kind == "one" else what
        try:
            c = cmds[idx[0]]
            if kind == "hadd":
                m.hadd_run([cmds[k] for k in idx])
            elif c.op in HOST_OPS:
                m.host(c)
            else:
                m.exec_group([cmds[k] for k in idx])
        except _Fail as exc:
            if len(idx) > 1:  # find the first failing command of the group, in program order
                for k in idx:
                    try:
                        if cmds[k].op in HOST_OPS:
                            m.host(cmds[k])
                        else:
                            m.exec_group([cmds[k]])
                    except _Fail as e2:
                        raise _error(code, k, str(e2)) from None
            raise _error(code, idx[0], str(exc)) from None
        except (ValueError, IndexError, OverflowError, MemoryError) as exc:
            raise _error(code, idx[0], f"{type(exc).__name__}: {exc}") from None
    outs = {}
    for b in code.outputs:
        try:
            v, _ = m._view(b.addr, b.dtype, [math.prod(b.shape)], [1], f"output '{b.name}'", read=True)
        except _Fail as exc:
            raise ExecutionError(f"PIM program output '{b.name}': {exc}") from None
        outs[b.name] = np.array(v).reshape(b.shape)
    return outs, m.counts
