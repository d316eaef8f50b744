"""A unit's columns in its banks: runs of columns split at row ends, and the canonical
bank-transfer descriptor of a run; and `CommandSink`, what the kernels emit into.

The bank-transfer descriptor (ustride, kstride, grp, phase) says where column j of unit u comes
from: ``u * ustride + ((phase + j) // grp) * kstride + ((phase + j) % grp) * lanes``.
"""

from __future__ import annotations

from typing import Protocol

from kcompiler.backends.pim.isa import HOST
from kcompiler.backends.pim.spec import PimSpec


class CommandSink(Protocol):
    """What the kernels emit into (kcompiler.backends.pim.kernels.emitter.Emitter): the spec, the
    current step, the descriptor table and the command list."""

    spec: PimSpec
    step: int

    def desc(self, *vals: int) -> int: ...

    def emit(self, op: str, channel: int = HOST, **kw) -> None: ...


def segments(offset: int, ncols: int, spec: PimSpec) -> list[tuple[int, int, int, int]]:
    """Split a run of a unit's columns at bank offset `offset` into (row, bank, col, count) runs that
    stay inside one row of one of the unit's banks."""
    cpr = spec.columns_per_row
    per_row = cpr * spec.banks_per_unit
    out = []
    while ncols > 0:
        row, rest = divmod(offset, per_row)
        bank, col = divmod(rest, cpr)
        n = min(ncols, cpr - col)
        out.append((row, bank, col, n))
        offset += n
        ncols -= n
    return out


def seg_start(off: int, row: int, bank: int, col: int, s: PimSpec) -> int:
    """Column index within an item (starting at bank offset `off`) of a segment's first column."""
    return row * s.columns_per_row * s.banks_per_unit + bank * s.columns_per_row + col - off


def bk_desc(em: CommandSink, ustride: int, kstride: int, grp: int, phase: int, units: int, count: int,
            lanes: int) -> tuple[int, int]:
    """A canonical bank-transfer descriptor, and the element offset to add to the command's address.

    Every layout has one encoding, so no descriptor entry can change without changing what moves: a
    run inside one group of columns is written with grp 1 (columns `lanes` apart), one unit has no
    unit stride, one column no column stride."""
    if (phase + count + grp - 1) // grp == 1:  # one group: columns are consecutive lanes
        offset, grp, phase, kstride = phase * lanes, 1, 0, lanes
    else:
        offset = 0
    if count == 1:
        kstride = 0
    if units == 1:
        ustride = 0
    return em.desc(ustride, kstride, grp, phase), offset
