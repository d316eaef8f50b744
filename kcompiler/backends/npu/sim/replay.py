"""The Replay: the reference walk compiled once into closures over precomputed views of the memory
images. A LOAD is not performed while its consumers can read the tile where it came from (the
scratchpad block stays a view of DRAM until the DRAM or the scratchpad under it changes), and
between barriers the cores' steps run side by side when no core writes DRAM another one touches.
Every closure makes the calls the walk makes (same BLAS shapes and orientation), so the values are
the walk's, bit for bit."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.npu import isa, vfn
from kcompiler.backends.npu.isa import (ACCUMULATE, BARRIER, CONFIG, COPY, DTYPE_BYTES, FILL, GATHER, LOAD, MATMUL,
                                        NONE, STORE, VECTOR, Instr)
from kcompiler.backends.npu.sim.data import F32, NP_DTYPES
from kcompiler.backends.npu.sim.decode import Decoder
from kcompiler.backends.npu.sim.faults import _Bad, _fail
from kcompiler.backends.npu.sim.memory import Access, _dense_access, byte_view, strided
from kcompiler.backends.npu.sim.vector import attn_step, vector_result
from kcompiler.backends.npu.sim.walk import Machine, gather_rows, matmul_operands, product_into


class _Lazy:
    """A LOAD the replay does not perform while its block of SRAM can be read as a view of the DRAM
    it came from (no instruction wrote that DRAM since, none overwrote that SRAM)."""

    __slots__ = ("step", "dtype", "addr", "shape", "pitches", "src", "dram", "live")

    def __init__(self, step, dtype, addr, shape, pitches, src, dram):
        self.step, self.dtype, self.addr, self.shape, self.pitches = step, dtype, addr, shape, pitches
        self.src, self.dram = src, dram
        self.live = True

    def map(self, a: Access) -> np.ndarray | None:
        """The DRAM view of access `a` if it reads only elements of this block, else None (the DMA
        moved raw elements: the reader sees them as its own dtype of that size)."""
        if DTYPE_BYTES[a.dtype] != DTYPE_BYTES[self.dtype]:
            return None
        e = DTYPE_BYTES[self.dtype]
        delta, rem = divmod(a.addr - self.addr, e)
        if rem or delta < 0:
            return None
        dims = sorted((d for d in range(4) if self.shape[d] > 1), key=lambda d: -self.pitches[d])
        if any(self.pitches[d] <= 0 for d in dims):
            return None  # elements written over each other: not a view of the source
        start = [0, 0, 0, 0]
        for d in dims:
            start[d], delta = divmod(delta, self.pitches[d])
            if start[d] >= self.shape[d]:
                return None
        if delta:
            return None
        by_pitch = {self.pitches[d]: d for d in dims}
        used, strides = set(), []
        for n, s in zip(a.shape, a.strides):
            if n == 1:
                strides.append(0)
                continue
            d = by_pitch.get(s)
            if d is None or d in used or start[d] + n > self.shape[d]:
                return None
            used.add(d)
            strides.append(self.src.strides[d])
        base = self.src[start[0]:, start[1]:, start[2]:, start[3]:].view(NP_DTYPES[a.dtype])
        return strided(base, a.shape, tuple(strides), writeable=False)


class Replay:
    """The program as a list of closures over precomputed views of the memory images: what the
    instruction walk does, without decoding anything again or copying a tile the consumer can read
    where it came from. Each closure makes exactly the calls (same shapes, same operands) the walk
    makes, so the results are the same, bit for bit."""

    def __init__(self, m: Machine):
        self.m = m
        self.prog = m.prog
        self.steps: list[list] = []  # [instruction index, callable, enabled]
        self.owners = [[] for _ in range(self.prog.cores)]  # per core: [lo, hi, _Lazy | None], sorted
        self.lazies: list[_Lazy] = []
        #: per segment (between barriers), per core: the DRAM it reads and writes
        self._dram: list[dict[int, tuple[list[Access], list[Access]]]] = [{}]
        dec = Decoder(self.prog)
        for i, ins in enumerate(self.prog.instrs):
            try:
                self._plan(i, ins, dec)
            except _Bad as exc:
                raise _fail(self.prog, i, exc) from None
        self.segments = self._segments()

    # ---- ownership of scratchpad bytes ----
    def _materialize(self, lz: _Lazy) -> None:
        if lz.live:
            self.steps[lz.step][2] = True
            lz.live = False
            for own in self.owners:
                for seg in own:
                    if seg[2] is lz:
                        seg[2] = None

    def _claim(self, core: int, lo: int, hi: int, owner, dense: bool) -> None:
        own = self.owners[core]
        out = []
        for seg in own:
            a, b, o = seg
            if b <= lo or a >= hi:
                out.append(seg)
                continue
            if o is not None and not dense:
                self._materialize(o)  # a gappy write must not hide bytes of a block never copied
                o = None
            if a < lo:
                out.append([a, lo, o])
            if b > hi:
                out.append([hi, b, o])
        out.append([lo, hi, owner])
        out.sort(key=lambda s: s[0])
        self.owners[core] = out

    def _note_dram(self, a: Access) -> None:
        if a.space == "dram":
            reads, writes = self._dram[-1].setdefault(self._core, ([], []))
            (writes if a.write else reads).append(a)

    def _read(self, a: Access) -> np.ndarray:
        if a.space == "dram":
            self._note_dram(a)
            return self.m.view(a)
        ext = a.extent()
        if ext is None:
            return self.m.view(a)
        lo, hi = ext
        segs = [s for s in self.owners[a.core] if s[0] < hi and s[1] > lo]
        if len(segs) == 1 and segs[0][2] is not None and segs[0][0] <= lo and segs[0][1] >= hi:
            v = segs[0][2].map(a)
            if v is not None:
                return v
        for s in segs:
            if s[2] is not None:
                self._materialize(s[2])
        return self.m.view(a)

    def _write(self, a: Access) -> np.ndarray:
        ext = a.extent()
        self._note_dram(a)
        if ext is not None:
            if a.space == "dram":
                lo, hi = ext
                for lz in self.lazies:
                    if lz.live and lz.dram[0] < hi and lz.dram[1] > lo:
                        self._materialize(lz)
                self.lazies = [lz for lz in self.lazies if lz.live]
            else:
                self._claim(a.core, ext[0], ext[1], None, _dense_access(a))
        return self.m.view(a, True)

    # ---- one instruction ----
    def _plan(self, i: int, ins: Instr, dec: Decoder) -> None:
        """Append instruction i's step (or, for a LOAD, its lazy copy; for a BARRIER, a segment boundary)."""
        accs = dec.accesses(ins)
        oc = ins.opcode
        self._core = ins.core
        if oc == BARRIER:
            self._plan_barrier(i)
        elif oc == CONFIG:
            return
        elif oc == LOAD:
            self._plan_load(i, accs)
        elif oc in (STORE, COPY):
            src, dst = accs
            sv = self._read(src)
            dv = self._write(dst)
            self.steps.append([i, _copier(dv, sv), True])
        elif oc == FILL:
            (dst,) = accs
            dv = self._write(dst)
            value = np.asarray(isa.bits_f32(ins.arg("value")), F32).astype(NP_DTYPES[dst.dtype])
            self.steps.append([i, _filler(dv, value), True])
        elif oc == GATHER:
            idx_a, src_a, dst_a = accs
            iv, sv = self._read(idx_a), self._read(src_a)
            dv = self._write(dst_a)
            self.steps.append([i, lambda iv=iv, sv=sv, dv=dv: gather_rows(iv, sv, dv), True])
        elif oc == MATMUL:
            self._plan_matmul(i, ins, accs, dec)
        elif oc == VECTOR:
            self._plan_vector(i, ins, accs, dec)
        else:
            raise _Bad(f"unknown opcode {oc}")

    def _plan_barrier(self, i: int) -> None:
        """A segment boundary: the scratchpad holds nothing across it, and no LOAD stays lazy."""
        self.owners = [[] for _ in range(self.prog.cores)]  # the scratchpad holds nothing across it
        for lz in self.lazies:
            lz.live = False
        self.lazies = []
        self.steps.append([i, None, False])  # a segment boundary
        self._dram.append({})

    def _plan_load(self, i: int, accs: list[Access]) -> None:
        """A LOAD: its copy, left undone while its block can be read as a view of DRAM (a _Lazy)."""
        src, dst = accs
        self._note_dram(src)  # read by this core whenever the data is used
        sv, dv = self.m.view(src), self.m.view(dst, True)
        step = len(self.steps)
        self.steps.append([i, _copier(dv, sv), False])
        ext = dst.extent()
        if ext is None:
            return
        pitches = tuple(dst.strides)
        lz = _Lazy(step, dst.dtype, dst.addr, tuple(dst.shape), pitches, sv, src.extent())
        self._claim(dst.core, ext[0], ext[1], lz, _dense_access(dst))
        self.lazies.append(lz)

    def _plan_matmul(self, i: int, ins: Instr, accs: list[Access], dec: Decoder) -> None:
        """A MATMUL: one product into the accumulator (of the feeder's A for a window MATMUL)."""
        a, win, b, acc = matmul_operands(ins, accs, dec)
        av = self._read(a) if a is not None else None
        bv = self._read(b)
        if ins.aux & ACCUMULATE:
            self._read(accs[1])
        accv = self._write(acc)
        accumulate = bool(ins.aux & ACCUMULATE)
        product = product_into(ins, dec)
        if win is not None:
            def f(av=av, bv=bv, accv=accv, cols=win, accumulate=accumulate, product=product):
                product(cols(av)[None], bv, accv, accumulate)
        else:
            def f(av=av, bv=bv, accv=accv, accumulate=accumulate, product=product):
                product(av, bv, accv, accumulate)
        self.steps.append([i, f, True])

    def _plan_vector(self, i: int, ins: Instr, accs: list[Access], dec: Decoder) -> None:
        """A VECTOR: attention's step, the in-place form (vfn.INTO) when every operand is float32, else
        vector_result rounded to the destination's dtype."""
        fn = isa.VFN_NAMES[ins.aux]
        fields = ins.fields()
        if fn == "attn_step":
            reads, writes = accs[:-3], accs[-3:]
            rv = [self._read(r) for r in reads]
            wv = [self._write(w) for w in writes]
            k = 1
            mask = None
            if fields["src1"] != NONE:
                mask = rv[k]
                k += 1
            state = rv[k] if len(rv) > k else None
            acc_in = rv[k + 1] if len(rv) > k + 1 else None
            self.steps.append([i, lambda s=rv[0], mask=mask, state=state, acc_in=acc_in, wv=wv, f=fields:
                               attn_step(f, s, mask, state, acc_in, *wv), True])
            return
        srcs = [self._read(a) for a in accs[:-1]]
        dst = accs[-1]
        dv = self._write(dst)
        window = dec.windows.get((ins.core, 1)) if fn in isa.WINDOW_FNS else None
        out_dt = NP_DTYPES[dst.dtype]
        if fn in vfn.INTO and out_dt == F32 and all(v.dtype == F32 for v in srcs) and \
                np.broadcast_shapes(*(v.shape for v in srcs)) == dv.shape:
            # what vector_result computes, with no temporaries
            self.steps.append([i, lambda into=vfn.INTO[fn], srcs=srcs, dv=dv: into(srcs, dv), True])
            return

        def g(fn=fn, f=fields, srcs=srcs, dv=dv, window=window, out_dt=out_dt):
            dv[...] = np.asarray(vector_result(fn, f, srcs, dv.shape, window)).astype(out_dt)
        self.steps.append([i, g, True])

    def _segments(self) -> list[tuple[list[tuple[int, object]], list[list[tuple[int, object]]] | None]]:
        """Per segment: its steps in program order, and per core its own steps when the cores'
        steps may run at the same time (no core writes DRAM another core of the segment reads or
        writes: checked byte by byte), else None."""
        out, seg, k = [], [], 0
        for i, f, on in self.steps:
            if f is None:
                out.append(self._split(seg, self._dram[k]))
                seg, k = [], k + 1
            elif on:
                seg.append((i, f))
        out.append(self._split(seg, self._dram[k]))
        return out

    def _split(self, seg, dram):
        instrs = self.prog.instrs
        cores = sorted({instrs[i].core for i, _ in seg})
        if len(cores) < 2 or not _disjoint(dram, self.prog.dram_bytes):
            return seg, None
        return seg, [[(i, f) for i, f in seg if instrs[i].core == c] for c in cores]

    def run(self, pool=None) -> None:
        for seg, chains in self.segments:
            if pool is not None and chains is not None:
                errors = [e for e in pool.map(self._run_chain, chains) if e is not None]
                if errors:
                    raise min(errors, key=lambda e: e[0])[1]
            else:
                err = self._run_chain(seg)
                if err is not None:
                    raise err[1]

    def _run_chain(self, chain) -> tuple[int, Exception] | None:
        i = -1
        try:
            for i, f in chain:
                f()
        except _Bad as exc:
            return i, _fail(self.prog, i, exc)
        except (ValueError, FloatingPointError, IndexError) as exc:
            return i, _fail(self.prog, i, f"{type(exc).__name__}: {exc}")
        return None


def _disjoint(dram: dict[int, tuple[list[Access], list[Access]]], size: int) -> bool:
    """Whether no core writes a DRAM byte another core reads or writes."""
    spans = [a.extent() for reads, writes in dram.values() for a in writes]
    spans = [s for s in spans if s is not None]
    if not spans:
        return True
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    owner = np.full(hi - lo, -1, np.int16)
    for core, (reads, writes) in dram.items():
        for a in writes:
            if a.extent() is None:
                continue
            v = byte_view(owner, a.addr - lo, a.esize, a.shape, a.strides)
            if ((v != -1) & (v != core)).any():
                return False
            v[...] = core
    for core, (reads, writes) in dram.items():
        for a in reads:
            ext = a.extent()
            if ext is None or ext[1] <= lo or ext[0] >= hi:
                continue
            if a.addr < lo or ext[1] > hi or ext[0] < lo:
                # partly outside the written span: look only at the part inside
                v = _clipped_owner(owner, lo, a)
            else:
                v = byte_view(owner, a.addr - lo, a.esize, a.shape, a.strides)
            if ((v != -1) & (v != core)).any():
                return False
    return True


def _clipped_owner(owner: np.ndarray, lo: int, a: Access) -> np.ndarray:
    """The owners of the bytes of access `a` that lie inside owner's span (which starts at `lo`)."""
    full = np.full(a.extent()[1] - a.extent()[0], -1, np.int16)
    start, end = max(lo, a.extent()[0]), min(lo + len(owner), a.extent()[1])
    full[start - a.extent()[0]: end - a.extent()[0]] = owner[start - lo: end - lo]
    return byte_view(full, a.addr - a.extent()[0], a.esize, a.shape, a.strides)


def _copier(dv, sv):
    def f():
        dv[...] = sv
    return f


def _filler(dv, value):
    def f():
        dv[...] = value
    return f
