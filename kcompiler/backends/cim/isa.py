"""The CIM chip's instruction set: one row of integers per instruction.

A program is an int64 array of shape (n, 2 + FIELDS): the opcode, the step (which node of the
subgraph the instruction belongs to, for per-op reports) and up to FIELDS operands. Addresses are in
float32 elements of the chip's activation memory. Floats (a VOP's alpha and beta) are stored as their
float32 bit patterns. The text form is what `kc inspect --asm` prints.

    PROG    xbar image every            program image `image` into crossbar `xbar`; every=1: per inference
    IM2COL  dst src n nstride c h w kh kw sh sw pt pl dh dw oh ow
                                         unroll a convolution's input: [n, c, h, w] (batch stride
                                         nstride) -> [n*oh*ow, c*kh*kw] patches
    MVM     xbar src pitch nvec rows dst dpitch outs acc
                                         nvec vectors of `rows` inputs (src + i*pitch) through crossbar
                                         `xbar`; `outs` outputs to dst + i*dpitch, added when acc=1
    XPOSE   dst src a b c                [a, b, c] -> [a, c, b]
    VOP     fn dst a b d0 d1 d2 d3 s0 s1 s2 s3 alpha beta
                                         dst = fn(a, b), over dims d0..d3 (a, dst contiguous; b read
                                         with strides s0..s3, 0 to broadcast)
"""

from __future__ import annotations

import struct

import numpy as np

from kcompiler.errors import ExecutionError

FIELDS = 17
OPS = {
    "PROG": (1, ("xbar", "image", "every")),
    "IM2COL": (2, ("dst", "src", "n", "nstride", "c", "h", "w", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw",
                   "oh", "ow")),
    "MVM": (3, ("xbar", "src", "pitch", "nvec", "rows", "dst", "dpitch", "outs", "acc")),
    "XPOSE": (4, ("dst", "src", "a", "b", "c")),
    "VOP": (5, ("fn", "dst", "a", "b", "d0", "d1", "d2", "d3", "s0", "s1", "s2", "s3", "alpha", "beta")),
}
NAMES = {code: name for name, (code, _) in OPS.items()}
PROG, IM2COL, MVM, XPOSE, VOP = (OPS[n][0] for n in ("PROG", "IM2COL", "MVM", "XPOSE", "VOP"))
#: VOP functions of the digital periphery (the epilogue steps of kcompiler's fused GEMMs, and bias)
VOP_FNS = ("add", "mul", "relu", "sigmoid", "tanh", "hardswish", "gelu", "gelu_tanh", "silu", "leakyrelu",
           "hardsigmoid", "clip")
BINARY = {0, 1}


def float_bits(x: float) -> int:
    """A float's float32 bit pattern, as an int field."""
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


def bits_float(i: int) -> float:
    """The float32 an int field holds (its low 32 bits)."""
    return struct.unpack("<f", struct.pack("<I", int(i) & 0xFFFFFFFF))[0]


class Emitter:
    """Collects instructions as rows; `code()` returns the int64 array."""

    def __init__(self):
        self.rows: list[list[int]] = []
        self.step = 0

    def emit(self, op: str, **fields: int) -> None:
        code, names = OPS[op]
        unknown = set(fields) - set(names)
        if unknown:
            raise ValueError(f"{op} has no field(s) {sorted(unknown)}")
        row = [code, self.step] + [int(fields.get(n, 0)) for n in names] + [0] * (FIELDS - len(names))
        self.rows.append(row)

    def code(self) -> np.ndarray:
        return np.array(self.rows, np.int64).reshape(-1, 2 + FIELDS)


def fields_of(row: np.ndarray) -> tuple[str, dict[str, int]]:
    """An instruction row's opcode name and named fields; an unknown opcode is an ExecutionError."""
    name = NAMES.get(int(row[0]))
    if name is None:
        raise ExecutionError(f"CIM program: unknown opcode {int(row[0])}")
    names = OPS[name][1]
    if np.any(row[2 + len(names):]):  # a slot the opcode has no field for: a corrupted row
        raise ExecutionError(f"CIM program: a {name} row sets slots beyond its {len(names)} fields")
    return name, {n: int(v) for n, v in zip(names, row[2:2 + len(names)])}


def text(row: np.ndarray) -> str:
    name, f = fields_of(row)
    parts = []
    for k, v in f.items():
        if name == "VOP" and k == "fn":
            parts.append(VOP_FNS[v] if 0 <= v < len(VOP_FNS) else f"fn={v}")
        elif name == "VOP" and k in ("alpha", "beta"):
            parts.append(f"{k}={bits_float(v):g}")
        else:
            parts.append(f"{k}={v}")
    return f"{name:<7}" + " ".join(parts)
