"""A node's kernel (its commands) and its figures: time from the timing model, MACs and bank
bytes counted from the column commands; figures of packed blocks are kept by shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from kcompiler.backends.npu.memo import BoundedStore
from kcompiler.backends.pim.isa import HOST_OPS, Command
from kcompiler.backends.pim.kernels.emitter import DEVICE_BLOCKS, Emitter, Packed, block_descs, unpack
from kcompiler.backends.pim.kernels.matvec import emit_matvec, matvec_layout, partial_bytes
from kcompiler.backends.pim.kernels.stream import stream_layout
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.backends.pim.timing import simulate_channel


@dataclass
class Kernel:
    """One node's work on the device: its commands (host and channel streams, in program order),
    some of which may be `Packed` blocks (a timing-mode program)."""

    name: str
    op_type: str
    commands: list[Command | Packed]
    rows_used: int = 0
    _time: tuple | None = field(default=None, repr=False)
    _counts: tuple | None = field(default=None, repr=False)

    def time(self, spec: PimSpec):
        """(seconds, activations, columns, io_bytes) of the slowest channel / summed."""
        if self._time is None:
            self._figures(spec)
        return self._time

    def counts(self, spec: PimSpec) -> tuple[int, int]:
        """(MACs, bank bytes) of the executed column commands: a MAC_ABK column is `lanes` multiplies in
        each of its `units` units (lanes holding the zero padding of a chunk included: the hardware
        multiplies them); EW ops read one or two operand columns and write one."""
        if self._counts is None:
            self._figures(spec)
        return self._counts

    def _figures(self, spec: PimSpec) -> None:
        blocks = [c for c in self.commands if isinstance(c, Packed) and c.kind in DEVICE_BLOCKS]
        plain = any(not isinstance(c, Packed) and c.op not in HOST_OPS for c in self.commands)
        if blocks and not plain:
            # blocks equal but for staging addresses and a common shift of their rows have equal
            # figures: addresses are not timed, and rows are only compared with each other (a row
            # switch), which a common shift keeps (a channel's first column command opens its row
            # either way); so one representative per shape, at addresses 0 and lowest row 0, is timed
            lo = min((r for b in blocks for r in b.rows), default=0)
            rep = tuple(Packed(b.kind, b.args, (0,) * len(b.addrs), tuple(r - lo for r in b.rows)) for b in blocks)
            key = (spec, rep)
            hit = _FIGURES.get(key)
            if hit is None:
                hit = _command_figures(spec, unpack(rep, spec))
                _FIGURES.put(key, hit, 1)
            self._time, self._counts = hit
        else:
            self._time, self._counts = _command_figures(spec, unpack(self.commands, spec))


def _command_figures(spec: PimSpec, commands: list[Command]) -> tuple[tuple, tuple[int, int]]:
    """(time, counts) of a command list: the channel streams through the timing model, the column
    commands counted."""
    by: dict[int, list[Command]] = {}
    macs = dram = 0
    for c in commands:
        if c.op in HOST_OPS:
            continue
        by.setdefault(c.channel, []).append(c)
        if c.op == "MAC_ABK":
            macs += c.count * c.units * spec.simd_lanes
            dram += c.count * c.units * spec.column_bytes
        elif c.op in ("EWADD", "EWMUL"):
            dram += 3 * c.count * c.units * spec.column_bytes
        elif c.op == "AF":
            dram += 2 * c.count * c.units * spec.column_bytes
    per = [simulate_channel(spec, by[ch]) for ch in sorted(by)]
    seconds = max((p.seconds for p in per), default=0.0)
    time = (seconds, sum(p.activations for p in per), sum(p.columns for p in per), sum(p.io_bytes for p in per))
    return time, (macs, dram)


#: a node's figures from its packed blocks' shapes (one entry per distinct shape: a few per model)
_FIGURES = BoundedStore(4096)


def clear() -> None:
    """Forget every result kept by shape (layouts, block descriptors, figures): a benchmark measuring
    a first compile."""
    _FIGURES.clear()
    for f in (matvec_layout, stream_layout, block_descs):
        f.cache_clear()


def build_matvec(spec: PimSpec, name: str, op_type: str, G: int, M: int, N: int, K: int) -> Kernel:
    """The channel streams of one matrix-vector product alone (for timing studies: no host commands)."""
    em = Emitter(spec)
    lay = matvec_layout(spec, G, N, K)
    x = em.alloc(2 * G * M * lay.Kp)
    part = em.alloc(partial_bytes(spec, lay, M))
    emit_matvec(em, lay, G, M, N, x, part, 0)
    return Kernel(name, op_type, em.cmds, lay.rows)
