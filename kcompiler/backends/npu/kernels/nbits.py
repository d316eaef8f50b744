"""4- and 8-bit weights dequantised in the datapath: ONNX Runtime's ``com.microsoft.MatMulNBits``.

Y[M, N] = A[M, K] @ dequant(B)[N, K]ᵀ, B as ORT's matmul_nbits_quantizer writes it: uint8 [N, blocks,
block_size * bits / 8] (bits=4: two weights a byte, low nibble first; bits=8: one), scales [N, blocks]
(A's float dtype), zero points uint8 [N, ceil(blocks * bits / 8)] packed the same way (absent: 8 or 128,
the middle of uint4 or uint8).

The weights stay packed in DRAM and cross it at 4 (or 8) bits each plus their scales (~4.5 bits a
4-bit weight at block 32): per core, for each (N tile, K tile) the DMA loads the packed bytes, the tile's scales
and zero points into the scratchpad; one vector ``dequant`` (fields: the packed operand's dtype u4,
the scales, the zero points, arg = the block size; dtype u4 or u8) widens them to the chip's float dtype (fp16 on
atom, bf16 on rngd) as the B tile of one MATMUL at that dtype's rate. A is loaded once per core (and
converted to that dtype when it is another float); the float32 accumulator is rounded to A's dtype
on the way out. Loads, dequant and MATMUL are double-buffered, so a decode GEMV is DRAM-bound.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Cost, Support, no
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import systolic_cycles, vector_cycles
from kcompiler.backends.npu.emit import dma, make, split_range
from kcompiler.backends.npu.isa import CH, NONE, DTYPE_BYTES
from kcompiler.backends.npu.kernels.attrs import IR_DTYPE, a_int, shape
from kcompiler.backends.npu.kernels.codegen import Codegen
from kcompiler.backends.npu.kernels.common import Kernel, sram_aligned
from kcompiler.backends.npu.timing import mac_rate
from kcompiler.errors import LoweringError

#: the chip float dtypes the weights are widened to, in order of preference
_COMPUTE = (("fp16", "f16"), ("bf16", "bf16"))
_FLOATS = ("f32", "f16", "bf16")


def compute_dtype(spec) -> str | None:
    """The instruction dtype the chip's array multiplies dequantised weights at (None: no 16-bit float)."""
    for chip, name in _COMPUTE:
        if chip in spec.array.dtypes:
            return name
    return None


def nbits_check(node: ir.Node, spec) -> Support:
    """Whether the NPU lowers this MatMulNBits: 4 or 8 bits, constant packed weights, scales and uint8 zero
    points, no bias or g_idx, static shapes, A in a float dtype, and a chip with a 16-bit float rate."""
    if a_int(node, "bits", 4) not in (4, 8):
        return no(f"bits={a_int(node, 'bits', 4)} (the NPU dequantises 4- and 8-bit weights)")
    if compute_dtype(spec) is None:
        return no("the chip lists no fp16/bf16 rate to multiply dequantised weights at")
    ins = list(node.inputs) + [None] * (6 - len(node.inputs))
    a, b, scales, zp = ins[:4]
    if any(v is not None for v in ins[4:]):
        return no("MatMulNBits with g_idx or a bias runs on the host")
    if a is None or IR_DTYPE.get(a.dtype) not in _FLOATS or shape(a) is None or shape(node.outputs[0]) is None:
        return no("A must be a float tensor of static shape")
    for v, what in ((b, "B"), (scales, "scales")) + (((zp, "zero_points"),) if zp is not None else ()):
        if not opinfo.is_const(v):
            return no(f"{what} must be a compile-time constant")
    if zp is not None and zp.dtype != ir.DataType.UINT8:
        return no("float zero points are not lowered (uint8 packed ones are)")
    if scales.dtype != a.dtype:
        return no("scales must have A's dtype")
    k, bs = a_int(node, "K", 0), a_int(node, "block_size", 0)
    if bs < 16 or bs & (bs - 1) or shape(a)[-1] != k:
        return no(f"block_size={bs}, K={k} do not describe A")
    plan = NBitsKernel(node, spec).plan()
    if plan is None:
        return no("A and one tile of packed weights do not fit the scratchpad")
    return YES


class NBitsKernel(Kernel):
    kind = "gemm"

    def __init__(self, node, spec):
        super().__init__(node, spec)
        self.K, self.N = a_int(node, "K", 0), a_int(node, "N", 0)
        self.bs = a_int(node, "block_size", 32)
        self.nb = math.ceil(self.K / self.bs)
        a_sh = shape(node.inputs[0])
        self.M = math.prod(a_sh[:-1])
        self.adt = IR_DTYPE[node.inputs[0].dtype]
        self.sdt = IR_DTYPE[node.inputs[2].dtype]
        self.cdt = compute_dtype(spec) or "f16"
        self.has_zp = len(node.inputs) > 3 and node.inputs[3] is not None
        self.bits = a_int(node, "bits", 4)
        self.per_byte = 8 // self.bits  # weights (and zero points) a byte
        self.wdt = "u4" if self.bits == 4 else "u8"  # the dequant's packed dtype
        self.per_core = split_range(self.N, spec.cores, 8)

    # ---- tiling ----
    def _slots(self, tn: int, tk: int) -> list[int]:
        """Bytes of each scratchpad slot: A as loaded, A converted, then (double-buffered) packed weights,
        scales, zero points, the dequantised B tile and the accumulator."""
        ce, ae = DTYPE_BYTES[self.cdt], DTYPE_BYTES[self.adt]
        kb = math.ceil(tk / self.bs)
        a_raw = self.M * self.K * ae if self.adt != self.cdt else 0
        pb = self.per_byte
        return [a_raw, self.M * self.K * ce] + 2 * [tn * math.ceil(tk / pb), tn * kb * DTYPE_BYTES[self.sdt],
                                                    tn * math.ceil(kb / pb), tn * tk * ce, self.M * tn * 4]

    def plan(self) -> tuple[int, int] | None:
        """(tn, tk): the N and K tile; tk all of K or whole pairs of blocks (a byte of zero points)."""
        unit = 2 * self.bs
        # K tiles of at most 1024: several steps per core, so the loads of one overlap the dequant and
        # MATMUL of the one before (a decode GEMV is a stream of weights)
        tks = [self.K] if self.K <= 1024 else []
        t = max(unit, 1024 // unit * unit)
        while t >= unit:
            if t < self.K:
                tks.append(t)
            t = t // 2 // unit * unit
        tn = min(max(hi - lo for lo, hi in self.per_core), 2 * self.spec.array.cols)
        while tn >= 1:
            for tk in tks:
                if sum(sram_aligned(s) for s in self._slots(tn, tk)) <= self.spec.sram_bytes:
                    return tn, tk
            tn //= 2
        return None

    def cost(self) -> Cost:
        """DRAM bytes of the packed weights at the chip's bandwidth, against the array and vector time."""
        s = self.spec
        wbytes = self.dram_bytes()
        n_core = max(hi - lo for lo, hi in self.per_core)
        rate, _ = mac_rate(s, self.cdt)
        mx = systolic_cycles(s.array.rows, s.array.cols, s.array.dataflow, self.M, self.K, n_core, rate)
        vx = vector_cycles(s.vector.lanes, s.vector.latency["mul"], s.vector.cycles_per_elem["mul"], n_core * self.K)
        mem = wbytes / s.dram_bytes_per_cycle
        return Cost(cycles=int(max(mx, vx, mem)) + s.issue_cycles, macs=self.macs)

    def dram_bytes(self) -> int:
        """What the op moves: packed weights, scales, zero points, A and Y."""
        return (self.N * self.nb * (self.bs // self.per_byte) + self.N * self.nb * DTYPE_BYTES[self.sdt]
                + (self.N * math.ceil(self.nb / self.per_byte) if self.has_zp else 0)
                + self.M * (self.K + self.N) * DTYPE_BYTES[self.adt])

    # ---- emission ----
    def emit(self, cg: Codegen, op: int) -> None:
        node = self.node
        tn, tk = self.plan()
        A = cg.layout(node.inputs[0])
        Bq, S, Y = cg.layout(node.inputs[1]), cg.layout(node.inputs[2]), cg.layout(self.out)
        if self.has_zp:
            Z = cg.layout(node.inputs[3])
        else:  # the default zero point (8 for uint4, 128 for uint8): one byte broadcast over every block
            mid = 1 << (self.bits - 1)
            Z = cg.const(f"{node.name}/zp{mid}", "u8", (1,), lambda: [mid])
        for core, (n0, n1) in enumerate(self.per_core):
            cg.extend(_Core(self, core, op, (n0, n1), tn, tk, A, Bq, S, Z, Y).emit())


class _Core:
    """One core's instructions of a MatMulNBits: its N range in (N tile, K tile) steps."""

    def __init__(self, k: NBitsKernel, core, op, nr, tn, tk, A, Bq, S, Z, Y):
        self.k, self.core, self.op = k, core, op
        self.nr, self.tn, self.tk = nr, tn, tk
        self.A, self.Bq, self.S, self.Z, self.Y = A, Bq, S, Z, Y
        addr, self.slot = 0, []
        for size in k._slots(tn, tk):
            self.slot.append(addr)
            addr += sram_aligned(size)
        self.code: list = []
        self.mm_sig: dict[int, int] = {}  # MATMUL index -> position in code (signals mx>vx when waited)
        self.covered = -1  # the last MATMUL the vector queue has waited for

    def iterations(self):
        k = self.k
        n0, n1 = self.nr
        tiles = [(a, min(n1, a + self.tn)) for a in range(n0, n1, self.tn)]
        ks = [(a, min(k.K, a + self.tk)) for a in range(0, k.K, self.tk)]
        return [(t, na, nb, ka, kb, j == 0, j == len(ks) - 1) for t, (na, nb) in enumerate(tiles)
                for j, (ka, kb) in enumerate(ks)], len(tiles)

    def _vec_wait_mm(self, i: int) -> int:
        """The wait bits a vector instruction needs to run after MATMUL i (none when the in-order vector
        queue already waited for it or a later one)."""
        if i < 0 or i <= self.covered:
            return 0
        self.covered = i
        self.mm_sig[i] = -1  # patched to signal once the MATMUL is emitted (or now, if it was)
        return CH["mx>vx"]

    def emit(self) -> list:
        k, c, op = self.k, self.core, self.op
        iters, n_out = self.iterations()
        T = len(iters)
        a_raw, a_c = self.slot[0], self.slot[1]
        convert = k.adt != k.cdt
        A = self.A
        if not (A.is_contiguous() and self.Y.is_contiguous()):
            raise LoweringError(f"'{k.node.name}': MatMulNBits reads A and writes Y contiguous")
        self.code.append(dma(isa.LOAD, c, op, k.adt, A.buf, A.off, a_raw if convert else a_c, (k.M, k.K),
                             (k.K if k.M > 1 else 0, 1), signal=CH["ld>vx"] if convert else CH["ld>mx"]))
        if convert:  # A to the compute dtype, once (the MATMULs wait for it through the dequants after it)
            self.code.append(self._vec("copy", a_c, [(a_raw, k.adt)], (1, 1, k.M, k.K), k.cdt, 0, CH["ld>vx"], 0))
        mm_pos: list[int] = []
        for i, (t, na, nb, ka, kb, first, last) in enumerate(iters):
            s = i % 2
            packed, scl, zp, bt, acc = (self.slot[2 + 5 * s + j] for j in range(5))
            acc = self.slot[6 + 5 * (t % 2)]
            self._loads(i, na, nb, ka, kb, packed, scl, zp)
            wait = CH["ld>vx"] | self._vec_wait_mm(i - 2)
            sig = CH["vx>mx"] | (CH["vx>ld"] if i + 2 < T else 0)
            self.code.append(self._dequant(na, nb, ka, kb, packed, scl, zp, bt, wait, sig))
            mm_wait = CH["vx>mx"] | (CH["ld>mx"] if i == 0 and not convert else 0) | \
                (CH["st>mx"] if first and t >= 2 else 0)
            plain = k.adt == "f32"
            mm_sig = CH["mx>st"] if (plain and last) else 0
            mm_pos.append(len(self.code))
            self.code.append(self._matmul(na, nb, ka, kb, a_c, bt, acc, first, mm_wait, mm_sig))
            if not last:
                continue
            shape = (1, 1, k.M, nb - na)
            if not plain:
                self.code.append(self._vec("copy", acc, [(acc, "f32")], shape, k.adt, 0, self._vec_wait_mm(i),
                                           CH["vx>st"]))
            Y = self.Y
            self.code.append(dma(isa.STORE, c, op, k.adt, Y.buf, Y.off + na * Y.esize, acc, (k.M, nb - na),
                                 (k.N if k.M > 1 else 0, 1), wait=CH["mx>st"] if plain else CH["vx>st"],
                                 signal=CH["st>mx"] if t + 2 < n_out else 0))
        for i in self.mm_sig:
            p = mm_pos[i]
            self.code[p] = self.code[p].replace(signal=self.code[p].signal | CH["mx>vx"])
        return self.code

    def _loads(self, i, na, nb, ka, kb, packed, scl, zp) -> None:
        k, c, op = self.k, self.core, self.op
        n, kt = nb - na, kb - ka
        kb0, kb1 = ka // k.bs, math.ceil(kb / k.bs)
        pb = k.per_byte
        row = k.nb * (k.bs // pb)  # packed bytes of one row of B in DRAM
        Bq, S, Z = self.Bq, self.S, self.Z
        ins = [dma(isa.LOAD, c, op, "u8", Bq.buf, Bq.off + na * row + ka // pb, packed, (n, math.ceil(kt / pb)),
                   (row if n > 1 else 0, 1)),
               dma(isa.LOAD, c, op, k.sdt, S.buf, S.off + (na * k.nb + kb0) * S.esize, scl, (n, kb1 - kb0),
                   (k.nb if n > 1 else 0, 1))]
        if k.has_zp:
            zrow = math.ceil(k.nb / pb)
            ins.append(dma(isa.LOAD, c, op, "u8", Z.buf, Z.off + na * zrow + kb0 // pb, zp,
                           (n, math.ceil((kb1 - kb0) / pb)), (zrow if n > 1 else 0, 1)))
        elif i == 0:
            ins.append(dma(isa.LOAD, c, op, "u8", Z.buf, Z.off, self.slot[4], (1,), (0,)))
        for j, x in enumerate(ins):
            self.code.append(x.replace(wait=CH["vx>ld"] if (j == 0 and i >= 2) else 0,
                                       signal=CH["ld>vx"] if j == len(ins) - 1 else 0))

    def _dequant(self, na, nb, ka, kb, packed, scl, zp, bt, wait, sig):
        """B tile (n, k) := (packed - zero point) * scale, one scale and zero point per block."""
        k = self.k
        n = nb - na
        if not k.has_zp:
            zp, zmask = self.slot[4], 0xF  # the one default zero point (slot of iteration 0)
        else:
            zmask = 0
        keep = (4 if n > 1 else 0) | (8 if kb - ka > 1 else 0)
        ins = make(isa.VECTOR, self.core, self.op, wait, sig, isa.VFN["dequant"], dst=bt, src0=packed, src1=scl,
                   src2=zp, src3=NONE, n0=1, n1=1, n2=n, n3=kb - ka,
                   bcast=isa.pack_masks([0, 0, 0, zmask & keep]), dtypes=isa.pack_dtypes([k.cdt, k.wdt, k.sdt, k.wdt]),
                   arg=k.bs)
        return ins

    def _vec(self, fn, dst, srcs, shape, dst_dt, arg, wait, sig):
        srcs = list(srcs) + [None] * (4 - len(srcs))
        addrs = [s[0] if s else NONE for s in srcs]
        return make(isa.VECTOR, self.core, self.op, wait, sig, isa.VFN[fn], dst=dst, src0=addrs[0], src1=addrs[1],
                    src2=addrs[2], src3=addrs[3], n0=shape[0], n1=shape[1], n2=shape[2], n3=shape[3],
                    bcast=0, dtypes=isa.pack_dtypes([dst_dt] + [s[1] if s else None for s in srcs]), arg=arg)

    def _matmul(self, na, nb, ka, kb, a_c, bt, acc, first, wait, sig):
        k = self.k
        m, n, kt = k.M, nb - na, kb - ka
        aux = isa.DT[k.cdt] | (0 if first else isa.ACCUMULATE)
        return make(isa.MATMUL, self.core, self.op, wait, sig, aux, a=a_c + ka * DTYPE_BYTES[k.cdt], b=bt, acc=acc,
                    m=m, n=n, k=kt, a_sm=k.K if m > 1 else 0, a_sk=1 if kt > 1 else 0, b_sk=1 if kt > 1 else 0,
                    b_sn=kt if n > 1 else 0, acc_sm=n if m > 1 else 0, acc_sn=1 if n > 1 else 0, g=1)
