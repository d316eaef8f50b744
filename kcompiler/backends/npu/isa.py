"""The NPU instruction set: dataclasses, a fixed 40-byte binary encoding, assembler text.

Every instruction runs on one engine queue of one core (``dma_in``, ``matrix``,
``vector``, ``dma_out``); BARRIER runs on all of them. Dependencies between the queues
of a core are explicit tokens, as in VTA's load/compute/store queues: an instruction
may *wait* on channels (pop one token from each before it starts) and *signal*
channels (push one token on each when it ends). Channel names read ``from>to``.

Encoding (little-endian, 40 bytes):  opcode u8, core u8, wait u8, signal u8, op u16,
aux u16, then eight u32 operand fields in the order of ``FIELDS[opcode]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kcompiler.errors import ArtifactError

ENCODING = struct.Struct("<BBBBHH8I")
MAGIC = b"KNPU\x01\x00\x00\x00"
ALL_CORES = 0xFF

# opcode -> (mnemonic, engine, operand field names)
LOAD, STORE, COPY, MATMUL, VECTOR, BARRIER = range(6)
OPCODES = {
    LOAD: ("ld", "dma_in", ("buf", "off", "rows", "bytes", "stride", "sram")),
    STORE: ("st", "dma_out", ("buf", "off", "rows", "bytes", "stride", "sram")),
    COPY: ("copy", "dma_out", ("src_bytes", "dst_bytes", "dst_buf")),
    MATMUL: ("mm", "matrix", ("g0", "g1", "m0", "m1", "n0", "n1", "k0", "k1")),
    VECTOR: ("vec", "vector", ("r0", "r1", "elems", "src", "dst", "nin")),
    BARRIER: ("barrier", "all", ()),
}
MNEMONIC = {v[0]: k for k, v in OPCODES.items()}
ENGINES = ("dma_in", "matrix", "vector", "dma_out")

#: token channels of a core (bit i of wait/signal)
CHANNELS = ("ld>mx", "mx>ld", "mx>vx", "vx>mx", "vx>st", "st>vx", "ld>vx", "vx>ld")
CH = {name: 1 << i for i, name in enumerate(CHANNELS)}

#: vector functions (the aux field of VECTOR) and the cost class each is charged at
VECTOR_FNS = (
    ("epilogue", "alu"), ("copy", "move"), ("add", "alu"), ("sub", "alu"), ("mul", "mul"), ("div", "div"),
    ("pow", "transcendental"), ("max", "alu"), ("min", "alu"), ("relu", "alu"), ("leakyrelu", "mul"),
    ("clip", "alu"), ("sigmoid", "transcendental"), ("tanh", "transcendental"), ("exp", "transcendental"),
    ("erf", "transcendental"), ("gelu", "transcendental"), ("sqrt", "transcendental"), ("neg", "alu"),
    ("abs", "alu"), ("reciprocal", "div"), ("log", "transcendental"), ("softmax", "transcendental"),
    ("layernorm", "reduce"), ("batchnorm", "mul"), ("reduce_mean", "reduce"), ("reduce_sum", "reduce"),
    ("reduce_max", "reduce"), ("maxpool", "pool"), ("avgpool", "pool"), ("gap", "reduce"), ("lrn", "transcendental"),
    ("dwconv", "mul"), ("hardsigmoid", "mul"), ("hardswish", "mul"), ("softplus", "transcendental"),
    ("sum", "alu"), ("mean", "mul"), ("elu", "transcendental"), ("sign", "alu"), ("floor", "alu"), ("ceil", "alu"),
    # appended (the aux encoding of earlier entries is fixed): a GEMM epilogue with a
    # transcendental step, fused attention's online softmax, RMSNormalization
    ("epilogue_t", "transcendental"), ("attention", "transcendental"), ("rmsnorm", "reduce"),
)
VFN = {name: i for i, (name, _) in enumerate(VECTOR_FNS)}
VFN_CLASS = dict(VECTOR_FNS)


@dataclass
class Instr:
    opcode: int
    core: int = 0
    op: int = 0  # index of the op (node) in the program this instruction belongs to
    wait: int = 0  # channel bitmask
    signal: int = 0
    aux: int = 0  # VECTOR: function; MATMUL: 1 = accumulate into the existing partial sum
    args: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        names = OPCODES[self.opcode][2]
        if len(self.args) != len(names):
            raise ValueError(f"{OPCODES[self.opcode][0]} takes {len(names)} operands, got {len(self.args)}")

    @property
    def engine(self) -> str:
        return OPCODES[self.opcode][1]

    @property
    def mnemonic(self) -> str:
        return OPCODES[self.opcode][0]

    def arg(self, name: str) -> int:
        return self.args[OPCODES[self.opcode][2].index(name)]

    # ---- binary ------------------------------------------------------------------------
    def encode(self) -> bytes:
        args = tuple(self.args) + (0,) * (8 - len(self.args))
        return ENCODING.pack(self.opcode, self.core, self.wait, self.signal, self.op, self.aux, *args)

    @classmethod
    def decode(cls, raw: bytes) -> "Instr":
        opcode, core, wait, signal, op, aux, *args = ENCODING.unpack(raw)
        if opcode not in OPCODES:
            raise ArtifactError(f"NPU program: unknown opcode {opcode}")
        n = len(OPCODES[opcode][2])
        return cls(opcode, core, op, wait, signal, aux, tuple(args[:n]))

    # ---- text --------------------------------------------------------------------------
    def text(self) -> str:
        mn, _, names = OPCODES[self.opcode]
        core = "*" if self.core == ALL_CORES else str(self.core)
        parts = [f"{mn:<7}", f"c{core}"]
        if self.opcode == VECTOR:
            parts.append(f"fn={VECTOR_FNS[self.aux][0]}")
        elif self.opcode == MATMUL:
            parts.append(f"acc={self.aux}")
        parts += [f"{n}={_fmt(n, v)}" for n, v in zip(names, self.args)]
        parts.append(f"op={self.op}")
        if self.wait:
            parts.append("wait=" + ",".join(c for c in CHANNELS if self.wait & CH[c]))
        if self.signal:
            parts.append("sig=" + ",".join(c for c in CHANNELS if self.signal & CH[c]))
        return " ".join(parts)

    @classmethod
    def parse(cls, line: str) -> "Instr":
        tokens = line.split(";", 1)[0].split()
        if not tokens or tokens[0] not in MNEMONIC:
            raise ValueError(f"not an NPU instruction: {line!r}")
        opcode = MNEMONIC[tokens[0]]
        core_s = tokens[1][1:]
        core = ALL_CORES if core_s == "*" else int(core_s)
        kv = dict(t.split("=", 1) for t in tokens[2:])
        aux = VFN[kv["fn"]] if opcode == VECTOR else int(kv.get("acc", 0))
        names = OPCODES[opcode][2]
        args = tuple(int(kv[n], 0) for n in names)

        def mask(s):
            return 0 if not s else sum(CH[c] for c in s.split(","))

        return cls(opcode, core, int(kv["op"]), mask(kv.get("wait")), mask(kv.get("sig")), aux, args)


def _fmt(name: str, v: int) -> str:
    return f"0x{v:x}" if name in ("sram", "src", "dst", "off") else str(v)


def encode_program(instrs: list[Instr]) -> bytes:
    return MAGIC + struct.pack("<I", len(instrs)) + b"".join(i.encode() for i in instrs)


def decode_program(raw: bytes) -> list[Instr]:
    if raw[:8] != MAGIC:
        raise ArtifactError("NPU program: bad magic (not an NPU instruction stream)")
    (n,) = struct.unpack_from("<I", raw, 8)
    size = ENCODING.size
    if len(raw) != 12 + n * size:
        raise ArtifactError(f"NPU program: truncated ({len(raw)} bytes for {n} instructions)")
    return [Instr.decode(raw[12 + i * size: 12 + (i + 1) * size]) for i in range(n)]


def assemble(text: str) -> list[Instr]:
    out = []
    for line in text.splitlines():
        s = line.split(";", 1)[0].strip()
        if s:
            out.append(Instr.parse(s))
    return out


def disassemble(instrs: list[Instr]) -> str:
    return "\n".join(i.text() for i in instrs)
