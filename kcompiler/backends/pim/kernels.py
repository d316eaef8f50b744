"""PIM kernels: bank layout and command generation (planning side; values are never touched here).

A matrix-vector kernel computes ``y[g, m, n] = sum_k x[g, m, k] * w[g, n, k]`` for G groups
(one for a weight matrix; batch x heads for attention over a KV cache) and M input vectors.
The matrix is cut into *items*: an item is the work all units of one channel do in lock
step with one buffer content — on a ``dot`` device (AiM) one output row per unit over one
buffer-sized chunk of k, on a ``simd`` device (HBM-PIM) up to lanes x accumulators outputs
per unit over a range of k. Items go to channels in contiguous blocks; each unit stores its
part of an item at the same bank offset as every other unit of its channel, packed
row-major into DRAM rows, so one all-bank command serves the whole channel.

Staging layouts the commands address (element dtype of the device, zero padded):
  dot:  x as [G, M, Kp], w as [G, N, Kp] with Kp = K rounded up to the lanes (a column's worth)
  simd: x as [G, M, K],  w as [G, K, Np] with Np = N rounded up to a unit's outputs
The bank-transfer descriptor (ustride, kstride, grp, phase) says where column j of unit u comes
from: ``u * ustride + ((phase + j) // grp) * kstride + ((phase + j) % grp) * lanes``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from kcompiler.backends.npu.memo import BoundedStore
from kcompiler.backends.pim.isa import CLR, HOST, HOST_OPS, Command
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.backends.pim.timing import simulate_channel

ALIGN = 64


@dataclass(frozen=True)
class Item:
    g: int
    n0: int
    n1: int
    k0: int
    k1: int


class Emitter:
    """Collects one program's commands, staging allocations, descriptors, rows and constants."""

    def __init__(self, spec: PimSpec, packed: bool = False):
        self.spec = spec
        #: keep a product's command blocks as `Packed` entries (timing mode) instead of emitting them
        self.packed = packed
        self.cmds: list[Command | Packed] = []
        self.staging = 0
        self.descs: list[tuple[int, ...]] = []
        self._desc_index: dict[tuple[int, ...], int] = {}
        self.rows = 0
        self.step = 0
        self.consts: list[tuple[int, bytes]] = []
        self.regions: list[tuple[int, int]] = []

    def alloc(self, nbytes: int) -> int:
        """A staging buffer of its own (the simulator refuses an access crossing a buffer's end)."""
        addr = self.staging
        self.staging = addr + max(ALIGN, -(-int(nbytes) // ALIGN) * ALIGN)
        self.regions.append((addr, addr + max(int(nbytes), 1)))
        return addr

    def const(self, raw: bytes) -> int:
        addr = self.alloc(len(raw))
        self.consts.append((addr, raw))
        return addr

    def desc(self, *vals: int) -> int:
        key = tuple(int(v) for v in vals) + (0,) * (12 - len(vals))
        i = self._desc_index.get(key)
        if i is None:
            i = self._desc_index[key] = len(self.descs)
            self.descs.append(key)
        return i

    def reserve_rows(self, n: int) -> int:
        base = self.rows
        self.rows += n
        return base

    def emit(self, op: str, channel: int = HOST, **kw) -> None:
        self.cmds.append(Command(op, channel, step=self.step, **kw))

    def block(self, kind: str, args: tuple, addrs: tuple = (), rows: tuple = ()) -> None:
        """Emit a block of commands (`Packed` says which), or in packed mode keep it as one entry. Its
        descriptors are registered now either way, in the order emitting it registers them, so the
        descriptor table, and every command's fields, are those of the emitted program."""
        b = Packed(kind, tuple(int(a) if not isinstance(a, str) else a for a in args),
                   tuple(int(a) for a in addrs), tuple(int(r) for r in rows), self.step)
        if not self.packed:
            b.expand(self)
            return
        for key in _block_descs(self.spec, kind, b.args):
            self.desc(*key)
        self.cmds.append(b)


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
    for f in (matvec_layout, stream_layout, _block_descs):
        f.cache_clear()


@dataclass(frozen=True)
class Packed:
    """A block of commands kept, in a timing-mode program, as the arguments of the call that emits
    them; `expand` emits exactly those commands (what the program's command list, encoding and
    assembly hold). The timing model reads a node's blocks through `Kernel.time`, which times one
    emitted representative of blocks equal but for staging addresses and a common shift of rows.

    kind       args                  addrs             rows              emits
    "weights"  (G, N, K, flags)      (matrix,)         (base,)           emit_weight_writes: a [G, N, K]
                                                                         matrix into its bank columns
    "matvec"   (G, M, N, K)          (x, partials)     (base,)           emit_matvec: the MAC streams
    "partials" (G, M, N, K, dtype)   (partials, y)     ()                emit_partial_sums: host HADDs
    "stream"   (op, numel, flags,    (staging,) for    (row,) / EW: (a,  emit_stream_transfer (WR_BK,
                fn)                   a transfer        b, out) / AF:     RD_BK) / emit_stream_op (EWADD,
                                                        (a, out)          EWMUL, AF)"""

    kind: str
    args: tuple
    addrs: tuple = ()
    rows: tuple = ()
    step: int = 0

    def expand(self, em: "Emitter") -> None:
        """Emit the block's commands into `em` (at the block's step)."""
        spec, a = em.spec, self.args
        step, em.step = em.step, self.step
        try:
            if self.kind == "weights":
                G, N, K, flags = a
                em.cmds.extend(emit_weight_writes(em, matvec_layout(spec, G, N, K), G, N, K, self.addrs[0],
                                                  self.rows[0], flags=flags))
            elif self.kind == "matvec":
                G, M, N, K = a
                emit_matvec(em, matvec_layout(spec, G, N, K), G, M, N, *self.addrs, self.rows[0])
            elif self.kind == "partials":
                G, M, N, K, dtype = a
                emit_partial_sums(em, matvec_layout(spec, G, N, K), M, N, *self.addrs, dtype)
            elif self.kind == "stream":
                op, numel, flags, fn = a
                sl = stream_layout(spec, numel)
                if op in ("WR_BK", "RD_BK"):
                    emit_stream_transfer(em, sl, numel, op, self.addrs[0], self.rows[0], flags=flags)
                else:
                    rows = self.rows if op != "AF" else (self.rows[0], 0, self.rows[1])
                    emit_stream_op(em, sl, numel, op, rows, fn=fn)
            else:
                raise ValueError(f"unknown packed block kind {self.kind!r}")
        finally:
            em.step = step


#: blocks holding device commands (the others are host commands, which the timing model skips)
DEVICE_BLOCKS = ("weights", "matvec", "stream")


def unpack(entries, spec: PimSpec | None, descs=None) -> list[Command]:
    """The commands of a list of commands and packed blocks. With the program's descriptor table
    `descs` (which holds every descriptor a block uses: Emitter.block registered them), the
    commands' descriptor indices are the program's; without, they index a scratch table (enough for
    timing, which does not read descriptors)."""
    if not any(isinstance(e, Packed) for e in entries):
        return list(entries)
    em = None
    out: list[Command] = []
    for e in entries:
        if not isinstance(e, Packed):
            out.append(e)
            continue
        if em is None:
            em = Emitter(spec)
            for key in (descs if descs is not None else ()):
                em.desc(*key)
            known = len(em.descs)
        em.cmds = out
        e.expand(em)
    if descs is not None and em is not None and len(em.descs) != known:
        raise AssertionError("a packed block uses a descriptor its program's table does not hold")
    return out


class _DescriptorsOnly(Emitter):
    """Registers the descriptors of what it is asked to emit, and keeps no command."""

    def emit(self, op: str, channel: int = HOST, **kw) -> None:
        pass


@functools.lru_cache(maxsize=1024)
def _block_descs(spec: PimSpec, kind: str, args: tuple) -> tuple[tuple[int, ...], ...]:
    """The descriptors a block registers, in the order it first uses them (they depend on its shape only)."""
    if kind == "matvec":
        return ()
    em = _DescriptorsOnly(spec)
    Packed(kind, args, (0, 0), (0, 0, 0)).expand(em)  # (expand reads the addresses and rows it needs)
    return tuple(em.descs)


def _segments(offset: int, ncols: int, spec: PimSpec) -> list[tuple[int, int, int, int]]:
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


def matvec_items(spec: PimSpec, G: int, N: int, K: int) -> list[Item]:
    upc = spec.units_per_channel
    kc = min(K, spec.input_buffer_elems)
    items = []
    if spec.mac_dataflow == "dot":
        for g in range(G):
            for k0 in range(0, K, kc):
                for n0 in range(0, N, upc):
                    items.append(Item(g, n0, min(N, n0 + upc), k0, min(K, k0 + kc)))
        return items
    per_unit = spec.simd_lanes * spec.accumulators_per_unit
    block = upc * per_unit
    nblocks = G * math.ceil(N / block)
    # split k too when there are fewer output blocks than channels (partials reduced on the host)
    splits = max(1, min(math.ceil(spec.channels / nblocks), math.ceil(K / kc)))
    krange = math.ceil(math.ceil(K / splits) / kc) * kc
    for g in range(G):
        for k0 in range(0, K, krange):
            for n0 in range(0, N, block):
                items.append(Item(g, n0, min(N, n0 + block), k0, min(K, k0 + krange)))
    return items


def _split(items: list, parts: int) -> list[list]:
    q, r = divmod(len(items), parts)
    out, i = [], 0
    for p in range(parts):
        n = q + (1 if p < r else 0)
        out.append(items[i:i + n])
        i += n
    return out


@dataclass
class MatvecLayout:
    per_channel: list[list[tuple[Item, int, int, int, int]]]  # (item, column offset, columns, units, regs)
    rows: int
    Kp: int
    Np: int


@functools.lru_cache(maxsize=512)
def matvec_layout(spec: PimSpec, G: int, N: int, K: int) -> MatvecLayout:
    """Where each item of the product goes (a function of the shape: cached, and shared by its callers,
    which only read it)."""
    lanes = spec.simd_lanes
    per_channel = []
    max_cols = 0
    for items in _split(matvec_items(spec, G, N, K), spec.channels):
        layout, offset = [], 0
        for it in items:
            klen = it.k1 - it.k0
            if spec.mac_dataflow == "dot":
                ncols, units, regs = -(-klen // lanes), it.n1 - it.n0, 1
            else:
                units = math.ceil((it.n1 - it.n0) / (lanes * spec.accumulators_per_unit))
                regs = min(spec.accumulators_per_unit, math.ceil((it.n1 - it.n0) / lanes))
                ncols = klen * regs
            layout.append((it, offset, ncols, units, regs))
            offset += ncols
        max_cols = max(max_cols, offset)
        per_channel.append(layout)
    per_row = spec.columns_per_row * spec.banks_per_unit
    Kp = -(-K // lanes) * lanes if spec.mac_dataflow == "dot" else K
    # simd: a row of w spans the outputs the units' registers cover (all of them read: no dead padding)
    Np = N if spec.mac_dataflow == "dot" else max(
        it.n0 + units * regs * lanes for layout in per_channel for it, _o, _n, units, regs in layout)
    return MatvecLayout(per_channel, -(-max_cols // per_row) if max_cols else 0, Kp, Np)


def emit_weight_writes(em: Emitter, lay: MatvecLayout, G: int, N: int, K: int, w_addr: int, base_row: int,
                       flags: int = 0) -> list[Command]:
    """WR_BK commands putting a matrix laid out in staging (module docstring) into its bank columns.
    Returned, and emitted only if `em` is given a step (the compiler runs them itself for constants)."""
    s = em.spec
    eb = s.element_bytes
    lanes = s.simd_lanes
    out = []
    for ch, layout in enumerate(lay.per_channel):
        for it, off, ncols, units, regs in layout:
            for r, b, c, n in _segments(off, ncols, s):
                j0 = _seg_start(off, r, b, c, s)
                if s.mac_dataflow == "dot":
                    d, extra = bk_desc(em, lay.Kp, lanes, 1, 0, units, n, lanes)
                    addr = w_addr + ((it.g * N + it.n0) * lay.Kp + it.k0 + j0 * lanes + extra) * eb
                else:
                    per_unit = lanes * s.accumulators_per_unit
                    d, extra = bk_desc(em, per_unit, lay.Np, regs, j0 % regs, units, n, lanes)
                    addr = w_addr + ((it.g * K + it.k0 + j0 // regs) * lay.Np + it.n0 + extra) * eb
                out.append(Command("WR_BK", ch, row=base_row + r, bank=b, col=c, count=n, units=units, addr=addr,
                                   desc=d, flags=flags, step=em.step))
    return out


def bk_desc(em: Emitter, ustride: int, kstride: int, grp: int, phase: int, units: int, count: int,
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


def _seg_start(off: int, row: int, bank: int, col: int, s: PimSpec) -> int:
    """Column index within an item (starting at bank offset `off`) of a segment's first column."""
    return row * s.columns_per_row * s.banks_per_unit + bank * s.columns_per_row + col - off


def emit_matvec(em: Emitter, lay: MatvecLayout, G: int, M: int, N: int, x_addr: int, part_addr: int,
                base_row: int) -> None:
    """The channel streams of y[g,m,:] = W[g] @ x[g,m,:]: each item's MACs, then its RD_MAC into the
    partial-sum slot `partial_slots` gives it (emit_partial_sums adds them up on the host)."""
    s = em.spec
    eb = s.element_bytes
    lanes = s.simd_lanes
    slots = partial_slots(s, lay, M, part_addr)
    for ch, layout in enumerate(lay.per_channel):
        for m in range(M):
            loaded = None
            for it, off, ncols, units, regs in layout:
                row0 = (it.g * M + m) * lay.Kp
                if s.mac_dataflow == "dot":
                    key = (it.g, m, it.k0, it.k1)
                    if key != loaded:
                        em.emit("WR_GB", ch, addr=x_addr + (row0 + it.k0) * eb, gb=0, length=ncols * lanes)
                        loaded = key
                    for i, (r, b, c, n) in enumerate(_segments(off, ncols, s)):
                        j0 = _seg_start(off, r, b, c, s)
                        em.emit("MAC_ABK", ch, row=base_row + r, bank=b, col=c, count=n, units=units, gb=j0 * lanes,
                                acc=0, nacc=1, flags=CLR if i == 0 else 0)
                else:
                    kc = s.input_buffer_elems
                    first = True
                    for k0 in range(it.k0, it.k1, kc):
                        klen = min(kc, it.k1 - k0)
                        em.emit("WR_GB", ch, addr=x_addr + (row0 + k0) * eb, gb=0, length=klen)
                        seg_off = off + (k0 - it.k0) * regs
                        for r, b, c, n in _segments(seg_off, klen * regs, s):
                            j = _seg_start(seg_off, r, b, c, s)
                            em.emit("MAC_ABK", ch, row=base_row + r, bank=b, col=c, count=n, units=units,
                                    gb=j // regs, acc=j % regs, nacc=regs, flags=CLR if first else 0)
                            first = False
                slot = next(slots)[0]
                em.emit("RD_MAC", ch, units=units, acc=0, nacc=regs, addr=slot)


def partial_slots(spec: PimSpec, lay: MatvecLayout, M: int, part_addr: int):
    """(partial-slot address, g, m, n0, n1) of each item's read-back partial sums, in program order
    (channel, vector, item): where emit_matvec's RD_MACs put them."""
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
    slot = part_addr
    for layout in lay.per_channel:
        for m in range(M):
            for it, _off, _ncols, units, regs in layout:
                yield slot, it.g, m, it.n0, it.n1
                slot += -(-units * regs * lpa * acc_bytes // 4) * 4


def vector_desc(n: int) -> tuple[int, ...]:
    """The canonical copy descriptor of n contiguous elements (dims, source and destination strides,
    as backend._merge writes it: a dim of 1 has stride 0)."""
    return (1, 1, 1, n, 0, 0, 0, 1, 0, 0, 0, 1) if n != 1 else (1, 1, 1, 1) + (0,) * 8


def emit_partial_sums(em: Emitter, lay: MatvecLayout, M: int, N: int, part_addr: int, y_addr: int,
                      acc_dtype: int) -> None:
    """The host adds each item's read-back partial sums into y[g, m, n0:n1] (float32, zeroed before)."""
    descs: dict[int, int] = {}
    for slot, g, m, n0, n1 in partial_slots(em.spec, lay, M, part_addr):
        d = descs.get(n1 - n0)
        if d is None:
            d = descs[n1 - n0] = em.desc(*vector_desc(n1 - n0))
        em.emit("HADD", addr=y_addr + ((g * M + m) * N + n0) * 4, addr2=slot, dtype2=acc_dtype, desc=d)


def partial_bytes(spec: PimSpec, lay: MatvecLayout, M: int) -> int:
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
    return sum(M * -(-units * regs * lpa * acc_bytes // 4) * 4 for layout in lay.per_channel
               for _it, _off, _n, units, regs in layout)


def build_matvec(spec: PimSpec, name: str, op_type: str, G: int, M: int, N: int, K: int) -> Kernel:
    """The channel streams of one matrix-vector product alone (for timing studies: no host commands)."""
    em = Emitter(spec)
    lay = matvec_layout(spec, G, N, K)
    x = em.alloc(2 * G * M * lay.Kp)
    part = em.alloc(partial_bytes(spec, lay, M))
    emit_matvec(em, lay, G, M, N, x, part, 0)
    return Kernel(name, op_type, em.cmds, lay.rows)


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


def emit_stream_transfer(em: Emitter, sl: StreamLayout, numel: int, op: str, addr: int, base_row: int,
                         flags: int = 0) -> None:
    """WR_BK (staging -> banks) or RD_BK (banks -> staging) of a stream laid out per channel in
    padded blocks of `sl.block` elements."""
    s = em.spec
    eb = s.element_bytes
    for ch in range(sl.channels):
        n = min(sl.share, numel - ch * sl.share)
        cols = -(-n // sl.units_lanes)
        for r, b, c, cnt in _segments(0, cols, s):
            j0 = _seg_start(0, r, b, c, s)
            em.emit(op, ch, row=base_row + r, bank=b, col=c, count=cnt, units=sl.units,
                    addr=addr + (ch * sl.block + j0 * sl.units_lanes) * eb,
                    desc=bk_desc(em, s.simd_lanes, sl.units_lanes, 1, 0, sl.units, cnt, s.simd_lanes)[0], flags=flags)


def emit_stream_op(em: Emitter, sl: StreamLayout, numel: int, op: str, rows: tuple[int, int, int], fn: int = 0):
    s = em.spec
    for ch in range(sl.channels):
        n = min(sl.share, numel - ch * sl.share)
        cols = -(-n // sl.units_lanes)
        for r, b, c, cnt in _segments(0, cols, s):
            kw = dict(row=rows[0] + r, row3=rows[2] + r, bank=b, col=c, count=cnt, units=sl.units)
            if op == "AF":
                kw["fn"] = fn
            else:
                kw["row2"] = rows[1] + r
            em.emit(op, ch, **kw)


__all__ = ["Emitter", "Kernel", "Packed", "Item", "matvec_items", "matvec_layout", "emit_matvec",
           "emit_partial_sums", "emit_weight_writes", "partial_slots", "stream_layout", "emit_stream_transfer",
           "emit_stream_op", "partial_bytes", "unpack"]
