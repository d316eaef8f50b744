"""Proofs that a surviving mutant of a CIM program computes what the original does
(kcompiler.backends.cim.mutate): each decodes rows, or walks the ORIGINAL rows, and never executes a
mutated row nor reads a mutated byte, so a field the simulator ignored can never pass as neutral.
The kinds of proof are listed in mutate's docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kcompiler.backends.cim import isa
from kcompiler.backends.cim.sim import Crossbars
from kcompiler.backends.cim.sim.code import Code
from kcompiler.backends.cim.sim.run import load, step
from kcompiler.errors import KCError

if TYPE_CHECKING:
    from kcompiler.backends.cim.mutate import Mutation

#: the crossbar image tables a mutation may change
TABLES = ("codes", "col_out", "col_slice", "out_scale", "adc_fs", "col_flip")
UNARY_ALPHA = {"leakyrelu", "hardsigmoid", "clip"}


# ---- what a row reads and writes (decoded, never executed) -------------------------------------
def _member(e: np.ndarray, base: int, pitch: int, count: int, width: int) -> np.ndarray:
    """Which elements e lie in `count` runs of `width` elements, run i at base + i * pitch."""
    if count <= 0 or width <= 0:
        return np.zeros(e.shape, bool)
    d = e - base
    if pitch < width or count == 1:  # overlapping or single runs: one contiguous span
        return (d >= 0) & (d < (count - 1) * max(pitch, 0) + width)
    return (d >= 0) & (d // pitch < count) & (d % pitch < width)


def _access(row: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """(reads, writes) of a row as runs (base, pitch, count, width). Reads over-approximate (a VOP's
    strided operand as its whole span), writes are exact: so a dead element is truly dead."""
    op, f = isa.fields_of(row)
    if op == "MVM":
        out = (f["dst"], f["dpitch"], f["nvec"], f["outs"])
        return [(f["src"], f["pitch"], f["nvec"], f["rows"])] + [out] * f["acc"], [out]
    if op == "IM2COL":
        total = f["n"] * f["oh"] * f["ow"] * f["c"] * f["kh"] * f["kw"]
        return [(f["src"], f["nstride"], f["n"], f["c"] * f["h"] * f["w"])], [(f["dst"], 0, 1, total)]
    if op == "XPOSE":
        size = f["a"] * f["b"] * f["c"]
        return [(f["src"], 0, 1, size)], [(f["dst"], 0, 1, size)]
    if op == "VOP":
        dims = (f["d0"], f["d1"], f["d2"], f["d3"])
        size = int(np.prod(dims))
        reads = [(f["a"], 0, 1, size)]
        if f["fn"] in isa.BINARY:
            reads.append((f["b"], 0, 1, sum((d - 1) * f[f"s{k}"] for k, d in enumerate(dims)) + 1))
        return reads, [(f["dst"], 0, 1, size)]
    return [], []


def dead(code: Code, start: int, elems: np.ndarray) -> bool:
    """Whether every element of `elems` is written by rows start.. before any of them reads it, and
    is not an output (the original program's rows: the mutated one is never consulted)."""
    pending = np.unique(np.asarray(elems, np.int64))
    for row in code.instrs[start:]:
        if not pending.size:
            return True
        reads, writes = _access(row)
        if any(_member(pending, *r).any() for r in reads):
            return False
        for w in writes:
            pending = pending[~_member(pending, *w)]
    return not any(_member(pending, b.addr, 0, 1, int(np.prod(b.shape))).any() for b in code.outputs)


# ---- the reference walk over the original rows --------------------------------------------
def _prefix(spec, code: Code, xbars: Crossbars, feed: dict, upto: int):
    m = load(spec, code, feed, xbars)
    for row in code.instrs[:upto]:
        step(m, row)
    return m


def _reorder(spec, code: Code, xbars: Crossbars, m: Mutation, feeds: list[dict]) -> str | None:
    """Run the original rows in the mutated order from the same state: equal held crossbars and
    memories equal but for dead elements make the mutant's rest of the program compute the same."""
    i, rows = m.index, code.instrs
    orig, mut = {"drop": ([i], []), "duplicate": ([i], [i, i]), "swap": ([i, i + 1], [i + 1, i])}[m.kind]
    for feed in feeds:
        a = _prefix(spec, code, xbars, feed, i)
        b = load(spec, code, feed, xbars)
        b.mem[:], b.held[:] = a.mem, a.held
        try:
            for k in orig:
                step(a, rows[k])
            for k in mut:
                step(b, rows[k])
        except KCError:
            return None
        diff = np.nonzero(a.mem.view(np.uint32) != b.mem.view(np.uint32))[0]
        if not np.array_equal(a.held, b.held) or (diff.size and not dead(code, max(orig) + 1, diff)):
            return None
    return {"swap": "commuting swap", "duplicate": "idempotent duplicate"}.get(m.kind, "no-op where it runs")


# ---- neutral by the row's own fields ---------------------------------------------------------
def _unused(op: str, f: dict, name: str, new: int) -> bool:
    """A field the row's other fields make irrelevant, whatever its new value (within the checks)."""
    if op == "VOP" and 0 <= f["fn"] < len(isa.VOP_FNS):
        fn, binary = isa.VOP_FNS[f["fn"]], f["fn"] in isa.BINARY
        uses = {"alpha": fn in UNARY_ALPHA | {"add"}, "beta": fn in ("hardsigmoid", "clip"), "b": binary}
        if name in uses or name[0] == "s":  # a stride of a dim of size 1 steps nowhere
            return not uses[name] if name in uses else not binary or (f[f"d{name[1]}"] == 1 and new >= 0)
    if op == "MVM" and name in ("pitch", "dpitch"):
        return f["nvec"] == 1 and new >= 0
    if op == "IM2COL":
        return {"nstride": f["n"] == 1 and new >= f["c"] * f["h"] * f["w"], "dh": f["kh"] == 1 and new > 0,
                "dw": f["kw"] == 1 and new > 0, "sh": f["oh"] == 1 and new > 0,
                "sw": f["ow"] == 1 and new > 0}.get(name, False)
    return False


#: per-unit independent ops and the field counting their units
_UNITS = {("MVM", "nvec"), ("IM2COL", "n"), ("XPOSE", "a")} | {("VOP", f"d{k}") for k in range(4)}


def _extension(code: Code, mutant: Code, m: Mutation) -> bool:
    """A count made larger on an op whose units are independent: the original elements are computed
    as before (for a VOP: every original element reads the same operand element, decoded) and the
    extra ones written are dead."""
    i = m.index
    op, f = isa.fields_of(code.instrs[i])
    _, g = isa.fields_of(mutant.instrs[i])
    if (op, m.name) not in _UNITS or m.new <= f[m.name] or m.new > 1 << 24:
        return False
    (_, w_old), (_, w_new) = _access(code.instrs[i]), _access(mutant.instrs[i])
    if op == "VOP":
        old, new = (f["d0"], f["d1"], f["d2"], f["d3"]), (g["d0"], g["d1"], g["d2"], g["d3"])
        if f["fn"] in isa.BINARY:
            offs = [sum(ix * r[f"s{k}"] for k, ix in enumerate(np.indices(d).reshape(4, -1))) for r, d in
                    ((f, old), (g, new))]
            if not np.array_equal(offs[0], offs[1][:offs[0].size]):
                return False
        size = int(np.prod(old))
        extra = np.arange(f["dst"] + size, f["dst"] + int(np.prod(new)))
    elif op == "MVM":
        extra = np.concatenate([np.arange(f["dst"] + v * f["dpitch"], f["dst"] + v * f["dpitch"] + f["outs"])
                                for v in range(f["nvec"], int(m.new))])
        if _member(extra, *w_old[0]).any():  # an extra vector overwrites an original one
            return False
    else:
        base, _, _, width = w_old[0]
        extra = np.arange(base + width, base + w_new[0][3])
    return dead(code, i + 1, extra)


def _block(spec, code: Code, m: Mutation) -> str | None:
    """Image entries outside the block the image's MVMs read (from the original tables)."""
    p, imgs = m.index, code.images
    col_out = imgs.col_out[p]
    unused = (col_out < 0) | (col_out >= code.image_outs[p])
    if m.kind == "codes":
        plane, r, c = (int(x) for x in m.name.split(","))
        return "outside the block" if r >= code.image_rows[p] or unused[c] else None
    if m.kind == "out_scale":
        return "outside the block" if int(m.name) >= code.image_outs[p] else None
    c = int(m.name)
    if m.kind == "col_out" and unused[c] and 0 <= m.new < code.image_outs[p]:
        quiet = not imgs.codes[p, :, :code.image_rows[p], c].any() and not imgs.col_flip[p, c] \
            and 0 <= imgs.col_slice[p, c] < spec.slices
        return "outside the block (a column of level-0 devices reads 0)" if quiet else None
    if unused[c]:
        return "outside the block"
    if m.kind == "adc_fs" and spec.adc_range == "full":
        signed = spec.encoding == "differential" or spec.input_slices == 1
        top = float(1 << (spec.adc_bits - 1)) if signed else float((1 << spec.adc_bits) - 1)
        if max(float(imgs.adc_fs[p, c]), float(m.new)) <= top:
            return "exact ADC (both full scales fit its codes)"
    return None


def neutral(spec, code: Code, mutant: Code, m: Mutation, feeds: list[dict], xbars: Crossbars) -> str | None:
    """Why a surviving mutant provably computes what the original does, or None."""
    if m.kind in ("drop", "duplicate", "swap"):
        return _reorder(spec, code, xbars, m, feeds)
    if m.kind in TABLES:
        return _block(spec, code, m)
    if m.kind == "step":  # a resident PROG costs no inference time (programming is once, charged apart)
        op, f = isa.fields_of(code.instrs[m.index])
        return "step of a resident PROG" if op == "PROG" and f["every"] == 0 else None
    if not m.kind.startswith("field:"):
        return None
    op, f = isa.fields_of(code.instrs[m.index])
    if _unused(op, f, m.name, int(m.new)):
        return "unused by the function"
    if op == "MVM" and m.name == "acc" and f["acc"] == 0 and m.new == 1:
        for feed in feeds:
            a = _prefix(spec, code, xbars, feed, m.index)
            idx = np.arange(a.mem.size)
            if a.mem.view(np.uint32)[_member(idx, f["dst"], f["dpitch"], f["nvec"], f["outs"])].any():
                return None
        return "zero destination"
    if _extension(code, mutant, m):
        return "extension into dead memory"
    if op == "PROG" and m.name == "image" and _copies(code, f["image"], int(m.new)):
        return "a copy of the same weights"
    return None


def _copies(code: Code, a: int, b: int) -> bool:
    """Whether images a and b of the ORIGINAL program are the same block with the same tables
    (replicas, Lowering.replicate): with noise off a crossbar programmed with either reads alike."""
    n, imgs = len(code.image_rows), code.images
    if not (0 <= a < n and 0 <= b < n) or imgs is None:
        return False
    if (code.image_rows[a], code.image_outs[a]) != (code.image_rows[b], code.image_outs[b]):
        return False
    return all(np.array_equal(getattr(imgs, t)[a], getattr(imgs, t)[b]) for t in TABLES)
