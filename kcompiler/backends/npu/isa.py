"""The NPU instruction set: self-contained instructions, a fixed binary encoding, assembler text.

Every instruction carries what executing it needs: memory addresses, element dtypes, shapes,
strides, flags and immediates. The functional simulator (sim/) computes from these fields
and the memory images alone; the ``op`` field only says which op of the program an
instruction belongs to, for profiles and error messages, and is never used to compute.

Memory: each device has a DRAM image, addressed as (buffer, byte offset) through the
program's buffer table (buffer = a named region of DRAM: a weight, an input, an activation);
each core has a byte-addressed scratchpad SRAM. The scratchpad holds nothing across a
BARRIER: an op reads only what its own instructions put there.

Engines and tokens: every instruction runs on one engine queue of one core (``dma_in``,
``matrix``, ``vector``, ``dma_out``); BARRIER runs on all of them. Dependencies between the
queues of a core are explicit tokens, as in VTA's load/compute/store queues: an instruction
may *wait* on channels (pop one token from each before it starts) and *signal* channels (push
one token on each when it ends). Tokens order time only; values follow program order.

Encoding (little-endian, 74 bytes): opcode u8, core u8, wait u16, signal u16, op u16, aux u16,
then sixteen 32-bit operand fields in the order of ``OPCODES[opcode][2]`` (signed fields are
two's complement; unused trailing fields are zero).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kcompiler.errors import ArtifactError

NFIELDS = 16
ENCODING = struct.Struct("<BBHHHH16I")
MAGIC = b"KNPU\x03\x00\x00\x00"
ALL_CORES = 0xFF
#: an absent operand address (an optional VECTOR operand)
NONE = 0xFFFFFFFF

# ---- element dtypes (4-bit codes) -----------------------------------------------------------
DTYPES = ("f32", "f16", "bf16", "i8", "i32", "i64", "u8", "u16", "u32", "u64",
          # appended (issue 14; earlier codes keep theirs): FP8 E4M3 (no infinities, "fn") and E5M2,
          # and 4-bit integers packed two per byte (element 2i in the low nibble, as ONNX packs them)
          "f8e4m3", "f8e5m2", "i4", "u4",
          # appended (issue 13): FP8 E4M3FNUZ and E5M2FNUZ (no negative zero, no infinities, one NaN), which
          # only the exact functions' cast reads and writes (the array does not multiply them)
          "f8e4m3fnuz", "f8e5m2fnuz")
DT = {name: i for i, name in enumerate(DTYPES)}
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "i8": 1, "i32": 4, "i64": 8, "u8": 1, "u16": 2, "u32": 4, "u64": 8,
               "f8e4m3": 1, "f8e5m2": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1}
#: bits of one element of every dtype: the 4-bit ones have no whole byte size (DTYPE_BYTES leaves them
#: out, so nothing addresses them as bytes by mistake): an operand of them is its packed bytes ("u8")
DTYPE_BITS = {**{k: 8 * v for k, v in DTYPE_BYTES.items()}, "i4": 4, "u4": 4}
FLOAT_DTYPES = ("f32", "f16", "bf16")
FP8_DTYPES = ("f8e4m3", "f8e5m2")
#: dtypes the systolic array multiplies (into the float32 accumulator): FP8 products are exact in float32
ARRAY_DTYPES = FLOAT_DTYPES + FP8_DTYPES
#: a DMA (LOAD, STORE, COPY; GATHER's data) moves elements of a size, without interpreting them:
#: its aux (GATHER: low nibble) is the size code
ESIZES = (1, 2, 4, 8)
ESIZE_CODE = {n: i for i, n in enumerate(ESIZES)}
RAW = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}


def esize_code(dtype: str) -> int:
    """The DMA size code of elements of `dtype`."""
    return ESIZE_CODE[DTYPE_BYTES[dtype]]

_DMA = ("n0", "n1", "n2", "n3", "s0", "s1", "s2", "s3", "p0", "p1", "p2")

# opcode -> (mnemonic, engine, operand field names)
LOAD, STORE, COPY, FILL, GATHER, MATMUL, VECTOR, CONFIG, BARRIER = range(9)
OPCODES = {
    # DRAM (buf, off) -> SRAM: an n0 x n1 x n2 x n3 block read at DRAM element strides s0..s3,
    # written at SRAM element pitches p0, p1, p2 (and 1); aux: element size code (ESIZES)
    LOAD: ("ld", "dma_in", ("buf", "off", "sram") + _DMA),
    # SRAM -> DRAM (buf, off): the same block read at pitches p0..p2 and written at strides s0..s3
    STORE: ("st", "dma_out", ("buf", "off", "sram") + _DMA),
    # DRAM -> DRAM: a block read at strides s0..s3 and written at strides d0..d3; aux: element size code
    COPY: ("copy", "dma_out", ("sbuf", "soff", "dbuf", "doff", "n0", "n1", "n2", "n3",
                               "s0", "s1", "s2", "s3", "d0", "d1", "d2", "d3")),
    # DRAM block := the immediate `value` (float32 bits) at strides d0..d3; aux: dtype
    FILL: ("fill", "dma_out", ("buf", "off", "n0", "n1", "n2", "n3", "d0", "d1", "d2", "d3", "value")),
    # indirect DMA, DRAM -> DRAM: dst[o, j, :] = src[o, idx[j], :] for o < outer, j < count, `inner`
    # elements per row; src rows at `sstride` elements per o and `inner` per row (`rows` of them: an
    # index i < 0 means rows + i), dst at `dstride` per o; aux: element size code | index dtype << 4
    GATHER: ("gather", "dma_out", ("sbuf", "soff", "ibuf", "ioff", "dbuf", "doff", "outer", "count", "inner",
                                   "sstride", "rows", "dstride")),
    # acc[g, m, n] (+)= sum_k A[g, m, k] * B[g, k, n]: operands at SRAM byte addresses with element
    # strides, the float32 accumulator too; aux: dtype | accumulate << 4 | window << 5. In window mode A
    # is not stored: the feeder reads it as im2col of an input patch at `a` (see WINDOW_FIELDS).
    # Integer operands (dtype i8 or u8): aux bits 8-11 hold B's dtype (i8 or u8), the accumulator is
    # int32 and exact (see INT_DTYPES); float operands leave those bits zero. aux bit 6 (ZERO_POINTS, plain
    # integer MATMULs only): the feeder subtracts the zero-point registers (CONFIG unit 2) from A and B
    MATMUL: ("mm", "matrix", ("a", "b", "acc", "m", "n", "k", "a_sm", "a_sk", "b_sk", "b_sn", "acc_sm", "acc_sn",
                              "g", "a_sg", "b_sg", "acc_sg")),
    # dst := fn(src0..src3, imm0..imm2) over an n0 x n1 x n2 x n3 tile, every operand dense in SRAM
    # with size 1 in the dims its 4-bit mask of `bcast` marks (dst bits 0-3, src0 4-7, ... src3
    # 16-19; bits 20-23: the dims a reduction or normalisation runs over); `dtypes` packs 4-bit
    # dtype codes (dst bits 0-3, src0 4-7, ...); aux: the function (VECTOR_FNS)
    VECTOR: ("vec", "vector", ("dst", "src0", "src1", "src2", "src3", "n0", "n1", "n2", "n3", "bcast", "dtypes",
                               "imm0", "imm1", "imm2", "arg")),
    # sets the window registers of one unit of a core (aux 0: the matrix feeder, 1: the vector unit):
    # kernel, strides, dilations, pads, input and output extents; flags bit 0: pads count in averages;
    # for the matrix feeder, flags bits 8-15: the byte a padding tap reads (an integer conv's input zero
    # point, in A's dtype; zero unless the window reads padding). aux 2: the matrix feeder's zero-point
    # registers, flags bits 0-7 A's zero point and bits 8-15 B's (bytes in their dtypes), every other
    # field zero
    CONFIG: ("cfg", "matrix", ("kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "pb", "pr", "h", "w", "oh", "ow",
                               "flags")),
    BARRIER: ("barrier", "all", ()),
}
MNEMONIC = {v[0]: k for k, v in OPCODES.items()}
ENGINES = ("dma_in", "matrix", "vector", "dma_out")
#: in window mode, these MATMUL fields hold the patch geometry instead of A's strides
WINDOW_FIELDS = {"a_sm": "p0", "a_sk": "r0", "a_sg": "rows"}
#: fields holding signed values
SIGNED = frozenset({"s0", "s1", "s2", "s3", "d0", "d1", "d2", "d3", "p0", "p1", "p2", "a_sm", "a_sk", "b_sk", "b_sn",
                    "acc_sm", "acc_sn", "a_sg", "b_sg", "acc_sg", "pt", "pl", "pb", "pr", "sstride", "dstride"})
#: fields holding float32 bits
FLOAT_FIELDS = frozenset({"value", "imm0", "imm1", "imm2"})
#: fields holding an address (printed in hex)
ADDRESS_FIELDS = frozenset({"off", "sram", "soff", "doff", "ioff", "a", "b", "acc", "dst", "src0", "src1", "src2",
                            "src3"})

#: token channels of a core (bit i of wait/signal)
CHANNELS = ("ld>mx", "mx>ld", "mx>vx", "vx>mx", "vx>st", "st>vx", "ld>vx", "vx>ld", "st>mx", "mx>st")
CH = {name: 1 << i for i, name in enumerate(CHANNELS)}

ACCUMULATE = 1 << 4
WINDOW = 1 << 5
#: MATMUL aux: the feeder subtracts its zero-point registers from A and B (integer operands, plain GEMMs)
ZERO_POINTS = 1 << 6
#: CONFIG aux of each unit's registers
CONFIG_UNITS = ("matrix", "vector", "zp")
#: integer MATMUL operands (exact int32 accumulation); B's dtype code sits at aux bit B_DTYPE_SHIFT
INT_DTYPES = ("i8", "u8")
B_DTYPE_SHIFT = 8
#: the matrix feeder's CONFIG flags bits holding the pad byte
PAD_SHIFT = 8

#: vector functions (the aux field of VECTOR): name -> (cost class, operands read, work per element).
#: Work multiplies the tile's element count in the timing model (a window function's work per
#: element is its kernel's taps, from the unit's CONFIG).
VECTOR_FNS: dict[str, tuple[str, int, float]] = {
    "copy": ("move", 1, 1.0),  # dst := src0 (a dtype conversion when they differ)
    "add": ("alu", 2, 1.0), "sub": ("alu", 2, 1.0), "mul": ("mul", 2, 1.0), "div": ("div", 2, 1.0),
    "pow": ("transcendental", 2, 1.0), "max": ("alu", 2, 1.0), "min": ("alu", 2, 1.0),
    "fma": ("mul", 3, 1.0),  # src0 * src1 + src2 (inference batch norm)
    "axpy": ("mul", 2, 1.0),  # src0 + imm0 * src1
    "scale": ("mul", 1, 1.0),  # src0 * imm0 + imm1
    "relu": ("alu", 1, 1.0), "leakyrelu": ("mul", 1, 1.0), "clip": ("alu", 1, 1.0),
    "sigmoid": ("transcendental", 1, 1.0), "tanh": ("transcendental", 1, 1.0), "exp": ("transcendental", 1, 1.0),
    "log": ("transcendental", 1, 1.0), "erf": ("transcendental", 1, 1.0), "gelu": ("transcendental", 1, 1.0),
    "gelu_tanh": ("transcendental", 1, 1.0), "silu": ("transcendental", 1, 1.0), "sqrt": ("transcendental", 1, 1.0),
    "neg": ("alu", 1, 1.0), "abs": ("alu", 1, 1.0), "reciprocal": ("div", 1, 1.0), "sign": ("alu", 1, 1.0),
    "floor": ("alu", 1, 1.0), "ceil": ("alu", 1, 1.0), "softplus": ("transcendental", 1, 1.0),
    "elu": ("transcendental", 1, 1.0), "hardsigmoid": ("mul", 1, 1.0), "hardswish": ("mul", 1, 1.0),
    "softmax": ("transcendental", 1, 3.0),
    "layernorm": ("reduce", 3, 4.0),  # (x - mean) / sqrt(var + imm0) * src1 (+ src2)
    "rmsnorm": ("reduce", 2, 3.0),  # x / sqrt(mean(x^2) + imm0) * src1
    "reduce_sum": ("reduce", 1, 1.0), "reduce_mean": ("reduce", 1, 1.0), "reduce_max": ("reduce", 1, 1.0),
    "maxpool": ("pool", 1, 1.0), "avgpool": ("pool", 1, 1.0),  # window of the vector unit's CONFIG
    "dwconv": ("mul", 2, 1.0),  # depthwise conv: src0 planes, src1 per-channel taps, window of CONFIG
    "lrn": ("transcendental", 1, 1.0),  # across channels (the masked dim): arg = size; imm0..2 alpha beta bias
    # online softmax of one score tile (see sim/): imm0 scale; arg bit 1 hides keys outside imm1 <= j - i <= imm2
    # (causal and sliding-window attention; bit added for issue 13, earlier programs leave it 0)
    "attn_step": ("transcendental", 4, 3.0),
    "attn_final": ("alu", 2, 1.0),  # the output tile: accumulator / running sum
    # appended after the first ISA (earlier functions keep their codes, so programs stay valid)
    "reduce_rstd": ("reduce", 1, 2.0),  # 1 / sqrt(mean((x - mean)^2) + imm0): LayerNorm's InvStdDev
    "reduce_min": ("reduce", 1, 1.0),
    "logsoftmax": ("transcendental", 1, 3.0), "hardmax": ("reduce", 1, 2.0),  # one-hot of the first max
    "sin": ("transcendental", 1, 1.0), "cos": ("transcendental", 1, 1.0), "tan": ("transcendental", 1, 1.0),
    "asin": ("transcendental", 1, 1.0), "acos": ("transcendental", 1, 1.0), "atan": ("transcendental", 1, 1.0),
    "sinh": ("transcendental", 1, 1.0), "cosh": ("transcendental", 1, 1.0), "asinh": ("transcendental", 1, 1.0),
    "acosh": ("transcendental", 1, 1.0), "atanh": ("transcendental", 1, 1.0),
    "softsign": ("div", 1, 1.0), "mish": ("transcendental", 1, 1.0), "round": ("alu", 1, 1.0),
    "selu": ("transcendental", 1, 1.0),  # imm0 alpha, imm1 gamma
    "celu": ("transcendental", 1, 1.0),  # imm0 alpha
    "thresholdedrelu": ("alu", 1, 1.0),  # imm0 alpha
    "shrink": ("alu", 1, 1.0),  # imm0 bias, imm1 lambd
    "swish": ("transcendental", 1, 1.0),  # x * sigmoid(imm0 * x)
    "prelu": ("mul", 2, 1.0),  # src0 < 0 ? src0 * src1 : src0
    # appended for issue 14 (see sim/lowbit.py): dst's dtype (int8/uint8/FP8) says what quant rounds to,
    # src0's (int8/uint8/int4/uint4/FP8) what dequant reads; src1 = scale, src2 = zero point (optional);
    # arg = 0: the scale and zero point broadcast by their masks; arg = B > 0: one per block of B
    # elements along dim 3 (4-bit weights' blocks)
    "quant": ("mul", 2, 1.0),  # saturate(round_half_even(src0 / src1) + src2)
    "dequant": ("mul", 2, 1.0),  # (src0 - src2) * src1
    # integer datapath (sim/intvec.py): requant: dst (i8/u8) := saturate(round_half_even((src0 + src1) * src2 /
    # 2^imm1) + imm0) from an int32 accumulator src0, int32 offsets src1 and Q31 multipliers src2 (one right
    # shift imm1 for the tile); iadd: dst (i32) := src0 + src1 (int32, wrapping); requant_f32: as requant with
    # float32 scales src2, saturate(nearbyint(f32(src0 + src1) * src2) + imm0)
    "requant": ("mul", 3, 1.0), "iadd": ("alu", 2, 1.0), "requant_f32": ("mul", 3, 1.0),
    # appended for issue 13: the exact functions (sim/maskvec.py) compute in the operands' own dtype, not
    # float32: comparisons write booleans (u8 0/1), logic reads and writes them, where selects src1 where
    # src0 is true else src2, cast converts any two dtypes (imm0: FP8 saturation; arg: a boolean
    # destination), the int_* functions and shifts wrap at the dtype's width, mod's arg is ONNX's fmod,
    # argmax/argmin write int64 indices along one dim (arg: the last of equal values), trilu keeps
    # src0 on one side of the diagonal offset src1 (int64; arg 1: upper; imm0, imm1: the tile's first
    # row and column in the matrix, rows along dim 2, columns along dim 3)
    "eq": ("alu", 2, 1.0), "lt": ("alu", 2, 1.0), "gt": ("alu", 2, 1.0), "le": ("alu", 2, 1.0),
    "ge": ("alu", 2, 1.0), "and": ("alu", 2, 1.0), "or": ("alu", 2, 1.0), "xor": ("alu", 2, 1.0),
    "not": ("alu", 1, 1.0), "where": ("alu", 3, 1.0), "cast": ("move", 1, 1.0),
    "int_add": ("alu", 2, 1.0), "int_sub": ("alu", 2, 1.0), "int_mul": ("mul", 2, 1.0),
    "int_div": ("div", 2, 1.0), "mod": ("div", 2, 1.0), "int_max": ("alu", 2, 1.0), "int_min": ("alu", 2, 1.0),
    "int_neg": ("alu", 1, 1.0), "int_abs": ("alu", 1, 1.0), "shl": ("alu", 2, 1.0), "shr": ("alu", 2, 1.0),
    "argmax": ("reduce", 1, 1.0), "argmin": ("reduce", 1, 1.0), "trilu": ("alu", 2, 1.0),
    # appended for issue 13 (float reductions and losses): the Reduce* ops ONNX has beyond sum/mean/max/min,
    # each over the masked dims: sum |x|, sqrt(sum x^2), sum x^2, log(sum x), log(sum exp x) (max-shifted),
    # prod x
    "reduce_l1": ("reduce", 1, 1.0), "reduce_l2": ("reduce", 1, 2.0), "reduce_sumsquare": ("reduce", 1, 1.0),
    "reduce_logsum": ("reduce", 1, 1.0), "reduce_logsumexp": ("reduce", 1, 3.0), "reduce_prod": ("reduce", 1, 1.0),
    # negative log-likelihood (kernels/loss.py): src0 log-probabilities with the classes along dim 2, src1 integer
    # targets (broadcast over dim 2), src2 class weights (optional, varying only along dim 2); dst := -src0[t] *
    # src2[t] summed over the masked dims other than 2; arg bit 0: targets equal to imm0 count 0 (ignore_index),
    # bit 1: divided by the sum of the weights src2[t] (of the targets not ignored) over the same dims
    "nll": ("alu", 2, 3.0),
    # LpNormalization along the masked dims: src0 / (sum |src0|^imm0)^(1/imm0), imm0 = 1 or 2 (0 where the norm is 0)
    "lp_normalize": ("reduce", 1, 3.0),
}
VFN_NAMES = tuple(VECTOR_FNS)
VFN = {name: i for i, name in enumerate(VFN_NAMES)}
VFN_CLASS = {name: v[0] for name, v in VECTOR_FNS.items()}
WINDOW_FNS = frozenset({"maxpool", "avgpool", "dwconv"})


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def pack_masks(masks: "list[int]", axes: int = 0) -> int:
    """The `bcast` field: one 4-bit broadcast mask per operand (dst first), then the axis mask."""
    v = 0
    for i, m in enumerate(masks):
        v |= (m & 0xF) << (4 * i)
    return v | (axes & 0xF) << 20


def pack_dtypes(names: "list[str | None]") -> int:
    v = 0
    for i, n in enumerate(names):
        v |= (DT[n] if n is not None else 0) << (4 * i)
    return v


def names_of(opcode: int) -> tuple[str, ...]:
    return OPCODES[opcode][2]


#: per opcode: operand field name -> its position in `args`
FIELD_INDEX = {op: {n: i for i, n in enumerate(v[2])} for op, v in OPCODES.items()}
#: per opcode: for each operand field, whether it holds a signed value
_SIGNED_AT = {op: tuple(n in SIGNED for n in v[2]) for op, v in OPCODES.items()}
_HEADER = frozenset({"core", "op", "wait", "signal", "aux"})
_object_setattr = object.__setattr__
_object_new = object.__new__


def instr(opcode: int, core: int, op: int, wait: int, signal: int, aux: int, args: tuple[int, ...]) -> "Instr":
    """An Instr whose operand count the caller has made right (a large model's program has
    hundreds of thousands: this skips the frozen dataclass's per-field setattr and the count
    check). The object is the one Instr(...) builds: same attributes, in the same order."""
    ins = _object_new(Instr)
    _object_setattr(ins, "__dict__", {"opcode": opcode, "core": core, "op": op, "wait": wait, "signal": signal,
                                      "aux": aux, "args": args})
    return ins


@dataclass(frozen=True)
class Instr:
    opcode: int
    core: int = 0
    op: int = 0  # the op this instruction belongs to (profiling and messages only)
    wait: int = 0  # channel bitmask
    signal: int = 0
    aux: int = 0  # dtype / flags / function, by opcode
    args: tuple[int, ...] = field(default_factory=tuple)  # as stored: unsigned 32-bit

    def __post_init__(self):
        names = OPCODES[self.opcode][2]
        if len(self.args) != len(names):
            raise ValueError(f"{OPCODES[self.opcode][0]} takes {len(names)} operands, got {len(self.args)}")

    @property
    def engine(self) -> str:
        if self.opcode == CONFIG:
            return "vector" if self.aux == 1 else "matrix"
        return OPCODES[self.opcode][1]

    @property
    def mnemonic(self) -> str:
        return OPCODES[self.opcode][0]

    def arg(self, name: str) -> int:
        """A field's value (signed fields as signed integers)."""
        at = FIELD_INDEX[self.opcode].get(name)
        if at is None:
            raise ValueError(f"{OPCODES[self.opcode][0]} has no field {name!r}")
        v = self.args[at]
        return signed(v) if name in SIGNED else v

    def fields(self) -> dict[str, int]:
        return {n: (signed(v) if s else v)
                for n, s, v in zip(OPCODES[self.opcode][2], _SIGNED_AT[self.opcode], self.args)}

    def replace(self, **changes) -> "Instr":
        """A copy with some header fields (opcode excluded) or operand fields changed."""
        get = changes.get
        if _HEADER.issuperset(changes):  # the common case: tokens set on an emitted instruction
            return instr(self.opcode, get("core", self.core), get("op", self.op), get("wait", self.wait),
                         get("signal", self.signal), get("aux", self.aux), self.args)
        head = {k: changes.pop(k) for k in ("core", "op", "wait", "signal", "aux") if k in changes}
        args = list(self.args)
        names = OPCODES[self.opcode][2]
        for k, v in changes.items():
            args[names.index(k)] = int(v) & 0xFFFFFFFF
        return Instr(self.opcode, head.get("core", self.core), head.get("op", self.op), head.get("wait", self.wait),
                     head.get("signal", self.signal), head.get("aux", self.aux), tuple(args))

    # ---- binary ------------------------------------------------------------------------
    def encode(self) -> bytes:
        args = tuple(self.args) + (0,) * (NFIELDS - len(self.args))
        return ENCODING.pack(self.opcode, self.core, self.wait, self.signal, self.op, self.aux, *args)

    @classmethod
    def decode(cls, raw: bytes) -> "Instr":
        opcode, core, wait, signal, op, aux, *args = ENCODING.unpack(raw)
        if opcode not in OPCODES:
            raise ArtifactError(f"NPU program: unknown opcode {opcode}")
        n = len(OPCODES[opcode][2])
        if any(args[n:]):
            raise ArtifactError(f"NPU program: a {OPCODES[opcode][0]} instruction has non-zero unused fields")
        return cls(opcode, core, op, wait, signal, aux, tuple(args[:n]))

    # ---- text --------------------------------------------------------------------------
    def text(self) -> str:
        mn, _, names = OPCODES[self.opcode]
        core = "*" if self.core == ALL_CORES else str(self.core)
        parts = [f"{mn:<7}", f"c{core}"]
        if self.opcode == VECTOR:
            parts.append(f"fn={VFN_NAMES[self.aux]}" if self.aux < len(VFN_NAMES) else f"fn=#{self.aux}")
        elif self.opcode in (LOAD, STORE, COPY):
            parts.append(f"eb={_eb(self.aux)}")
        elif self.opcode == FILL:
            parts.append(f"dt={_dt(self.aux & 0xF)}")
        elif self.opcode == GATHER:
            parts.append(f"eb={_eb(self.aux & 0xF)} it={_dt(self.aux >> 4 & 0xF)}")
        elif self.opcode == MATMUL:
            parts.append(f"dt={_dt(self.aux & 0xF)} accum={self.aux >> 4 & 1} win={self.aux >> 5 & 1}")
            if self.aux & ZERO_POINTS:
                parts.append("zp=1")
            if self.aux >> B_DTYPE_SHIFT:
                parts.append(f"bdt={_dt(self.aux >> B_DTYPE_SHIFT & 0xF)}")
        elif self.opcode == CONFIG:
            parts.append(f"unit={CONFIG_UNITS[self.aux] if self.aux < len(CONFIG_UNITS) else self.aux}")
        window = self.opcode == MATMUL and self.aux & WINDOW
        for n, v in zip(names, self.args):
            label = WINDOW_FIELDS.get(n, n) if window else n
            parts.append(f"{label}={_fmt(n, v)}")
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
        if opcode == VECTOR:
            aux = VFN[kv["fn"]]
        elif opcode in (LOAD, STORE, COPY):
            aux = _eb_code(kv["eb"])
        elif opcode == FILL:
            aux = DT[kv["dt"]]
        elif opcode == GATHER:
            aux = _eb_code(kv["eb"]) | DT[kv["it"]] << 4
        elif opcode == MATMUL:
            aux = DT[kv["dt"]] | int(kv["accum"]) << 4 | int(kv["win"]) << 5 | int(kv.get("zp", 0)) << 6
            if "bdt" in kv:
                aux |= DT[kv["bdt"]] << B_DTYPE_SHIFT
        elif opcode == CONFIG:
            aux = CONFIG_UNITS.index(kv["unit"]) if kv["unit"] in CONFIG_UNITS else int(kv["unit"])
        else:
            aux = 0
        window = opcode == MATMUL and aux & WINDOW
        args = []
        for n in OPCODES[opcode][2]:
            s = kv[WINDOW_FIELDS.get(n, n) if window else n]
            args.append(f32_bits(float(s)) if n in FLOAT_FIELDS else int(s, 0) & 0xFFFFFFFF)

        def mask(s):
            return 0 if not s else sum(CH[c] for c in s.split(","))

        return cls(opcode, core, int(kv["op"]), mask(kv.get("wait")), mask(kv.get("sig")), aux, tuple(args))


def _dt(code: int) -> str:
    return DTYPES[code] if code < len(DTYPES) else f"#{code}"


def _eb(code: int) -> str:
    return str(ESIZES[code]) if code < len(ESIZES) else f"#{code}"


def _eb_code(text: str) -> int:
    return int(text[1:]) if text.startswith("#") else ESIZE_CODE[int(text)]


def _fmt(name: str, v: int) -> str:
    if name in FLOAT_FIELDS:
        return repr(bits_f32(v))
    if v == NONE and name in ADDRESS_FIELDS:
        return "none"
    if name in ADDRESS_FIELDS:
        return f"0x{v:x}"
    if name in ("bcast", "dtypes"):
        return f"0x{v:x}"
    return str(signed(v) if name in SIGNED else v)


def encode_program(instrs: list[Instr]) -> bytes:
    return MAGIC + struct.pack("<I", len(instrs)) + b"".join(i.encode() for i in instrs)


def decode_program(raw: bytes) -> list[Instr]:
    if raw[:8] != MAGIC:
        raise ArtifactError("NPU program: bad magic (not an NPU instruction stream of this version)",
                            hint="recompile the model")
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
            out.append(Instr.parse(s.replace("=none", f"={NONE}")))
    return out


def disassemble(instrs: list[Instr]) -> str:
    return "\n".join(i.text() for i in instrs)
