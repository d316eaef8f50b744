"""Element streams over the channels: the layout of an all-bank element-wise (EW/AF) operand and
the commands that move a stream between staging and the banks and compute on it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kcompiler.backends.pim.kernels.columns import CommandSink, bk_desc, seg_start, segments
from kcompiler.backends.pim.spec import PimSpec


@dataclass
class StreamLayout:
    """An element stream spread over the channels for all-bank EW/AF ops and bank-resident copies:
    channel ch holds elements [ch * share, ...); its EW column c holds `units` x lanes elements."""

    share: int
    channels: int  # channels holding data
    units: int
    cols: int  # columns of a full channel
    rows: int  # rows per operand

    units_lanes: int  # elements of one EW column

    @property
    def block(self) -> int:
        """Staging elements per channel (padded to whole columns)."""
        return self.cols * self.units_lanes


@functools.lru_cache(maxsize=512)
def stream_layout(spec: PimSpec, numel: int) -> StreamLayout:
    share = -(-numel // spec.channels)
    nch = -(-numel // share)
    units = min(spec.units_per_channel, -(-share // spec.simd_lanes))
    cols = -(-share // (units * spec.simd_lanes))
    rows = -(-cols // (spec.columns_per_row * spec.banks_per_unit))
    return StreamLayout(share, nch, units, cols, rows, units * spec.simd_lanes)


def emit_stream_transfer(em: CommandSink, sl: StreamLayout, numel: int, op: str, addr: int, base_row: int,
                         flags: int = 0) -> None:
    """WR_BK (staging -> banks) or RD_BK (banks -> staging) of a stream laid out per channel in
    padded blocks of `sl.block` elements."""
    s = em.spec
    eb = s.element_bytes
    for ch in range(sl.channels):
        n = min(sl.share, numel - ch * sl.share)
        cols = -(-n // sl.units_lanes)
        for r, b, c, cnt in segments(0, cols, s):
            j0 = seg_start(0, r, b, c, s)
            em.emit(op, ch, row=base_row + r, bank=b, col=c, count=cnt, units=sl.units,
                    addr=addr + (ch * sl.block + j0 * sl.units_lanes) * eb,
                    desc=bk_desc(em, s.simd_lanes, sl.units_lanes, 1, 0, sl.units, cnt, s.simd_lanes)[0], flags=flags)


def emit_stream_op(em: CommandSink, sl: StreamLayout, numel: int, op: str, rows: tuple[int, int, int], fn: int = 0):
    s = em.spec
    for ch in range(sl.channels):
        n = min(sl.share, numel - ch * sl.share)
        cols = -(-n // sl.units_lanes)
        for r, b, c, cnt in segments(0, cols, s):
            kw = dict(row=rows[0] + r, row3=rows[2] + r, bank=b, col=c, count=cnt, units=sl.units)
            if op == "AF":
                kw["fn"] = fn
            else:
                kw["row2"] = rows[1] + r
            em.emit(op, ch, **kw)
