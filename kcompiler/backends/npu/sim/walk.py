"""The reference walk: the memory images of one device, and every instruction decoded and executed
on them in program order (what each instruction class does, given the arrays its accesses view)."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.isa import ACCUMULATE, COPY, FILL, GATHER, LOAD, MATMUL, NONE, STORE, VECTOR, WINDOW, Instr
from kcompiler.backends.npu.sim.data import F32, NP_DTYPES, ProgramData
from kcompiler.backends.npu.sim.decode import Decoder
from kcompiler.backends.npu.sim.faults import _Bad, _fail
from kcompiler.backends.npu.sim.matrix import WindowCols, matmul_into
from kcompiler.backends.npu.sim.memory import Access, data_view
from kcompiler.backends.npu.sim.vector import attn_step, vector_result
from kcompiler.backends.npu.sim.intvec import imatmul_into
from kcompiler.backends.npu.sim.window import _window_cols, _window_rows, pad_value
from kcompiler.errors import ExecutionError


def gather_rows(idx: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    rows = src.shape[1]
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -rows or idx.max() >= rows):
        bad = int(idx[(idx < -rows) | (idx >= rows)][0])
        raise _Bad(f"index {bad} is outside the {rows} rows of the table")
    dst[...] = src[:, np.where(idx < 0, idx + rows, idx), :]


class Machine:
    """The memory images of one device, and the reference walk: every instruction decoded and
    executed on them in program order."""

    def __init__(self, prog: ProgramData):
        self.prog = prog
        self.dec = Decoder(prog)  # first: it refuses a buffer outside the partition's window
        self.dram = np.zeros(prog.dram_bytes, np.uint8)
        for bi, off, data in prog.init:
            at = prog.image_addr(bi) + off
            self.dram[at: at + len(data)] = np.asarray(data, np.uint8)
        self.sram = [np.zeros(prog.sram_bytes, np.uint8) for _ in range(prog.cores)]

    def view(self, a: Access, writeable: bool = False) -> np.ndarray:
        mem = self.dram if a.space == "dram" else self.sram[a.core]
        return data_view(mem, a.addr, a.dtype, a.shape, a.strides, writeable)

    def load_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Write the program's inputs into DRAM where their bindings put them."""
        for bind in self.prog.inputs:
            x = feeds.get(bind.name)
            if x is None:
                raise ExecutionError(f"NPU program: input '{bind.name}' was not given")
            x = np.asarray(x)
            if tuple(x.shape) != tuple(bind.shape):
                raise ExecutionError(f"NPU program: input '{bind.name}' has shape {x.shape}, the program reads "
                                     f"{tuple(bind.shape)}")
            data_view(self.dram, self.prog.image_addr(bind.buf) + bind.off, bind.dtype, bind.shape, bind.strides)[...] = \
                x.astype(NP_DTYPES[bind.dtype], copy=False)

    def step(self, i: int) -> None:
        ins = self.prog.instrs[i]
        try:
            accs = self.dec.accesses(ins)
            execute(ins, accs, lambda a: self.view(a, a.write), self.dec)
        except _Bad as exc:
            raise _fail(self.prog, i, exc) from None
        except (ValueError, FloatingPointError, IndexError) as exc:
            raise _fail(self.prog, i, f"{type(exc).__name__}: {exc}") from None


def execute(ins: Instr, accs: list[Access], view, dec: Decoder) -> None:
    """Execute one (decoded) instruction; `view(access)` gives the array an access reads or writes."""
    oc = ins.opcode
    if oc in (LOAD, STORE, COPY):
        src, dst = accs
        view(dst)[...] = view(src)
    elif oc == FILL:
        (dst,) = accs
        view(dst)[...] = np.asarray(isa.bits_f32(ins.arg("value")), F32).astype(NP_DTYPES[dst.dtype])
    elif oc == GATHER:
        idx_a, src_a, dst_a = accs
        gather_rows(view(idx_a), view(src_a), view(dst_a))
    elif oc == MATMUL:
        op = matmul_operands(ins, accs, dec)
        a = op[1](view(op[0]) if op[0] is not None else None) if op[1] is not None else view(op[0])
        if op[1] is not None:
            a = a[None]
        product_into(ins, dec)(a, view(op[2]), view(op[3]), bool(ins.aux & ACCUMULATE))
    elif oc == VECTOR:
        fn = isa.VFN_NAMES[ins.aux]
        f = ins.fields()
        if fn == "attn_step":
            reads, (state_w, acc_w, dst_w) = accs[:-3], accs[-3:]
            k = 0
            s = view(reads[k])
            k += 1
            mask = None
            if f["src1"] != NONE:
                mask = view(reads[k])
                k += 1
            state = view(reads[k]) if len(reads) > k else None
            acc_in = view(reads[k + 1]) if len(reads) > k + 1 else None
            attn_step(f, s, mask, state, acc_in, view(state_w), view(acc_w), view(dst_w))
            return
        dst = accs[-1]
        window = dec.windows.get((ins.core, 1)) if fn in isa.WINDOW_FNS else None
        r = vector_result(fn, f, [view(a) for a in accs[:-1]], dst.shape, window)
        view(dst)[...] = np.asarray(r).astype(NP_DTYPES[dst.dtype])


def matmul_operands(ins: Instr, accs: list[Access], dec: Decoder):
    """(A access or window box access or None, the window's WindowCols or None, B access, accumulator
    access), from the accesses Decoder.accesses gave: B, the accumulator read when accumulating, A
    (or the patch rows the window reads, if any), the accumulator write."""
    b, acc = accs[0], accs[-1]
    at = 2 if ins.aux & ACCUMULATE else 1
    a = accs[at] if len(accs) > at + 1 else None
    if ins.aux & WINDOW:
        w = dec.windows[(ins.core, 0)]
        f = ins.fields()
        _, _, ylo, _ = _window_rows(w, f["a_sm"], f["m"])
        cols = _window_cols(w)
        pad = pad_value(w, isa.DTYPES[ins.aux & 0xF])
        return a, WindowCols.of(w, f["a_sm"], f["m"], f["k"], ylo, cols[0] if cols else 0, pad), b, acc
    return a, None, b, acc


def product_into(ins: Instr, dec: Decoder):
    """The array's product of a MATMUL: exact int32 for integer operands (less the feeder's zero points when
    the MATMUL says so, as they stand in its core's registers now), else float32."""
    dt = isa.DTYPES[ins.aux & 0xF]
    if dt not in isa.INT_DTYPES:
        return matmul_into
    if not ins.aux & isa.ZERO_POINTS:
        return imatmul_into
    za, zb = dec.zero_points[ins.core]
    za, zb = _signed(za, dt), _signed(zb, isa.DTYPES[ins.aux >> isa.B_DTYPE_SHIFT & 0xF])

    def product(a, b, acc, accumulate):
        imatmul_into(a, b, acc, accumulate, za, zb)
    return product


def _signed(byte: int, dt: str) -> int:
    """A zero-point register's byte as a value of `dt` (i8: two's complement)."""
    return byte - 256 if dt == "i8" and byte >= 128 else byte
