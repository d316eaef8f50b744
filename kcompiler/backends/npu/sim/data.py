"""The program as the NPU simulator sees it: plain data (instructions, buffer table, bindings, the
initial DRAM image), no model, and the numpy dtype of each instruction dtype name."""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from kcompiler.backends.npu.isa import Instr

F32 = np.float32
NP_DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
             "i8": np.dtype(np.int8), "i32": np.dtype(np.int32), "i64": np.dtype(np.int64), "u8": np.dtype(np.uint8),
             "u16": np.dtype(np.uint16), "u32": np.dtype(np.uint32), "u64": np.dtype(np.uint64),
             "f8e4m3": np.dtype(ml_dtypes.float8_e4m3fn), "f8e5m2": np.dtype(ml_dtypes.float8_e5m2),
             "f8e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz), "f8e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
             # 4-bit elements unpacked, one per byte (memory holds them packed: see sim/lowbit.py)
             "i4": np.dtype(ml_dtypes.int4), "u4": np.dtype(ml_dtypes.uint4)}
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


def _f32(x: np.ndarray) -> np.ndarray:
    """`x` widened to float32 (itself when it already is)."""
    return x if x.dtype == F32 else x.astype(F32)
