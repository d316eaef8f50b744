"""The PIM command set, in the manner of SK hynix AiM's ISR instructions, plus the host-side
commands that move activations in and out of the device's staging area.

Every command is self-contained: what executing it needs is in its fields (channel, bank/row/
column ranges, global-buffer and staging addresses, accumulator registers, flags, element dtype).
Device commands (``engine == "channel"``) run on one channel's banks and buffers; ``count`` is
the op size (column commands for MAC/EW/AF and bank transfers), and the 32-byte bursts a transfer
occupies the bus for follow from its fields, so the timing model and the simulator read the same
numbers. Row activations and precharges are implied by the row address and inserted by the
timing model, as AiM's controller does. Host commands (``engine == "host"``) convert dtypes,
scale FP16 operands by powers of two and reduce read-back partial sums in the staging area.

A command is a fixed 64-byte record; a field an opcode does not use must be zero (the simulator
refuses a command whose unused field is set, so no field can change silently).
"""

from __future__ import annotations

import math
import operator
import re
import struct
from dataclasses import dataclass, fields

BURST = 32
#: ``channel`` of a host command
HOST = 0xFFFF

#: element dtypes of the staging area, banks and buffers: code -> (name, bytes)
DTYPES: dict[int, tuple[str, int]] = {0: ("f32", 4), 1: ("bf16", 2), 2: ("f16", 2), 3: ("i64", 8), 4: ("i32", 4)}
DTYPE_CODE = {name: code for code, (name, _) in DTYPES.items()}

# flags
CLR = 1  #: MAC_ABK: clear the accumulators before the first column
RESIDENT = 2  #: WR_BK/RD_BK: moves device-resident state (a KV cache already in the banks): no bus time
PAIR = 4  #: HCOPY: shift by reg + reg+1 (a product's two operand shifts)
UP = 8  #: HCOPY: shift up (by 2**s, undoing a scale), not down
FLAG_NAMES = {CLR: "clr", RESIDENT: "resident", PAIR: "pair", UP: "up"}

#: opcode -> (number, engine, fields it uses, meaning); a table, so `asm`, the encoder, the
#: simulator and the timing model agree
OPCODES: dict[str, tuple[int, str, tuple[str, ...], str]] = {
    "WR_GB": (1, "channel", ("addr", "gb", "length"),
              "copy `length` device-dtype elements from staging[addr] into the channel's global buffer at gb"),
    "MAC_ABK": (2, "channel", ("row", "bank", "col", "count", "units", "gb", "acc", "nacc", "flags"),
                "all-bank multiply-accumulate of `count` columns (row, bank of each unit, col..) with the buffer"),
    "RD_MAC": (3, "channel", ("units", "acc", "nacc", "addr"),
               "read accumulators acc..acc+nacc-1 of units 0..units-1 into staging[addr] (accumulator dtype)"),
    "WR_BK": (4, "channel", ("row", "bank", "col", "count", "units", "addr", "desc", "flags"),
              "write `count` columns of every unit from staging (strides: descriptor `desc`)"),
    "EWADD": (5, "channel", ("row", "row2", "row3", "bank", "col", "count", "units"),
              "all-bank element-wise add of rows row and row2 into row3, columns col.."),
    "EWMUL": (6, "channel", ("row", "row2", "row3", "bank", "col", "count", "units"),
              "all-bank element-wise multiply of rows row and row2 into row3, columns col.."),
    "AF": (7, "channel", ("row", "row3", "bank", "col", "count", "units", "fn"),
           "all-bank activation function `fn` of row into row3, columns col.."),
    "RD_BK": (8, "channel", ("row", "bank", "col", "count", "units", "addr", "desc", "flags"),
              "read `count` columns of every unit into staging (strides: descriptor `desc`)"),
    "HZERO": (16, "host", ("addr", "length"), "zero `length` bytes at staging[addr]"),
    "HCOPY": (17, "host", ("addr", "addr2", "dtype", "dtype2", "desc", "reg", "flags"),
              "strided copy staging[addr2] (dtype2) -> staging[addr] (dtype), scaled by 2**-sreg[reg]"),
    "HADD": (18, "host", ("addr", "addr2", "dtype2", "desc"),
             "staging[addr] (f32) += staging[addr2] (dtype2): the host's reduction of partial sums"),
    "HMUL": (19, "host", ("addr", "length", "imm"), "staging[addr] (f32) *= imm"),
    "HRANGE": (20, "host", ("fn", "addr", "length", "addr2", "count", "col", "imm", "gb", "reg"),
               "FP16 range: shift registers reg, reg+1 from the operands' largest magnitudes (rule fn)"),
}
#: flags each opcode may carry (any other bit set is refused)
ALLOWED_FLAGS = {"MAC_ABK": CLR, "WR_BK": RESIDENT, "RD_BK": RESIDENT, "HCOPY": PAIR | UP}
_BY_NUMBER = {num: name for name, (num, *_rest) in OPCODES.items()}
HOST_OPS = frozenset(op for op, (_, eng, _, _) in OPCODES.items() if eng == "host")
COLUMN_OPS = frozenset(("MAC_ABK", "EWADD", "EWMUL", "AF"))

#: fixed 64-byte record: op, flags, dtype, dtype2, bank, fn, reg, pad | channel, units, acc, nacc |
#: row, row2, row3, col, count, gb, addr, addr2, length, desc, step | imm (float32)
FORMAT = "<BBBBBBBBHHHHIIIIIIIIIIIf"
_FMT = struct.Struct(FORMAT)
ENCODED_SIZE = _FMT.size
assert ENCODED_SIZE == 64

#: HRANGE rules (fn): which FP16 scaling the host applies (elementwise.py explains the numerics)
RANGE_RULES = ("one", "add", "mul", "matvec_const", "matvec")


@dataclass(frozen=True, slots=True)
class Command:
    op: str
    channel: int = HOST
    row: int = 0
    col: int = 0
    count: int = 0
    #: AF: which function of the activation-function table (isa-independent: the program's table)
    fn: int = 0
    flags: int = 0
    bank: int = 0
    units: int = 0
    acc: int = 0
    nacc: int = 0
    row2: int = 0
    row3: int = 0
    gb: int = 0
    addr: int = 0
    addr2: int = 0
    length: int = 0
    desc: int = 0
    dtype: int = 0
    dtype2: int = 0
    reg: int = 0
    imm: float = 0.0
    #: index of the node (step) of the program this command belongs to
    step: int = 0

    @property
    def engine(self) -> str:
        return OPCODES[self.op][1]

    def encode(self) -> bytes:
        return _FMT.pack(OPCODES[self.op][0], self.flags, self.dtype, self.dtype2, self.bank, self.fn, self.reg, 0,
                         self.channel, self.units, self.acc, self.nacc, self.row, self.row2, self.row3, self.col,
                         self.count, self.gb, self.addr, self.addr2, self.length, self.desc, self.step,
                         self.imm)

    @staticmethod
    def decode(data: bytes) -> "Command":
        return Command.decode_fields(*_FMT.unpack(data))

    FORMAT = FORMAT

    @staticmethod
    def decode_fields(num, flags, dtype, dtype2, bank, fn, reg, _p0, channel, units, acc, nacc, row, row2, row3,
                      col, count, gb, addr, addr2, length, desc, step, imm) -> "Command":
        return Command(_BY_NUMBER[num], channel, row, col, count, fn, flags, bank, units, acc, nacc, row2, row3, gb,
                       addr, addr2, length, desc, dtype, dtype2, reg, imm, step)

    # ---- derived figures the timing model uses ------------------------------------------------
    def bursts(self, lanes: int, element_bytes: int, acc_bytes: int, lanes_per_acc: int) -> int:
        """32-byte bursts a transfer occupies the channel's bus for: the bytes it moves."""
        if self.op == "WR_GB":
            nbytes = self.length * element_bytes
        elif self.op == "RD_MAC":
            nbytes = self.units * self.nacc * lanes_per_acc * acc_bytes
        elif self.op in ("WR_BK", "RD_BK"):
            nbytes = self.count * self.units * lanes * element_bytes
        else:
            return 0
        return max(1, math.ceil(nbytes / BURST))

    def unused_fields(self) -> list[str]:
        """Fields set that the opcode does not use (must all be zero)."""
        if not any(_UNUSED_GET[self.op](self)):
            return []
        return [n for n in _UNUSED[self.op] if getattr(self, n)]

    def text(self) -> str:
        used = OPCODES[self.op][2]
        where = "host " if self.channel == HOST else f"ch{self.channel:<3}"
        parts = []
        for name in used:
            v = getattr(self, name)
            if name == "flags":
                if v:
                    parts.append("flags=" + "|".join(n for b, n in FLAG_NAMES.items() if v & b)
                                 + (f"|{v & ~sum(FLAG_NAMES)}" if v & ~sum(FLAG_NAMES) else ""))
            elif name in ("dtype", "dtype2"):
                parts.append(f"{name}={DTYPES[v][0] if v in DTYPES else v}")
            elif name == "imm":
                parts.append(f"imm={v!r}")
            else:
                parts.append(f"{name}={v}")
        return f"{self.op:<8} {where} " + " ".join(parts) + f" @{self.step}"

    @staticmethod
    def parse(text: str) -> "Command":
        """The inverse of `text` (the assembler)."""
        tok = text.split()
        op, where = tok[0], tok[1]
        kw: dict = {"channel": HOST if where == "host" else int(where[2:])}
        for t in tok[2:]:
            if t.startswith("@"):
                kw["step"] = int(t[1:])
                continue
            k, _, v = t.partition("=")
            if k == "flags":
                val = 0
                for part in v.split("|"):
                    val |= next((b for b, n in FLAG_NAMES.items() if n == part), None) or int(part)
                kw[k] = val
            elif k in ("dtype", "dtype2"):
                kw[k] = DTYPE_CODE[v] if v in DTYPE_CODE else int(v)
            elif k == "imm":
                kw[k] = float(v)
            else:
                kw[k] = int(v)
        if op not in OPCODES or not re.fullmatch(r"host|ch\d+", where):
            raise ValueError(f"not a PIM command: {text!r}")
        c = Command(op, **kw)
        return c


_UNUSED = {op: tuple(f.name for f in fields(Command) if f.name not in set(used) | {"op", "step", "channel"})
           for op, (_n, _e, used, _m) in OPCODES.items()}


_UNUSED_GET = {op: (operator.attrgetter(*names) if len(names) > 1 else (lambda c, n=names: tuple(getattr(c, x) for x in n)))
               for op, names in _UNUSED.items()}


def encode_all(commands) -> bytes:
    return b"".join(c.encode() for c in commands)


def decode_all(blob: bytes) -> list[Command]:
    return [Command.decode_fields(*f) for f in struct.iter_unpack(FORMAT, blob)]
