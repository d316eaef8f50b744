"""Mutation testing of NPU programs: does the simulator execute every field?

A mutation changes one thing in a program: a field of an instruction (an address, an offset, a
size, a stride, a K range, an accumulate flag, an opcode, a function, a dtype), or drops,
duplicates or swaps an instruction, or flips a byte of the weight image. A simulator that computes
from the program must then give other outputs on the test inputs, or refuse the program with an
ExecutionError (or any KCError): the mutation is *detected*.

A mutation the outputs do not show is *neutral* only if it provably changes nothing the program
goes on to use, by a proof that never executes a mutated instruction nor reads a mutated byte (so
a field or a byte the simulator ignored cannot make its mutation look neutral):
  - a dropped, duplicated or swapped instruction: the original instructions, run in the mutated
    order by the reference walk, leave memories that differ, where the two lists agree again, only
    in dead bytes (overwritten before any instruction reads them, not an output, or scratchpad
    bytes at the next barrier), with equal window registers (e.g. a load run twice, two
    instructions on disjoint memory swapped, a ReLU run twice);
  - a DMA, or an elementwise VECTOR along its outermost dim, made to cover more elements (or a
    DMA of one run of bytes on both sides made to move wider elements), whose extra written bytes
    (decoded, not executed) are dead;
  - a flipped weight byte that no instruction reads, or that only GATHERs read, from table rows
    whose indices (read by the unmutated walk) they do not fetch on the test inputs.
Any other mutation whose outputs did not change *survives* and counts against the score; a
simulator exception that is not a KCError is a *crash*, and counts against it too.

Used by benchmarks/mutation_score.py (>= 500 mutations per program) and the tests.
"""

from __future__ import annotations

import random
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kcompiler.backends.npu import isa, sim
from kcompiler.errors import KCError


@dataclass
class Outcome:
    kind: str  # field:<class> | opcode | drop | duplicate | swap | image
    where: str  # what was changed, in words
    result: str  # detected | neutral | survived | crash
    why: str = ""


@dataclass
class Score:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str, kind: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.result == result and (kind is None or o.kind == kind))

    @property
    def meaningful(self) -> int:
        return self.count("detected") + self.count("survived") + self.count("crash")

    @property
    def ratio(self) -> float:
        return self.count("detected") / self.meaningful if self.meaningful else 1.0

    def by_kind(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for o in self.outcomes:
            out.setdefault(o.kind, Counter())[o.result] += 1
        return dict(sorted(out.items()))

    def line(self) -> str:
        return (f"mutation score: {self.count('detected')} of {self.meaningful} meaningful mutations detected "
                f"({100 * self.ratio:.1f}%)")


def same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return False
    return True


@dataclass
class _Mutant:
    kind: str
    where: str
    instrs: list
    init: list
    p_orig: int  # where the two instruction lists agree again: base[p_orig:] == mutant[p_mut:]
    p_mut: int
    refused: str = ""  # the program loader refuses the mutant outright (e.g. an unknown opcode)
    index: int | None = None  # the instruction a field or opcode mutation changed
    addr: int = -1  # the DRAM byte an image mutation flipped


class NpuMutator:
    """Random mutations of an NpuProgram, each judged on every feed (inputs of the program)."""

    KINDS = ("field", "field", "field", "field", "opcode", "drop", "duplicate", "swap", "image")

    def __init__(self, program, feeds: list[dict[str, np.ndarray]], kinds=KINDS, only=None):
        self.kinds = kinds
        #: which instructions the non-image mutations may touch (a predicate on instructions)
        self.only = only
        self.prog = program
        self.feeds = feeds
        self.base_instrs = list(program.data.instrs)
        self.base_init = list(program.data.init)
        self.want = [program.run(f) for f in feeds]
        self.flow = _Flow(program.data)

    # ---- judging ----
    def judge(self, m: _Mutant) -> Outcome:
        if m.refused:
            return Outcome(m.kind, m.where, "detected", m.refused)
        data = self.prog.data
        try:
            data.instrs[:] = m.instrs
            data.init[:] = m.init
            self.prog.invalidate()
            for f, want in zip(self.feeds, self.want):
                if not same_outputs(self.prog.run(f), want):
                    return Outcome(m.kind, m.where, "detected", "an output changed")
        except KCError as exc:
            return Outcome(m.kind, m.where, "detected", f"{type(exc).__name__}: {str(exc)[:200]}")
        except Exception as exc:  # noqa: BLE001 - a crash: a bad program must be refused with a KCError
            return Outcome(m.kind, m.where, "crash", "".join(traceback.format_exception(exc))[-1500:])
        finally:
            data.instrs[:] = self.base_instrs
            data.init[:] = self.base_init
            self.prog.invalidate()
        why = self._neutral(m)
        if why:
            return Outcome(m.kind, m.where, "neutral", why)
        return Outcome(m.kind, m.where, "survived", "a byte the rest of the program reads differs, yet no output "
                                                   "changed on the test inputs")

    def _neutral(self, m: _Mutant) -> str | None:
        """Why a mutation the outputs did not show cannot change the program's meaning, or None.
        No proof executes a mutated instruction or reads a mutated byte, so a field or a byte the
        simulator ignored cannot make its mutation look neutral."""
        if m.kind == "image":
            if m.p_orig > len(self.base_instrs):
                return "no instruction reads the byte"
            return "only gathers read the byte's table row, and none fetches it" if self._ungathered(m) else None
        if m.kind in ("drop", "duplicate", "swap"):
            return self._reordered(m)
        if m.index is not None and self._grows_into_dead(m.index, self.base_instrs[m.index], m.instrs[m.index]):
            return ("it copies or computes more elements, the original ones as before, and every extra byte "
                    "it writes is dead (overwritten before it is read)")
        return None

    def _ungathered(self, m: _Mutant) -> bool:
        """Every instruction that reads the flipped byte is a GATHER whose indices (as the unmutated
        program computes them on each test input) never name the byte's row."""
        addr, r = m.addr, m.p_orig - 1
        while r < len(self.base_instrs):
            if self.base_instrs[r].opcode != isa.GATHER:
                return False
            idx_a, src_a, _ = self.flow.accs[r]
            mark = np.zeros(self.prog.data.dram_bytes, bool)
            mark[addr] = True
            hit = sim.byte_view(mark, src_a.addr, src_a.esize, src_a.shape, src_a.strides).any(axis=(0, 2, 3))
            (row,) = np.flatnonzero(hit)
            for f in self.feeds:
                walk = _walk(self.prog.data, self.base_instrs, self.base_init, f, r)
                idx = walk.view(idx_a).astype(np.int64)
                if ((idx == row) | (idx == row - src_a.shape[1])).any():
                    return False
            r = self.flow.first_reader(addr, start=r + 1)
        return True

    def _reordered(self, m: _Mutant) -> str | None:
        """Original instructions in the mutated order: walk both lists to where they agree again; the
        memories may differ there only in dead bytes."""
        for f in self.feeds:
            a = _walk(self.prog.data, self.base_instrs, self.base_init, f, m.p_orig)
            b = _walk(self.prog.data, m.instrs, m.init, f, m.p_mut)
            # window registers that differ: walk on (the same instructions) while they are in force
            p, q = m.p_orig, m.p_mut
            with np.errstate(all="ignore"):
                while a.dec.windows != b.dec.windows and p < len(self.base_instrs):
                    try:
                        a.step(p)
                        b.step(q)
                    except KCError:
                        return None
                    p, q = p + 1, q + 1
            if a.dec.windows != b.dec.windows:
                return None
            diff_dram = a.dram != b.dram
            diff_sram = [x != y for x, y in zip(a.sram, b.sram)]
            if not diff_dram.any() and not any(d.any() for d in diff_sram):
                continue
            if not self.flow.dead_after(p, diff_dram, diff_sram):
                return None
        return {"swap": "the two commute here", "duplicate": "running it twice is running it once here",
                "drop": "what it writes is dead or already there"}[m.kind]

    def _grows_into_dead(self, i: int, old, new) -> bool:
        """A DMA, or an elementwise VECTOR along its outermost dim, made to cover more elements (or a
        DMA between two runs of bytes made to move wider elements): each original element (byte) is
        still moved or computed from the same operands, so the mutant differs only in the extra
        bytes it writes; those must be dead after it (decoded, not executed)."""
        if old.opcode != new.opcode:
            return False
        names = isa.names_of(old.opcode)
        changed = [n for n, a, b in zip(names, old.args, new.args) if a != b]
        if old.aux != new.aux:
            # a DMA whose elements grow, over blocks dense on both sides: the same bytes, then more
            if changed or old.opcode not in (isa.LOAD, isa.STORE, isa.COPY) or \
                    not isa.ESIZES[old.aux] < (isa.ESIZES[new.aux] if new.aux < len(isa.ESIZES) else 0):
                return False
            try:
                accs = sim.Decoder(self.prog.data).accesses(new)
            except sim._Bad:
                return False
            if not all(_row_major(a) for a in accs + self.flow.accs[i]):
                return False
        elif len(changed) != 1 or changed[0] not in ("n0", "n1", "n2", "n3") or \
                new.arg(changed[0]) <= old.arg(changed[0]):
            return False
        elif old.opcode == isa.VECTOR:
            d = int(changed[0][1])
            # (the integer datapath's functions are elementwise too: each element from its own operands)
            if sim._VSPEC[isa.VFN_NAMES[old.aux]].kind not in ("elementwise", "int") or \
                    any(old.arg(f"n{e}") != 1 for e in range(d)):
                return False
        elif old.opcode not in (isa.LOAD, isa.STORE, isa.COPY, isa.FILL):
            return False
        dec = sim.Decoder(self.prog.data)
        try:
            writes = [a for a in dec.accesses(new) if a.write]
        except sim._Bad:
            return False
        extra_dram = np.zeros(self.prog.data.dram_bytes, bool)
        extra_sram = [np.zeros(self.prog.data.sram_bytes, bool) for _ in range(self.prog.data.cores)]
        for a in writes:
            if a.extent() is not None:
                sim.byte_view(extra_dram if a.space == "dram" else extra_sram[a.core], a.addr, a.esize, a.shape,
                              a.strides)[...] = True
        for a in self.flow.accs[i]:
            if a.write and a.extent() is not None:
                sim.byte_view(extra_dram if a.space == "dram" else extra_sram[a.core], a.addr, a.esize, a.shape,
                              a.strides)[...] = False
        return self.flow.dead_after(i + 1, extra_dram, extra_sram)

    # ---- the mutations ----
    def random(self, rng: random.Random) -> Outcome:
        return self.judge(self.draw(rng))

    def draw(self, rng: random.Random) -> _Mutant:
        instrs = self.base_instrs
        kind = rng.choice(self.kinds)
        if kind == "image" and not self.base_init:
            kind = "field"
        if kind == "image":
            seg = rng.randrange(len(self.base_init))
            buf, off, data = self.base_init[seg]
            # the top byte of a random element (sign and exponent of a float: a change that no rounding
            # hides; a low mantissa byte's change can round away before any output, which says
            # nothing about whether the simulator read it)
            esize = 4 if len(data) % 4 == 0 else (2 if len(data) % 2 == 0 else 1)
            pos = rng.randrange(len(data) // esize) * esize + esize - 1
            flipped = np.array(data, np.uint8)
            flipped[pos] ^= 0xFF  # every bit of the byte
            init = list(self.base_init)
            init[seg] = (buf, off, flipped)
            b = self.prog.data.buffers[buf]
            at = self.prog.data.image_addr(buf) + off + pos  # the byte in the DRAM image
            p = self.flow.first_reader(at) + 1  # len + 1: never read
            return _Mutant("image", f"buffer {buf} ('{b.name}') byte {off + pos} flipped", list(instrs), init, p, p,
                           addr=at)
        pool = [k for k, x in enumerate(instrs) if self.only(x)] if self.only else range(len(instrs))
        i = rng.choice(pool)
        ins = instrs[i]
        text = f"instruction {i} `{ins.text()}`"
        if kind == "drop":
            return _Mutant("drop", text, instrs[:i] + instrs[i + 1:], self.base_init, i + 1, i)
        if kind == "duplicate":
            return _Mutant("duplicate", text, instrs[:i + 1] + [ins] + instrs[i + 1:], self.base_init, i + 1, i + 2)
        if kind == "swap":
            i = min(i, len(instrs) - 2)
            new = list(instrs)
            new[i], new[i + 1] = new[i + 1], new[i]
            return _Mutant("swap", f"instructions {i} and {i + 1}", new, self.base_init, i + 2, i + 2)
        if kind == "opcode":
            raw = bytearray(ins.encode())
            raw[0] = rng.choice([o for o in isa.OPCODES if o != ins.opcode] + [len(isa.OPCODES) + 3])
            try:
                new_ins = isa.Instr.decode(bytes(raw))
            except KCError as exc:  # the loader refuses it
                return _Mutant("opcode", f"{text} -> opcode {raw[0]}", [], [], 0, 0, f"ArtifactError: {exc}")
            return self._replace(i, new_ins, "opcode", f"{text} -> opcode {raw[0]}")
        names = list(isa.names_of(ins.opcode))
        part = rng.choice(names + ["aux"]) if names else "aux"
        if part == "aux":
            new = _mutate_aux(rng, ins)
            return self._replace(i, ins.replace(aux=new), f"field:{_aux_label(ins, ins.aux, new)}",
                                 f"{text} aux {ins.aux} -> {new}")
        old = ins.args[names.index(part)]
        new = _mutate_value(rng, part, old)
        shown = (lambda v: isa.signed(v)) if part in isa.SIGNED else (lambda v: v)
        return self._replace(i, ins.replace(**{part: new}), f"field:{_field_label(part)}",
                             f"{text} {part} {shown(old)} -> {shown(new)}")

    def _replace(self, i, new_ins, kind, where) -> _Mutant:
        instrs = list(self.base_instrs)
        instrs[i] = new_ins
        return _Mutant(kind, where, instrs, self.base_init, i + 1, i + 1, index=i)


def _walk(data: sim.ProgramData, instrs, init, feeds, upto: int) -> sim.Machine:
    """The reference walk of a program variant over its first `upto` instructions."""
    prog = sim.ProgramData(list(instrs), data.buffers, data.inputs, data.outputs, list(init), data.cores,
                           data.sram_bytes, data.ops, data.window)
    m = sim.Machine(prog)
    m.load_inputs(feeds)
    with np.errstate(all="ignore"):
        for i in range(upto):
            m.step(i)
    return m


def _field_label(name: str) -> str:
    """A mutated field's class for the report."""
    if name == "k":
        return "k-range"
    if name in ("off", "soff", "doff", "ioff"):
        return "offset"
    if name in ("buf", "sbuf", "dbuf", "ibuf"):
        return "buffer"
    if name in isa.ADDRESS_FIELDS:
        return "address"
    if name in isa.FLOAT_FIELDS:
        return "immediate"
    if name in ("bcast", "dtypes"):
        return "broadcast/dtype"
    if name.startswith("n") or name in ("m", "outer", "count", "inner", "rows", "g", "h", "w", "oh", "ow", "kh",
                                        "kw", "arg"):
        return "size"
    if name in ("pt", "pl", "pb", "pr", "flags"):
        return "window"
    return "stride"


def _aux_label(ins, old: int, new: int) -> str:
    if ins.opcode == isa.VECTOR:
        return "function"
    if ins.opcode == isa.MATMUL:
        if (old ^ new) & isa.ACCUMULATE:
            return "accumulate"
        if (old ^ new) & isa.WINDOW:
            return "window"
        if (old ^ new) & isa.ZERO_POINTS:
            return "zero points"
    if ins.opcode == isa.CONFIG:
        return "unit"
    if ins.opcode == isa.BARRIER:
        return "reserved"
    if ins.opcode in (isa.LOAD, isa.STORE, isa.COPY, isa.GATHER):
        return "element size"
    return "dtype"


def _mutate_aux(rng: random.Random, ins) -> int:
    old = ins.aux
    for _ in range(20):
        if ins.opcode == isa.VECTOR:
            new = rng.randrange(len(isa.VFN_NAMES) + 2)
        elif ins.opcode == isa.MATMUL:
            new = rng.choice([old ^ isa.ACCUMULATE, old ^ isa.WINDOW, (old & ~0xF) | rng.randrange(8),
                              (old & ~(0xF << isa.B_DTYPE_SHIFT)) | rng.randrange(8) << isa.B_DTYPE_SHIFT,
                              old ^ isa.ZERO_POINTS])
        elif ins.opcode == isa.GATHER:
            new = rng.choice([(old & ~0xF) | rng.randrange(8), (old & 0xF) | rng.randrange(8) << 4])
        elif ins.opcode == isa.CONFIG:
            new = old ^ 1
        elif ins.opcode == isa.BARRIER:
            new = rng.randrange(1, 4)
        elif ins.opcode in (isa.LOAD, isa.STORE, isa.COPY):
            new = rng.randrange(len(isa.ESIZES) + 1)
        else:
            new = rng.randrange(len(isa.DTYPES) + 1)
        if new != old:
            return new & 0xFFFF
    return (old + 1) & 0xFFFF


def _mutate_value(rng: random.Random, name: str, old: int) -> int:
    v = isa.signed(old) if name in isa.SIGNED else old
    if name in isa.FLOAT_FIELDS:
        f = isa.bits_f32(old)
        cands = [f * 2 + 1, -f, f + 0.5, 0.0 if f else 1.0]
        return isa.f32_bits(rng.choice([c for c in cands if isa.f32_bits(c) != old] or [f + 1]))
    if v == isa.NONE and name in isa.ADDRESS_FIELDS:
        return rng.choice([0, 64, 1024])
    cands = [v + 1, v - 1, v + 2, v - 2, v + 4, v - 4, v * 2, v // 2, 0, v + 64, v - 64, v + 1024]
    if name in isa.SIGNED:
        cands += [-v]
    else:
        cands = [c for c in cands if c >= 0]
    cands = [c for c in cands if c != v]
    return rng.choice(cands) & 0xFFFFFFFF


class _Flow:
    """The unmutated program's accesses, decoded once: who reads a byte first, and whether bytes
    are dead after a point."""

    def __init__(self, data: sim.ProgramData):
        self.data = data
        dec = sim.Decoder(data)
        self.accs: list[list[sim.Access]] = []
        for ins in data.instrs:
            self.accs.append([] if ins.opcode == isa.BARRIER else dec.accesses(ins))
            if ins.opcode == isa.BARRIER:
                dec.reset()
        self.outputs = [sim._binding_access(dec, b, "output") for b in data.outputs]

    def first_reader(self, addr: int, start: int = 0) -> int:
        """Index of the first instruction from `start` on reading DRAM byte `addr` (len(program) if
        none, or if one writes it first)."""
        mark = np.zeros(self.data.dram_bytes, bool)
        mark[addr] = True
        for i in range(start, len(self.accs)):
            accs = self.accs[i]
            for a in accs:
                if a.space == "dram" and not a.write and a.extent() is not None and _touches(mark, a):
                    return i
            for a in accs:
                if a.space == "dram" and a.write and a.extent() is not None:
                    sim.byte_view(mark, a.addr, a.esize, a.shape, a.strides)[...] = False
            if not mark.any():
                break
        return len(self.accs)

    def dead_after(self, p: int, dram: np.ndarray, sram: list[np.ndarray]) -> bool:
        """Whether every marked byte is overwritten before any instruction from `p` on reads it
        (scratchpad bytes die at a barrier; DRAM bytes of an output are read at the end)."""
        dram, sram = dram.copy(), [s.copy() for s in sram]
        instrs = self.data.instrs
        for i in range(p, len(instrs)):
            if instrs[i].opcode == isa.BARRIER:
                for s in sram:
                    s[...] = False
                continue
            accs = self.accs[i]
            for a in accs:
                if not a.write and a.extent() is not None and _touches(dram if a.space == "dram" else sram[a.core], a):
                    return False
            for a in accs:
                if a.write and a.extent() is not None:
                    mem = dram if a.space == "dram" else sram[a.core]
                    sim.byte_view(mem, a.addr, a.esize, a.shape, a.strides)[...] = False
            if not dram.any() and not any(s.any() for s in sram):
                return True
        return not any(_touches(dram, a) for a in self.outputs if a.extent() is not None)


def _row_major(a: sim.Access) -> bool:
    """Whether an access's elements lie back to back in row-major order (one run of bytes)."""
    expect = 1
    for n, st in zip(reversed(a.shape), reversed(a.strides)):
        if n > 1 and st != expect:
            return False
        expect *= n
    return True


def _touches(mark: np.ndarray, a: sim.Access) -> bool:
    return bool(sim.byte_view(mark, a.addr, a.esize, a.shape, a.strides).any())


def score_npu(program, feeds: list[dict[str, np.ndarray]], n: int, seed: int = 0,
              progress: Callable[[int], None] | None = None, kinds=NpuMutator.KINDS, only=None) -> Score:
    """n random mutations of an NPU program, each judged on every feed."""
    m = NpuMutator(program, feeds, kinds, only)
    rng = random.Random(seed)
    out = Score()
    for k in range(n):
        out.outcomes.append(m.random(rng))
        if progress is not None:
            progress(k + 1)
    return out


__all__ = ["NpuMutator", "Outcome", "Score", "same_outputs", "score_npu"]
