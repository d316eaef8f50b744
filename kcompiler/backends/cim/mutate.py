"""Mutation testing of CIM programs: does the simulator compute from every field it is given?

A mutation changes one thing of a copy of a compiled program's Code (the original is never
touched): a field of an instruction row (every field of every opcode: a random value, +-1, 0, a
large one; a VOP's alpha and beta as floats), its step, a slot beyond its fields, its opcode; a
dropped, duplicated or swapped row; an entry of the crossbar images (a device level changed or its
low byte flipped) or of their column tables (col_out, col_slice, out_scale, adc_fs, col_flip), the
image block sizes (image_rows, image_outs), a constant, a binding's address.

The mutant runs with device noise OFF (Conditions(noise=False)), so a changed output is the
program's doing and never a noise draw (noise-on runs are seeded per image and deterministic too).
It is *detected* when an output differs bit for bit or the simulator raises a KCError; a changed
timeline (time, energy, programming cost) also counts, but only for what the timeline legitimately
reads (a row's step, PROG every, image_rows, dropped / duplicated / swapped rows): a value field the
values ignore must not hide behind the time it costs.

A surviving mutant is *neutral* only by a proof that never executes a mutated row nor reads a
mutated byte (so a field the simulator ignored can never make its mutation look neutral):
  - "commuting swap", "idempotent duplicate", "no-op where it runs": the ORIGINAL rows run in the
    mutated order (reference walk over sim.run.step) leave held crossbars equal and memories that
    differ only in dead elements (written before any later row reads them, not an output);
  - "unused by the function": a VOP field its function ignores (b and strides of a unary function,
    alpha outside add/leakyrelu/hardsigmoid/clip, beta outside hardsigmoid/clip), the stride of a
    VOP dim of size 1, the pitch of a single MVM vector, IM2COL's batch stride with one image, a
    dilation of a 1-wide kernel, a stride of a 1-wide output;
  - "zero destination": an MVM turned accumulating onto a destination the original walk shows
    holds +0.0 (0 + y = y);
  - "outside the block": an image entry (a device, a column's tables, an output's scale) outside
    the image's block (rows beyond image_rows, columns whose col_out is not one of image_outs; the
    simulator refuses an MVM whose rows/outs differ from its image's block), or an unused column
    mapped to an output while all its devices are at level 0 and unflipped (it reads 0, noise off);
  - "exact ADC": a full-range ADC whose old and new full scales both fit its codes (the step is one
    level x digit either way, spec.adc_range "full");
  - "extension into dead memory": an MVM's nvec, a VOP's dims, IM2COL's n or XPOSE's a made larger,
    where the ops are independent per vector / element / image / block (so the original elements
    are unchanged, decoded) and the extra elements written are dead;
  - "a copy of the same weights": a PROG's image changed to another image of the original program
    whose levels and tables are equal to its own (a replica of the layer, Lowering.replicate), which
    the chip reads alike with its noise off (with noise on each copy is programmed apart).
Anything else that does not change the outputs survives (its report says whether the final memory
differed: read but masked downstream); an exception that is not a KCError is a crash.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kcompiler.backends.cim import isa
from kcompiler.backends.cim.conditions import Conditions
from kcompiler.backends.cim.sim import Crossbars, Images
from kcompiler.backends.cim.sim.code import Code
from kcompiler.backends.cim.sim.run import execute
from kcompiler.backends.cim.sim.timing import programming_cost, simulate
from kcompiler.backends.cim.proofs import TABLES, _block, _extension, _prefix, dead, neutral  # noqa: F401 (tests use them)
from kcompiler.backends.npu.mutate import Outcome, Score
from kcompiler.errors import KCError

#: kinds drawn in turn (fields more often: they are most of what a program says)
ROTATION = ("field", "opcode", "field", "drop", "field", "duplicate", "field", "swap", "step", "padding", "codes",
            "col_out", "codes", "col_slice", "out_scale", "adc_fs", "col_flip", "image_rows", "image_outs",
            "constant", "binding")
#: what the timeline reads by design, so a changed timeline detects its mutation
TIMED = {"step", "drop", "duplicate", "swap", "image_rows", "field:PROG.every"}
OFF = Conditions(noise=False)


@dataclass
class Mutation:
    kind: str  # a ROTATION kind; fields as field:OP.name
    where: str
    apply: Callable[[Code], None]
    index: int = -1  # the row, or the image
    name: str = ""  # the field, or the table entry's column / output / row-plane
    new: float = 0


def copy_code(code: Code, images: bool) -> Code:
    """A copy whose arrays the mutation may change; the crossbar images are copied only when asked."""
    imgs = code.images
    if images and imgs is not None:
        imgs = Images(*(getattr(imgs, f.name).copy() for f in dataclasses.fields(Images)))
    return dataclasses.replace(code, instrs=code.instrs.copy(), images=imgs, image_rows=code.image_rows.copy(),
                               image_outs=code.image_outs.copy(), consts=[(a, d.copy()) for a, d in code.consts],
                               inputs=list(code.inputs), outputs=list(code.outputs), steps=list(code.steps))


# ---- drawing ----------------------------------------------------------------------------
def _int(rng: random.Random, v: int) -> int:
    cands = {v + 1, v - 1, 0, 2 * v + 1, v + (1 << 20), rng.randrange(0, max(2 * abs(v) + 8, 8))} - {v}
    return rng.choice(sorted(cands))


def _float(rng: random.Random, v: float) -> float:
    # no tiny relative change: an 8-bit input quantiser downstream rightly absorbs a 0.1% change
    cands = [-v, 2 * v + 1, v / 2 + 0.25, 0.0, rng.uniform(-4, 4)]
    cands = [c for c in cands if np.float32(c).tobytes() != np.float32(v).tobytes() and not np.isnan(c)]
    return float(rng.choice(cands))


def _field(code: Code, rng: random.Random, turn: int | None) -> Mutation:
    """A field of a row of the opcode whose turn it is (each opcode alike, however few its rows)."""
    ops = code.instrs[:, 0]
    present = sorted(set(ops.tolist()))
    op = present[turn % len(present)] if turn is not None else rng.choice(present)
    i = rng.choice(np.nonzero(ops == op)[0].tolist())
    op, f = isa.fields_of(code.instrs[i])
    name = rng.choice(list(f))
    col = 2 + isa.OPS[op][1].index(name)
    v = f[name]
    if op == "VOP" and name in ("alpha", "beta"):
        x = _float(rng, isa.bits_float(v))
        new, shown = isa.float_bits(x), f"{isa.bits_float(v):g} -> {x:g}"
    elif op == "VOP" and name == "fn":
        new = rng.choice([k for k in range(-1, len(isa.VOP_FNS) + 1) if k != v])
        shown = f"{v} -> {new}"
    elif name in ("every", "acc"):
        new = rng.choice([k for k in (0, 1, 2) if k != v])
        shown = f"{v} -> {new}"
    else:
        new = _int(rng, v)
        shown = f"{v} -> {new}"
    return Mutation(f"field:{op}.{name}", f"row {i} {op}.{name} {shown}",
                    lambda c: c.instrs.__setitem__((i, col), new), i, name, new)


def _rows(code: Code, rng: random.Random, kind: str) -> Mutation:
    n = len(code.instrs)
    i = rng.randrange(n - 1 if kind == "swap" else n)
    if kind == "padding":  # a row with a slot beyond its fields (IM2COL uses all of them)
        i = rng.choice([k for k in range(n) if len(isa.OPS[isa.NAMES[int(code.instrs[k, 0])]][1]) < isa.FIELDS])
    op = isa.NAMES.get(int(code.instrs[i, 0]), "?")
    if kind == "step":
        v = int(code.instrs[i, 1])
        new = rng.choice(sorted({v + 1, v - 1, len(code.steps), rng.randrange(max(len(code.steps), 1))} - {v}))
        return Mutation(kind, f"row {i} {op} step {v} -> {new}", lambda c: c.instrs.__setitem__((i, 1), new), i,
                        "step", new)
    if kind == "padding":
        col = 2 + rng.randrange(len(isa.OPS[op][1]), isa.FIELDS)
        return Mutation(kind, f"row {i} {op} slot {col - 2} 0 -> 1", lambda c: c.instrs.__setitem__((i, col), 1), i)
    if kind == "opcode":
        new = rng.choice([k for k in range(0, len(isa.OPS) + 2) if k != int(code.instrs[i, 0])])
        return Mutation(kind, f"row {i} opcode {op} -> {isa.NAMES.get(new, new)}",
                        lambda c: c.instrs.__setitem__((i, 0), new), i)
    if kind == "drop":
        return Mutation(kind, f"drop row {i} {op}", lambda c: setattr(c, "instrs", np.delete(c.instrs, i, 0)), i)
    if kind == "duplicate":
        return Mutation(kind, f"duplicate row {i} {op}",
                        lambda c: setattr(c, "instrs", np.insert(c.instrs, i, c.instrs[i], 0)), i)
    op2 = isa.NAMES.get(int(code.instrs[i + 1, 0]), "?")
    return Mutation(kind, f"swap rows {i} {op}, {i + 1} {op2}",
                    lambda c: c.instrs.__setitem__([i, i + 1], c.instrs[[i + 1, i]]), i)


def _column(spec, code: Code, rng: random.Random, p: int, inside: bool | None = None) -> int:
    """Mostly a column of the image's block (its data), sometimes any column."""
    used = np.nonzero((code.images.col_out[p] >= 0) & (code.images.col_out[p] < code.image_outs[p]))[0]
    inside = rng.random() < 0.8 if inside is None else inside
    return int(rng.choice(used)) if used.size and inside else rng.randrange(spec.cols)


def _table(spec, code: Code, rng: random.Random, kind: str) -> Mutation:
    imgs = code.images
    p = rng.randrange(len(imgs))
    if kind == "codes":
        inside = rng.random() < 0.8
        r = rng.randrange(int(code.image_rows[p]) if inside else spec.rows)
        c = _column(spec, code, rng, p, inside)
        plane = rng.randrange(spec.planes)
        v = int(imgs.codes[p, plane, r, c])
        new = (v ^ rng.randrange(1, 256)) if rng.random() < 0.5 else rng.choice([k for k in range(spec.levels)
                                                                                  if k != v])
        return Mutation(kind, f"image {p} device [{plane},{r},{c}] level {v} -> {new}",
                        lambda k: k.images.codes.__setitem__((p, plane, r, c), new), p, f"{plane},{r},{c}", new)
    if kind == "out_scale":
        j = rng.randrange(int(code.image_outs[p])) if rng.random() < 0.8 else rng.randrange(spec.outputs_per_crossbar)
        v = float(imgs.out_scale[p, j])
        new = _float(rng, v)
        return Mutation(kind, f"image {p} out_scale[{j}] {v:g} -> {new:g}",
                        lambda k: k.images.out_scale.__setitem__((p, j), new), p, str(j), new)
    c = _column(spec, code, rng, p)
    arr = getattr(imgs, kind)
    v = arr[p, c].item()
    if kind == "col_flip":
        new = rng.choice([k for k in (0, 1, 2) if k != v])
    elif kind == "adc_fs":
        new = rng.choice(sorted({v + 1, 0.9 * v, 0.0, 2 * v, v / 2, v + (1 << 20)} - {v}))
    else:
        new = _int(rng, int(v)) if rng.random() < 0.5 else rng.choice(
            [k for k in range(-1, (spec.outputs_per_crossbar if kind == "col_out" else spec.slices)) if k != v])
    return Mutation(kind, f"image {p} {kind}[{c}] {v:g} -> {new:g}",
                    lambda k: getattr(k.images, kind).__setitem__((p, c), new), p, str(c), new)


def draw(spec, code: Code, rng: random.Random, kind: str, turn: int | None = None) -> Mutation:
    if kind == "field":
        return _field(code, rng, turn)
    if kind in ("step", "padding", "opcode", "drop", "duplicate", "swap"):
        return _rows(code, rng, kind)
    if kind in TABLES:
        return _table(spec, code, rng, kind)
    if kind in ("image_rows", "image_outs"):
        p = rng.randrange(len(code.image_rows))
        v = int(getattr(code, kind)[p])
        new = _int(rng, v)
        return Mutation(kind, f"{kind}[{p}] {v} -> {new}", lambda k: getattr(k, kind).__setitem__(p, new), p)
    if kind == "constant":
        j = rng.randrange(len(code.consts))
        e = rng.randrange(code.consts[j][1].size)
        x = rng.randrange(1, 256)  # the top byte (sign, exponent): a low mantissa bit may round away in a sum

        def flip(k):
            k.consts[j][1].view(np.uint8)[4 * e + 3] ^= x
        return Mutation(kind, f"constant {j} (at {code.consts[j][0]}) element {e} top byte ^= {x}", flip)
    if kind == "binding":
        side = rng.choice(["inputs", "outputs"])
        j = rng.randrange(len(getattr(code, side)))
        b = getattr(code, side)[j]
        new = _int(rng, b.addr)
        return Mutation(kind, f"{side[:-1]} '{b.name}' address {b.addr} -> {new}",
                        lambda k: getattr(k, side).__setitem__(j, dataclasses.replace(b, addr=new)))
    raise ValueError(kind)


# ---- running and judging ---------------------------------------------------------------------
def values(spec, code: Code, feeds: list[dict], xbars: Crossbars | None = None,
           base: list[list[bytes]] | None = None) -> list[list[bytes]]:
    """Every output of every feed as bytes (bit-for-bit), noise off; given `base`, stops at the
    first feed whose outputs differ from it (the mutant is detected: the rest need not run)."""
    xb = xbars or Crossbars(spec, code.images, OFF)
    got = []
    for k, f in enumerate(feeds):
        o = execute(spec, code, f, xb)
        got.append([np.ascontiguousarray(o[n]).tobytes() for n in sorted(o)])
        if base is not None and got[-1] != base[k]:
            break
    return got


def timeline(spec, code: Code):
    tl = simulate(spec, code)
    return tl.seconds, tl.ops, tl.engine_busy_s, programming_cost(spec, code)


class CimMutator:
    """Judges mutations of one program on fixed feeds (the original's results computed once)."""

    def __init__(self, spec, code: Code, feeds: list[dict]):
        if code.images is None:
            raise ValueError("a timing-only CIM program has no crossbar images to run")
        self.spec, self.code, self.feeds = spec, code, feeds
        self.xbars = Crossbars(spec, code.images, OFF)
        self.base = values(spec, code, feeds, self.xbars)
        self.base_time = timeline(spec, code)
        self.fields = 0
        self.avail = [k for k in ROTATION if (k != "constant" or code.consts) and (k != "swap" or len(code.instrs) > 1)
                      and (k not in TABLES + ("image_rows", "image_outs") or len(code.image_rows))
                      and (k not in ("field", "step", "padding", "opcode", "drop", "duplicate") or len(code.instrs))]

    def judge(self, m: Mutation) -> Outcome:
        with np.errstate(all="ignore"):  # a mutant may overflow (inf, nan): that is its outputs changing
            return self._judge(m)

    def _judge(self, m: Mutation) -> Outcome:
        kind = "cim:" + (m.kind.split(".")[0] if m.kind.startswith("field:") else m.kind)
        mutant = copy_code(self.code, images=m.kind in TABLES)
        m.apply(mutant)
        try:
            got = values(self.spec, mutant, self.feeds, base=self.base)
            if got != self.base:
                return Outcome(kind, m.where, "detected", "outputs changed")
            t = timeline(self.spec, mutant)
        except KCError as e:
            return Outcome(kind, m.where, "detected", f"refused: {str(e).splitlines()[0][:120]}")
        except Exception as e:  # noqa: BLE001 - a simulator crash is what this test reports
            return Outcome(kind, m.where, "crash", f"{type(e).__name__}: {e} @ "
                           f"{traceback.extract_tb(e.__traceback__)[-1].name}")
        timed = t != self.base_time
        if timed and (m.kind in TIMED):
            return Outcome(kind, m.where, "detected", "timeline changed")
        why = neutral(self.spec, self.code, mutant, m, self.feeds, self.xbars)
        if why:
            return Outcome(kind, m.where, "neutral", why)
        why = "only the timeline changed (the values ignore it)" if timed else "no output or time changed"
        return Outcome(kind, m.where, "survived", why + self._masked(mutant))

    def _masked(self, mutant: Code) -> str:
        """A survivor's diagnosis (it stays one): final memories that differ say the mutated thing was
        read but did not reach an output (e.g. an 8-bit input quantiser downstream absorbed it)."""
        try:
            a, b = (_prefix(self.spec, c, Crossbars(self.spec, c.images, OFF), self.feeds[0], len(c.instrs))
                    for c in (self.code, mutant))
        except KCError:
            return ""
        n = int(np.count_nonzero(a.mem.view(np.uint32) != b.mem.view(np.uint32)))
        return (f"; {n} elements of the final memory differ: read, masked before the outputs" if n else
                "; the final memory is identical")

    def random(self, rng: random.Random, t: int) -> Outcome:
        kind = self.avail[t % len(self.avail)]
        self.fields += kind == "field"
        return self.judge(draw(self.spec, self.code, rng, kind, self.fields))


def more_feeds(code: Code, feeds: list[dict], seed: int) -> list[dict]:
    """The feeds, the first one negated, and seeded normal ones at 10x the first's spread: a ReLU
    channel that a random-weight model's bias keeps dead on its own inputs comes alive when the
    weights outweigh the bias, and a program of a few vectors (a pooler, a classifier) reads so few
    ADC values that a changed weight or full scale hides in their rounding (8 normal feeds then)."""
    rng = np.random.default_rng(seed)
    first = feeds[0]
    vectors = sum(int(r[5]) for r in code.instrs if int(r[0]) == isa.MVM)  # MVM field nvec
    normal = [{b.name: (rng.standard_normal(b.shape) * 10 * (float(np.std(first[b.name])) or 1.0)).astype(
        np.float32) for b in code.inputs} for _ in range(1 if vectors >= 64 else 8)]
    return list(feeds) + [{k: -np.asarray(v) for k, v in first.items()}] + normal


def score_cim(program, feeds: list[dict], n: int, seed: int = 0, extra: bool = True) -> Score:
    """n mutations of a CimProgram (kinds in turn), each judged on every feed (and more_feeds' two
    when `extra`), noise off."""
    m = CimMutator(program.spec, program.code, more_feeds(program.code, feeds, seed) if extra else feeds)
    rng = random.Random(seed)
    out = Score()
    for t in range(n if m.avail else 0):
        out.outcomes.append(m.random(rng, t))
    return out


__all__ = ["CimMutator", "Mutation", "copy_code", "dead", "draw", "more_feeds", "neutral", "score_cim"]
