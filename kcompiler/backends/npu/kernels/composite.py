"""Kernels built of other kernels: an op the NPU computes as a short sequence of ops it already
lowers (Resize as GEMMs with interpolation matrices, ConvTranspose as a GEMM and a scatter or a
zero-inserting copy and a convolution, a 3-D pool as two 2-D ones, LSTM as GEMMs and vector ops per
step). The parts are kernels of *stand-in nodes*: fresh ir nodes whose values carry the
real values' names (a Codegen lays out values by name, so a part reads and writes the real
buffers) and never join the model's graph (no use list of a real value changes). The
compiler-made constants (interpolation matrices, flipped weights) are stand-in values with a
const_value: Codegen writes them into the program's initial image like any weight, so the
simulator computes from that image, never from the graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.kernels.codegen import Layout, contiguous
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.errors import LoweringError


def stand_in(v: ir.Value, name: str | None = None, dims: tuple[int, ...] | None = None,
             dtype: ir.DataType | None = None) -> ir.Value:
    """A fresh value standing for `v` (same name, shape and dtype unless given), outside any graph; a
    constant `v` stays a constant (its data read only when laid out)."""
    shp = opinfo.shape_of(v) if dims is None else dims
    c = None
    if name is None and opinfo.is_const(v):
        c = ir.LazyTensor(lambda: ir.Tensor(np.asarray(opinfo.const_value(v))), dtype=v.dtype,
                          shape=ir.Shape(list(shp)), name=v.name)
    return ir.Value(name=name or v.name, shape=ir.Shape(list(shp)), type=ir.TensorType(dtype or v.dtype),
                    const_value=c)


def const_value(name: str, dtype: ir.DataType, dims: tuple[int, ...], make: Callable[[], np.ndarray]) -> ir.Value:
    """A compiler-made constant: `make` runs only when its bytes are laid out (functional programs)."""
    np_dt = ir.DataType(dtype).numpy()

    def tensor():
        return ir.Tensor(np.ascontiguousarray(np.asarray(make(), np.float64).astype(np_dt).reshape(dims)))

    lazy = ir.LazyTensor(tensor, dtype=dtype, shape=ir.Shape(list(dims)), name=name)
    return ir.Value(name=name, shape=ir.Shape(list(dims)), type=ir.TensorType(dtype), const_value=lazy)


def stand_in_node(op_type: str, inputs: list[ir.Value | None], output: ir.Value, name: str,
                  attributes: list[ir.Attr] = ()) -> ir.Node:
    return ir.Node("", op_type, inputs, attributes=list(attributes), outputs=[output], name=name)


@dataclass(frozen=True)
class Alias:
    """A value `name` that is another view of `src`'s buffer: `shape` at element `strides` (None:
    row-major, which needs `src` stored densely) from element `offset` on."""

    name: str
    src: ir.Value
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    offset: int = 0

    def value(self, dtype: ir.DataType) -> ir.Value:
        return ir.Value(name=self.name, shape=ir.Shape(list(self.shape)), type=ir.TensorType(dtype))

    def lay_out(self, cg) -> None:
        lay = cg.layout(self.src)
        if self.strides is None and not lay.is_contiguous():
            raise LoweringError(f"value '{self.src.name}' is not stored densely, so it cannot be re-viewed as "
                                f"{self.shape}")
        cg.layouts[self.name] = (Layout(lay.buf, lay.off + self.offset * lay.esize, lay.dtype, tuple(self.shape),
                                        tuple(self.strides) if self.strides is not None else contiguous(self.shape)))


class CompositeKernel(Kernel):
    """A kernel that runs its `parts` (kernels of stand-in nodes) one after another, a BARRIER
    between two parts (a part reads what the one before wrote, maybe on another core); a part's
    aliases (other views of buffers laid out before it) are set up just before it emits."""

    kind = "gemm"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.parts: list[Kernel] = []
        self.aliases: dict[int, list[Alias]] = {}

    def add(self, part: Kernel, aliases: list[Alias] = ()) -> None:
        self.aliases[len(self.parts)] = list(aliases)
        self.parts.append(part)

    def cost(self) -> Cost:
        costs = [p.cost() for p in self.parts]
        return Cost(cycles=sum(c.cycles for c in costs), macs=sum(c.macs or 0 for c in costs))

    def emit(self, cg, op):
        for i, p in enumerate(self.parts):
            if i:
                cg.emit(isa.Instr(isa.BARRIER, isa.ALL_CORES, op, 0, 0, 0, ()))
            for a in self.aliases.get(i, ()):
                a.lay_out(cg)
            p.emit(cg, op)
