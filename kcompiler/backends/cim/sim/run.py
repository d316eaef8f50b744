"""Functional simulation: execute a CIM program's instructions over its activation memory.

Every value comes from the instruction fields, the crossbar images and the memory image: an MVM
reads its input vectors from memory, quantises them to the DAC's digits, multiplies them by the
conductances the crossbar it names was programmed with (Crossbars), converts each physical column
with the ADC full scale of that column's table, shifts and adds the weight slices and input bits,
and scales the result by the column's weight scale. A field that points outside the memory, an
unprogrammed crossbar or a block larger than a crossbar is an ExecutionError."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kcompiler.backends.cim import isa
from kcompiler.backends.cim.sim import vector
from kcompiler.backends.cim.sim.code import Code
from kcompiler.backends.cim.sim.crossbars import Crossbars
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import ExecutionError

F32 = np.float32


class Machine:
    """The chip's state while a program runs: activation memory and what each crossbar holds."""

    def __init__(self, spec: CimSpec, code: Code, xbars: Crossbars):
        self.spec, self.code, self.xbars = spec, code, xbars
        self.mem = np.zeros(code.mem_elems, F32)
        self.held = np.full(spec.crossbars, -1, np.int64)

    def span(self, addr: int, n: int, what: str) -> slice:
        if n < 0 or addr < 0 or addr + n > self.mem.size:
            raise ExecutionError(f"CIM program: {what} reads or writes elements {addr}..{addr + n} outside the "
                                 f"activation memory of {self.mem.size}")
        return slice(addr, addr + n)

    def rows2d(self, addr: int, pitch: int, n: int, width: int, what: str) -> np.ndarray:
        """n rows of `width` elements, row i at addr + i * pitch."""
        if n <= 0 or width <= 0 or pitch < 0:
            raise ExecutionError(f"CIM program: {what} has {n} rows of {width} (pitch {pitch})")
        self.span(addr, (n - 1) * pitch + width, what)
        return np.lib.stride_tricks.as_strided(self.mem[addr:], (n, width), (pitch * 4, 4), writeable=False)


def _prog(m: Machine, f: dict) -> None:
    if not 0 <= f["xbar"] < m.spec.crossbars:
        raise ExecutionError(f"CIM program: PROG names crossbar {f['xbar']}; the chip has {m.spec.crossbars}")
    if not 0 <= f["image"] < len(m.code.image_rows):
        raise ExecutionError(f"CIM program: PROG names image {f['image']}; the program has {len(m.code.image_rows)}")
    if f["every"] not in (0, 1):  # a flag: any other value is a corrupted row, not "reprogram"
        raise ExecutionError(f"CIM program: PROG every={f['every']} (0: resident, 1: every inference)")
    m.held[f["xbar"]] = f["image"]


def _digits(spec: CimSpec, xq: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The input as the DAC applies it: (digits, weight) per read. One signed PWM read of the whole
    value, or two's-complement bits, the last one subtracted (ISAAC's shift-and-subtract)."""
    if spec.input_slices == 1:
        return [(xq.astype(F32), 1.0)]
    u = xq & ((1 << spec.input_bits) - 1)
    out = []
    for s in range(spec.input_slices):
        bit = ((u >> s) & 1).astype(F32)
        out.append((bit, -float(1 << s) if s == spec.input_slices - 1 else float(1 << s)))
    return out


def _adc(spec: CimSpec, current: np.ndarray, fs: np.ndarray) -> np.ndarray:
    """Each column's reading: its full scale `fs` over the ADC's codes (signed for a differential or
    signed-input read). With adc_range "full" the step is never finer than one level x digit: a
    column whose worst case fits the codes is read exactly."""
    signed = spec.encoding == "differential" or spec.input_slices == 1
    top = float(1 << (spec.adc_bits - 1)) if signed else float((1 << spec.adc_bits) - 1)
    lsb = fs / top
    if spec.adc_range == "full":
        lsb = np.maximum(lsb, 1.0)
    return np.clip(np.rint(current / lsb), -top if signed else 0.0, top - 1 if signed else top) * lsb


def _mvm(m: Machine, f: dict) -> None:
    spec, code = m.spec, m.code
    if not 0 <= f["xbar"] < spec.crossbars:
        raise ExecutionError(f"CIM program: MVM names crossbar {f['xbar']}; the chip has {spec.crossbars}")
    image = int(m.held[f["xbar"]])
    if image < 0:
        raise ExecutionError(f"CIM program: MVM on crossbar {f['xbar']}, which no PROG has programmed")
    rows, outs = f["rows"], f["outs"]
    if not 0 < rows <= spec.rows or not 0 < outs <= spec.outputs_per_crossbar:
        raise ExecutionError(f"CIM program: MVM of {rows} rows x {outs} outputs does not fit a {spec.rows}-row "
                             f"crossbar of {spec.outputs_per_crossbar} outputs")
    # the block the image was programmed with: rows beyond it hold unprogrammed devices, which read as
    # zero weights with the noise off, so a corrupted `rows` or `outs` could otherwise go unseen
    if rows != int(code.image_rows[image]) or outs != int(code.image_outs[image]):
        raise ExecutionError(f"CIM program: MVM of {rows} rows x {outs} outputs on crossbar {f['xbar']}, whose "
                             f"image {image} holds a block of {int(code.image_rows[image])} x "
                             f"{int(code.image_outs[image])}")
    if f["acc"] not in (0, 1):
        raise ExecutionError(f"CIM program: MVM acc={f['acc']} (0: write, 1: accumulate)")
    x = m.rows2d(f["src"], f["pitch"], f["nvec"], rows, "MVM input").astype(np.float64)
    qmax = float((1 << (spec.input_bits - 1)) - 1)
    amax = np.abs(x).max(axis=1)
    sx = np.where(amax > 0, amax / qmax, 1.0)
    xq = np.clip(np.rint(x / sx[:, None]), -qmax, qmax).astype(np.int64)
    g, alpha = m.xbars.net(image)
    g = g[:rows]
    imgs = code.images
    fs = imgs.adc_fs[image].astype(np.float64)
    if not np.all(np.isfinite(fs) & (fs > 0)) or np.any(imgs.col_flip[image] > 1):
        raise ExecutionError(f"CIM program: image {image}'s column tables hold an ADC full scale that is not "
                             "positive or a flip flag that is not 0 or 1")
    flip = imgs.col_flip[image].astype(bool)
    acc = np.zeros((x.shape[0], spec.cols))
    for d, weight in _digits(spec, xq):
        read = _adc(spec, (d @ g).astype(np.float64), fs)
        if flip.any():  # complemented columns: (levels - 1) * sum(d) - reading
            read[:, flip] = (spec.levels - 1) * d.sum(axis=1, dtype=np.float64)[:, None] - read[:, flip]
        acc += weight * read
    col_out, col_slice = imgs.col_out[image], imgs.col_slice[image]
    used = (col_out >= 0) & (col_out < outs)
    shift = np.zeros((spec.cols, outs))
    shift[np.nonzero(used)[0], col_out[used]] = np.power(float(spec.levels), col_slice[used])
    y = acc @ shift
    if spec.encoding == "offset":  # the 2^(b-1) bias of every stored weight, removed digitally
        y -= float(1 << (spec.weight_bits - 1)) * xq.sum(axis=1)[:, None]
    y *= alpha * sx[:, None] * imgs.out_scale[image][:outs].astype(np.float64)[None, :]
    if f["dpitch"] < 0:
        raise ExecutionError(f"CIM program: MVM output pitch {f['dpitch']}")
    m.span(f["dst"], (x.shape[0] - 1) * f["dpitch"] + outs, "MVM output")
    out = np.lib.stride_tricks.as_strided(m.mem[f["dst"]:], (x.shape[0], outs), (f["dpitch"] * 4, 4))
    if f["acc"]:
        out += y.astype(F32)
    else:
        out[...] = y.astype(F32)


def _xpose(m: Machine, f: dict) -> None:
    a, b, c = f["a"], f["b"], f["c"]
    if min(a, b, c) <= 0:
        raise ExecutionError(f"CIM program: XPOSE of [{a}, {b}, {c}]")
    src = m.mem[m.span(f["src"], a * b * c, "XPOSE input")].reshape(a, b, c)
    m.mem[m.span(f["dst"], a * b * c, "XPOSE output")] = src.transpose(0, 2, 1).reshape(-1)


HANDLERS = {isa.PROG: _prog, isa.IM2COL: vector.im2col, isa.MVM: _mvm, isa.XPOSE: _xpose, isa.VOP: vector.vop}


def execute(spec: CimSpec, code: Code, inputs: Mapping[str, np.ndarray], xbars: Crossbars) -> dict[str, np.ndarray]:
    """Run the program on `inputs` (name -> array); returns its outputs."""
    if code.images is None:
        raise ExecutionError("this CIM program was compiled in timing mode and holds no crossbar images",
                             hint="compile with mode='functional'")
    m = load(spec, code, inputs, xbars)
    for row in code.instrs:
        step(m, row)
    return {b.name: m.mem[m.span(b.addr, int(np.prod(b.shape)), f"output '{b.name}'")].reshape(b.shape).copy()
            for b in code.outputs}


def load(spec: CimSpec, code: Code, inputs: Mapping[str, np.ndarray], xbars: Crossbars) -> Machine:
    """The machine before the first instruction: constants and inputs in its memory (a separate step
    so that a reference walk, kcompiler.backends.cim.mutate, can run instructions one at a time)."""
    m = Machine(spec, code, xbars)
    for addr, data in code.consts:
        m.mem[m.span(addr, data.size, "constant")] = data.reshape(-1)
    for b in code.inputs:
        v = np.asarray(inputs[b.name], F32)
        if v.size != int(np.prod(b.shape)):
            raise ExecutionError(f"CIM program input '{b.name}' has shape {v.shape}, expected {b.shape}")
        m.mem[m.span(b.addr, v.size, f"input '{b.name}'")] = v.reshape(-1)
    return m


def step(m: Machine, row: np.ndarray) -> None:
    """Execute one instruction row."""
    _, f = isa.fields_of(row)  # first: it refuses an unknown opcode
    HANDLERS[int(row[0])](m, f)
