"""Where values live and how a program is collected: ``Layout`` (a DRAM buffer, a byte offset,
element strides) and ``Codegen``, which lays out every value the program touches, writes the
constant ones into the initial image (functional mode only: in timing mode no weight is read)
and gathers the instructions the kernels emit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.npu.isa import DTYPE_BYTES, Instr
from kcompiler.backends.npu.kernels.attrs import IR_DTYPE, shape
from kcompiler.backends.npu.sim import NP_DTYPES, Binding, Buffer
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.errors import LoweringError


def contiguous(shape_: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major element strides of a dense block of `shape_`."""
    out, s = [], 1
    for n in reversed(shape_):
        out.append(s)
        s *= n
    return tuple(reversed(out))


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
    """A constant's bytes in the instruction dtype, reshaped (or broadcast) to `shape_`."""
    a = np.asarray(a)
    a = a.reshape(shape_) if a.size == math.prod(shape_) else np.broadcast_to(a, tuple(shape_))
    arr = np.ascontiguousarray(a.astype(NP_DTYPES[dtype], copy=False))
    return arr.reshape(-1).view(np.uint8)
