"""Collecting a program's commands: the Emitter (commands, staging allocations, descriptors, rows,
constants) and the packed blocks a timing-mode program keeps instead of their commands."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kcompiler.backends.pim.isa import HOST, Command
from kcompiler.backends.pim.kernels.matvec import emit_matvec, emit_partial_sums, emit_weight_writes, matvec_layout
from kcompiler.backends.pim.kernels.stream import emit_stream_op, emit_stream_transfer, stream_layout
from kcompiler.backends.pim.spec import PimSpec

ALIGN = 64


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
        for key in block_descs(self.spec, kind, b.args):
            self.desc(*key)
        self.cmds.append(b)


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
def block_descs(spec: PimSpec, kind: str, args: tuple) -> tuple[tuple[int, ...], ...]:
    """The descriptors a block registers, in the order it first uses them (they depend on its shape only)."""
    if kind == "matvec":
        return ()
    em = _DescriptorsOnly(spec)
    Packed(kind, args, (0, 0), (0, 0, 0)).expand(em)  # (expand reads the addresses and rows it needs)
    return tuple(em.descs)
