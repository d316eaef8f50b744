"""The memories of one device during one run: the bank image (raw element bits per channel, bank,
row, column and lane, with a validity bit per column), the global buffers, the MAC registers, the
shift registers and the staging area (a validity bit per 16-bit word), and their strided views."""

from __future__ import annotations

import copy
from typing import TypeVar

import numpy as np

from kcompiler.backends.pim.isa import Command
from kcompiler.backends.pim.sim.code import Code
from kcompiler.backends.pim.sim.faults import _Fail
from kcompiler.backends.pim.sim.numerics import NP_DTYPES
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError

SREGS = 16

#: the class of the memories cloned (a Machine, which mixes the command units into Memories)
_M = TypeVar("_M", bound="Memories")


class Memories:
    """The memories of one device during one run (the command units are mixed into Machine)."""

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

    def clone(self: _M, code: Code | None = None) -> _M:
        """An independent copy of the memories, of self's class (views re-made over the copied staging)."""
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
        """The staging words [addr, addr + 2n) (bounds checked)."""
        self._check_staging(addr, 2 * n, what)
        return slice(addr // 2, addr // 2 + n)

    def _geometry(self, c: Command, rows=("row",)) -> None:
        """A device command's units, bank, rows and columns lie inside the device and the program's rows."""
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
        """The bank index of each unit a device command runs on."""
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


def _written_rows(code: Code) -> set[int]:
    """The bank rows the program's commands write (cached per command list)."""
    key = ("written", len(code.commands), hash(tuple(code.commands)))
    hit = code._views.get("written")
    if hit is None or hit[0] != key:
        rows = {c.row for c in code.commands if c.op == "WR_BK"}
        rows |= {c.row3 for c in code.commands if c.op in ("EWADD", "EWMUL", "AF")}
        code._views["written"] = hit = (key, rows)
    return hit[1]

