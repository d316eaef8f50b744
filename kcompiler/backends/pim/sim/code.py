"""A PIM program as the simulator sees it: commands, descriptors, the bank image, constants and the
staging addresses of its inputs and outputs. No graph."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from kcompiler.backends.pim.isa import Command


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

