"""The static checker: one walk of a program over validity maps of its memories, before it first
runs (bounds, bytes read before written, weights and inputs never written, reserved fields)."""

from __future__ import annotations

import math

import numpy as np

from kcompiler.backends.npu.isa import BARRIER
from kcompiler.backends.npu.sim.data import ROLES, Binding, ProgramData
from kcompiler.backends.npu.sim.decode import Decoder
from kcompiler.backends.npu.sim.faults import _Bad, _fail
from kcompiler.backends.npu.sim.memory import Access, byte_view
from kcompiler.errors import ExecutionError


def check(prog: ProgramData) -> None:
    """Bounds, validity, write protection and reserved fields of every instruction, in program
    order, on validity maps (no data). Raises ExecutionError at the first violation."""
    dram_size = prog.dram_bytes
    for i, b in enumerate(prog.buffers):
        if b.addr < 0 or b.nbytes < 0 or b.role not in ROLES:
            raise ExecutionError(f"NPU program: buffer {i} ('{b.name}') is malformed")
    valid = np.zeros(dram_size, bool)
    protect = np.zeros(dram_size, bool)
    dec = Decoder(prog)  # first: it refuses a buffer outside the partition's window
    for bi, off, data in prog.init:
        b = prog.buffers[bi]
        if off < 0 or off + len(data) > b.nbytes:
            raise ExecutionError(f"NPU program: the initial contents of buffer {bi} ('{b.name}') overflow it")
        at = prog.image_addr(bi) + off
        valid[at: at + len(data)] = True
        if b.role == "const":
            protect[at: at + len(data)] = True
    for bind in prog.inputs:
        a = _binding_access(dec, bind, "input")
        bv = byte_view(valid, a.addr, a.esize, a.shape, a.strides)
        bv[...] = True
        byte_view(protect, a.addr, a.esize, a.shape, a.strides)[...] = True
    sram_valid = [np.zeros(prog.sram_bytes, bool) for _ in range(prog.cores)]
    for i, ins in enumerate(prog.instrs):
        try:
            accs = dec.accesses(ins)
            if ins.opcode == BARRIER:
                for v in sram_valid:
                    v[...] = False  # the scratchpad holds nothing across a barrier
                continue
            for a in accs:
                ext = a.extent()
                if ext is None:
                    continue
                lo, hi = ext
                if lo < a.region[0] or hi > a.region[1]:
                    where = "its buffer" if a.space == "dram" else "the scratchpad"
                    raise _Bad(f"{'writes' if a.write else 'reads'} bytes [{lo - a.region[0]}, {hi - a.region[0]}) "
                               f"outside {where} of {a.region[1] - a.region[0]} bytes")
                vmap = valid if a.space == "dram" else sram_valid[a.core]
                bv = byte_view(vmap, a.addr, a.esize, a.shape, a.strides)
                if a.write and not _injective(a, lo, hi):
                    raise _Bad("writes some bytes more than once (its destination's elements overlap)")
                if a.write:
                    if a.space == "dram" and byte_view(protect, a.addr, a.esize, a.shape, a.strides).any():
                        raise _Bad("writes over a weight or an input of the program")
                    bv[...] = True
                elif not bv.all():
                    bad = np.argwhere(~bv)[0]
                    addr = a.addr + int(sum(int(x) * s * a.esize for x, s in zip(bad[:-1], a.strides))) + int(bad[-1])
                    where = (f"byte {addr - a.region[0]} of buffer" if a.space == "dram" else
                             f"scratchpad byte {addr} of core {a.core},")
                    raise _Bad(f"reads {where} which nothing wrote before it")
        except _Bad as exc:
            raise _fail(prog, i, exc) from None
    for bind in prog.outputs:
        a = _binding_access(dec, bind, "output")
        if not byte_view(valid, a.addr, a.esize, a.shape, a.strides).all():
            raise ExecutionError(f"NPU program: output '{bind.name}' is not (entirely) written by the program",
                                 hint="the program is malformed")


def _injective(a: Access, lo: int, hi: int) -> bool:
    """Whether no two elements of an access share a byte (every write lands each byte once)."""
    n = math.prod(a.shape) * a.esize
    if n > hi - lo:
        return False
    strides = sorted((abs(s) * a.esize, k) for s, k in zip(a.strides, a.shape) if k > 1)
    span = a.esize
    for s, k in strides:  # nested without gaps: injective, no need to look at the bytes
        if s < span:
            break
        span = s * (k - 1) + span
    else:
        return True
    mark = np.zeros(hi - lo, bool)
    byte_view(mark, a.addr - lo, a.esize, a.shape, a.strides)[...] = True
    return int(mark.sum()) == n


def _binding_access(dec: Decoder, bind: Binding, what: str) -> Access:
    try:
        a = dec.dram(bind.buf, bind.off, bind.dtype, bind.shape, bind.strides, False)
    except _Bad as exc:
        raise ExecutionError(f"NPU program: {what} '{bind.name}': {exc}") from None
    ext = a.extent()
    if ext is not None and (ext[0] < a.region[0] or ext[1] > a.region[1]):
        raise ExecutionError(f"NPU program: {what} '{bind.name}' lies outside its buffer")
    return a
