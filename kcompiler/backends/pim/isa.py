"""The PIM command set, in the manner of SK hynix AiM's ISR instructions.

One command is one host-issued instruction for one channel; ``count`` is its op size (column
commands for MAC/EW ops, 32-byte bursts for transfers), so a command stands for the run of
DRAM column commands the device's controller unrolls. Row activations and precharges are
implied by the row address and inserted by the timing model, as AiM's controller does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: opcode -> (number, meaning); a table, so `asm`, the encoder and the timing model agree
OPCODES: dict[str, tuple[int, str]] = {
    "WR_GB": (1, "write the input vector (chunk) into the channel's global buffer / GRF_A"),
    "MAC_ABK": (2, "all-bank multiply-accumulate of the open rows' columns with the buffer"),
    "RD_MAC": (3, "read the units' accumulators out to the host (partial sums)"),
    "WR_BK": (4, "write an operand into the banks (all-bank broadcast of a row-major stripe)"),
    "EWADD": (5, "all-bank element-wise add of two bank operands"),
    "EWMUL": (6, "all-bank element-wise multiply of two bank operands"),
    "AF": (7, "all-bank activation function (lookup table) of a bank operand"),
    "RD_BK": (8, "read a result stripe out of the banks"),
}
_BY_NUMBER = {num: name for name, (num, _) in OPCODES.items()}
_FMT = struct.Struct("<BBHIHI")  # opcode, flags, channel, row, column, count
BURST = 32


@dataclass(frozen=True, slots=True)
class Command:
    op: str
    channel: int
    row: int = 0
    col: int = 0
    count: int = 1
    #: for AF: which function (index into the program's function table)
    arg: int = 0

    def encode(self) -> bytes:
        return _FMT.pack(OPCODES[self.op][0], self.arg & 0xFF, self.channel, self.row, self.col, self.count)

    @staticmethod
    def decode(data: bytes) -> "Command":
        num, arg, ch, row, col, count = _FMT.unpack(data)
        return Command(_BY_NUMBER[num], ch, row, col, count, arg)

    #: the struct format of one encoded command (for struct.iter_unpack over a whole stream)
    FORMAT = "<BBHIHI"

    @staticmethod
    def decode_fields(num: int, arg: int, ch: int, row: int, col: int, count: int) -> "Command":
        return Command(_BY_NUMBER[num], ch, row, col, count, arg)

    def text(self) -> str:
        if self.op in ("MAC_ABK", "EWADD", "EWMUL", "AF"):
            extra = f" fn={self.arg}" if self.op == "AF" else ""
            return f"{self.op:<8} ch{self.channel:<3} row={self.row} col={self.col} opsize={self.count}{extra}"
        return f"{self.op:<8} ch{self.channel:<3} bursts={self.count}"


ENCODED_SIZE = _FMT.size
