"""What a CIM program hands its simulator: instruction rows, crossbar images, memory image, I/O table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Binding:
    """A program input or output: `name` lives at element `addr` of the activation memory, `shape`."""

    name: str
    addr: int
    shape: tuple[int, ...]


@dataclass
class Images:
    """Every crossbar image of a program, stacked (kcompiler.backends.cim.mapping.Image, one row each).

    codes [n, planes, rows, cols] device levels; col_out / col_slice [n, cols] the periphery's
    column tables; out_scale [n, outputs_per_crossbar]; adc_fs [n, cols] each column's ADC full scale;
    col_flip [n, cols] the columns stored as complements."""

    codes: np.ndarray
    col_out: np.ndarray
    col_slice: np.ndarray
    out_scale: np.ndarray
    adc_fs: np.ndarray
    col_flip: np.ndarray

    def __len__(self) -> int:
        return int(self.col_out.shape[0])

    @classmethod
    def stack(cls, images: list, spec) -> "Images":
        dtype = np.uint8 if spec.cell_bits <= 8 else np.uint16
        if not images:
            return cls(np.zeros((0, spec.planes, spec.rows, spec.cols), dtype), np.zeros((0, spec.cols), np.int32),
                       np.zeros((0, spec.cols), np.int32), np.zeros((0, spec.outputs_per_crossbar), np.float32),
                       np.zeros((0, spec.cols), np.float32), np.zeros((0, spec.cols), np.uint8))
        return cls(np.stack([i.codes for i in images]), np.stack([i.col_out for i in images]),
                   np.stack([i.col_slice for i in images]), np.stack([i.out_scale for i in images]),
                   np.stack([i.adc_fs for i in images]), np.stack([i.col_flip for i in images]))


@dataclass
class Code:
    """A CIM program as its simulator reads it. `images` is None for a timing-only program (its
    weights were never read); `image_rows[i]`/`image_outs[i]` are what image i's block uses."""

    instrs: np.ndarray  # (n, 2 + isa.FIELDS) int64
    images: Images | None
    image_rows: np.ndarray  # [n_images] int32
    image_outs: np.ndarray  # [n_images] int32
    mem_elems: int
    consts: list[tuple[int, np.ndarray]]
    inputs: list[Binding]
    outputs: list[Binding]
    steps: list[tuple[str, str]] = field(default_factory=list)  # (node name, op type) per step
    #: the device's number of this program's first image: device draws are seeded by it, so two programs of
    #: one chip (whose PROG rows both count from 0) never read the same noise
    image_base: int = 0
