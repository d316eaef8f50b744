"""The memory model: an access (a strided block of DRAM or of one core's scratchpad) and the views
of a memory image (bytes, or their validity map) it reads or writes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcompiler.backends.npu.isa import DTYPE_BYTES
from kcompiler.backends.npu.sim.data import NP_DTYPES


@dataclass(frozen=True)
class Access:
    """One strided block an instruction reads or writes, in DRAM or in one core's scratchpad."""

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
    return strided(base[start:], shape, tuple(s * e for s in strides), writeable)


def strided(x: np.ndarray, shape, byte_strides, writeable: bool = True) -> np.ndarray:
    """np.lib.stride_tricks.as_strided, also for ml_dtypes' types (numpy cannot rebuild FP8 from the
    array interface as_strided goes through: the view is made of same-size unsigned ints, then seen as
    the type again)."""
    if not x.dtype.type.__module__.startswith("ml_dtypes"):
        return np.lib.stride_tricks.as_strided(x, shape, byte_strides, writeable=writeable)
    raw = np.lib.stride_tricks.as_strided(x.view(f"u{x.dtype.itemsize}"), shape, byte_strides, writeable=writeable)
    return raw.view(x.dtype)


def _w(a: Access) -> Access:
    """The same block, written."""
    return Access(a.space, a.core, a.addr, a.dtype, a.shape, a.strides, True, a.region)


def _read(a: Access) -> Access:
    """The same block, read."""
    return Access(a.space, a.core, a.addr, a.dtype, a.shape, a.strides, False, a.region)


def _dense_access(a: Access) -> bool:
    """Whether the access covers every byte of its extent (no gaps between elements)."""
    ext = a.extent()
    return ext is None or ext[1] - ext[0] == math.prod(a.shape) * a.esize
