"""Mutation testing of PIM programs: does every field the simulator is given matter?

A mutation changes one thing of a compiled program in place of a copy: one field of one command
(addresses, rows, columns, counts, registers, flags, dtypes, the opcode), one descriptor entry, one
byte of the bank image or of the staging constants; or drops, duplicates or swaps commands. The
mutant is run on two inputs; it is *killed* if an output or the simulated timeline changes, or the
simulator raises ExecutionError.

A surviving mutant is *neutral* only if it provably changes nothing the program computes; each
reason is named in the result, and none of them executes a mutated command (so a field the
simulator ignored can never make its mutation look neutral):
  - "same bytes": the mutated program encodes to the same bytes (e.g. swapping two equal commands);
  - "commuting swap", "idempotent duplicate", "no-op where it runs": running the original commands
    in the mutated order (swapped, twice, or not at all) leaves every memory (banks and validity,
    buffers, registers, staging and validity, shift registers) bit-identical right there, on every
    input tried: e.g. commands of two channels in either order, a WR_BK run twice;
  - "identical row": an operand row changed to one holding the same bytes and validity at that
    point (an EW operand row equal to the previous op's result row);
  - "zero destination": HADD turned HCOPY onto a destination holding zeros (0 + x = x).
The inputs include one of large magnitude, so FP16 scale registers are nonzero and a dropped or
altered HRANGE or scale shows. Any other survivor counts against the score.
Image flips are drawn from columns the program reads; programs with K a multiple of the lanes and
N of a unit's outputs hold no padding lanes, so every image lane is data (a flip in a padding lane
of a padded program multiplies a zero and would be neutral: benchmarks should draw from data lanes).
Neither the node index (`step`, which only attributes time to a node) nor fields an opcode does not
use are mutated as "fields" (setting an unused field is its own kind, and the simulator refuses it).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from dataclasses import dataclass

import numpy as np

from kcompiler.backends.pim import sim
from kcompiler.backends.pim.isa import HOST_OPS, OPCODES, Command
from kcompiler.backends.pim.kernels import Kernel
from kcompiler.errors import ExecutionError

KINDS = ("field", "opcode", "unused_field", "drop", "duplicate", "swap", "descriptor", "image", "constant")


@dataclass
class Mutation:
    kind: str
    index: int  # command, descriptor or byte index
    detail: str
    apply: object  # callable(code) -> None, on a copy


def _copy(code: sim.Code) -> sim.Code:
    c = copy.copy(code)
    c.commands = list(code.commands)
    c.descs = code.descs.copy()
    c.image = code.image.copy() if code.image is not None else None
    c.consts = [(a, r.copy()) for a, r in code.consts]
    c._plan = None
    c._views = {}
    c._image_lock = threading.Lock()
    return c


def _new_value(rng: random.Random, v, name: str):
    if name == "imm":
        return rng.choice([v * 2.0 + 1.0, -v - 1.0, v * 0.5 + 0.25])
    cands = {v + 1, max(v - 1, 0), v * 2 + 1, v // 2, rng.randrange(0, max(2 * v + 2, 8)), 0, 1}
    cands.discard(v)
    return rng.choice(sorted(cands))


def draw(code: sim.Code, rng: random.Random, kind: str) -> Mutation:
    cmds = code.commands
    n = len(cmds)
    if kind == "field":
        i = rng.randrange(n)
        c = cmds[i]
        name = rng.choice(list(OPCODES[c.op][2]) + ["channel"] * (c.op not in HOST_OPS))
        v = _new_value(rng, getattr(c, name), name)
        return Mutation(kind, i, f"{c.op}.{name} {getattr(c, name)} -> {v}",
                        lambda k: k.commands.__setitem__(i, dataclasses.replace(k.commands[i], **{name: v})))
    if kind == "opcode":
        i = rng.randrange(n)
        op = rng.choice([o for o in OPCODES if o != cmds[i].op])
        return Mutation(kind, i, f"{cmds[i].op} -> {op}",
                        lambda k: k.commands.__setitem__(i, dataclasses.replace(k.commands[i], op=op)))
    if kind == "unused_field":
        i = rng.randrange(n)
        unused = [f.name for f in dataclasses.fields(Command)
                  if f.name not in set(OPCODES[cmds[i].op][2]) | {"op", "step", "channel"}]
        name = rng.choice(unused)
        v = 1.0 if name == "imm" else 1
        return Mutation(kind, i, f"{cmds[i].op}.{name} 0 -> {v}",
                        lambda k: k.commands.__setitem__(i, dataclasses.replace(k.commands[i], **{name: v})))
    if kind == "drop":
        i = rng.randrange(n)
        return Mutation(kind, i, f"drop {cmds[i].op}", lambda k: k.commands.pop(i))
    if kind == "duplicate":
        i = rng.randrange(n)
        return Mutation(kind, i, f"duplicate {cmds[i].op}", lambda k: k.commands.insert(i, k.commands[i]))
    if kind == "swap":
        i = rng.randrange(n - 1)

        def swap(k):
            k.commands[i], k.commands[i + 1] = k.commands[i + 1], k.commands[i]

        return Mutation(kind, i, f"swap {cmds[i].op} {cmds[i + 1].op}", swap)
    if kind == "descriptor":
        i = rng.randrange(code.descs.size)
        v = int(code.descs.flat[i])
        nv = _new_value(rng, v, "desc")
        return Mutation(kind, i, f"desc[{i // 12}][{i % 12}] {v} -> {nv}", lambda k: k.descs.flat.__setitem__(i, nv))
    if kind == "image":
        ch, bk, row, col = (int(x) for x in rng.choice(np.argwhere(code.image_valid)))
        # the high byte of a 16-bit element (little-endian byte 1: sign, exponent, top mantissa
        # bits); a flip in the low mantissa byte of one product can round away in the bf16/fp16
        # accumulation, which says nothing about whether the simulator read that lane
        lane, byte = rng.randrange(code.image.shape[-1]), 1
        x = rng.randrange(1, 256)

        def flip(k):
            k.image.view(np.uint8).reshape(k.image.shape + (2,))[ch, bk, row, col, lane, byte] ^= x

        return Mutation(kind, -1, f"image[{ch},{bk},{row},{col},{lane}] byte {byte} ^= {x}", flip)
    if kind == "constant":
        j = rng.randrange(len(code.consts))
        size = len(code.consts[j][1])
        # the top byte of an element (sign and exponent): a low mantissa byte of a float32
        # constant can round away when it is narrowed to the device's 16-bit type, which says
        # nothing about whether the simulator read it
        e = 4 if size % 4 == 0 else (2 if size % 2 == 0 else 1)
        b = rng.randrange(size // e) * e + e - 1
        x = rng.randrange(1, 256)
        return Mutation(kind, -1, f"constant {j} byte {b} ^= {x}", lambda k: k.consts[j][1].__setitem__(
            b, k.consts[j][1][b] ^ x))
    raise ValueError(kind)


def _observe(spec, code: sim.Code, feeds: list[dict]):
    outs = [sim.execute(spec, code, f)[0] for f in feeds]
    by: dict[int, list] = {}
    for c in code.commands:
        by.setdefault(c.step, []).append(c)
    timeline = []
    for s in sorted(by):
        k = Kernel("", "", by[s])
        timeline.append((s, k.time(spec), k.counts(spec)))
    return outs, timeline


def _same(a, b) -> bool:
    (oa, ta), (ob, tb) = a, b
    if ta != tb:
        return False
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)
               for x, y in zip(oa, ob))


def _no_effect(spec, orig: sim.Code, m: Mutation, feeds: list[dict]) -> bool:
    """Whether dropping, duplicating or swapping commands leaves the memories exactly as the original
    order does, right there, on every input. Only the original commands are executed, so a field the
    simulator ignored could not make a mutation look neutral."""
    i = m.index
    for f in feeds:
        a = sim.prefix_machine(spec, orig, f, i)
        b = a.clone()
        try:
            if m.kind == "drop":
                sim.step(a, i, orig.commands[i])
            elif m.kind == "duplicate":
                sim.step(a, i, orig.commands[i])
                sim.step(b, i, orig.commands[i])
                sim.step(b, i, orig.commands[i])
            else:  # swap
                for k in (i, i + 1):
                    sim.step(a, k, orig.commands[k])
                for k in (i + 1, i):
                    sim.step(b, k, orig.commands[k])
        except ExecutionError:
            return False
        if not all(np.array_equal(x, y) for x, y in zip(sim.state(a), sim.state(b))):
            return False
    return True


def _same_operand(spec, orig: sim.Code, mutant: sim.Code, m: Mutation, feeds: list[dict]) -> str | None:
    """Field and opcode changes that read equal data, checked on the memories themselves: an operand row
    changed to a row holding the same bytes (and validity) at that point; HADD turned HCOPY onto a
    destination that holds zeros (0 + x = x)."""
    c, d = orig.commands[m.index], mutant.commands[m.index]
    diff = {f.name for f in dataclasses.fields(Command) if getattr(c, f.name) != getattr(d, f.name)}
    rows = {"MAC_ABK": {"row"}, "EWADD": {"row", "row2"}, "EWMUL": {"row", "row2"}, "AF": {"row"},
            "RD_BK": {"row"}}.get(c.op, set())
    if diff and diff <= rows:
        name = diff.pop()
        old, new = getattr(c, name), getattr(d, name)
        if new >= orig.rows:
            return None
        bk = np.arange(c.units) * spec.banks_per_unit + c.bank
        cols = slice(c.col, c.col + c.count)
        for f in feeds:
            a = sim.prefix_machine(spec, orig, f, m.index)
            for arr in (a.bank, a.bank_valid):
                if not np.array_equal(arr[c.channel, bk, old, cols], arr[c.channel, bk, new, cols]):
                    return None
        return "identical row"
    if c.op == "HADD" and d.op == "HCOPY" and diff == {"op"} and c.dtype2 == 0 or (
            c.op == "HADD" and d.op == "HCOPY" and diff == {"op"} and d.dtype == 0):
        for f in feeds:
            a = sim.prefix_machine(spec, orig, f, m.index)
            dims, _ss, ds = a._desc3(c)
            dst, _ok = a._view(c.addr, 0, dims, ds, "check", read=True)
            if np.any(dst.view(np.uint32)):
                return None
        return "zero destination"
    return None


def neutral(spec, orig: sim.Code, mutant: sim.Code, m: Mutation, feeds: list[dict]) -> str | None:
    """Why the surviving mutant cannot change the program's meaning, or None."""
    if [c.encode() for c in orig.commands] == [c.encode() for c in mutant.commands] and \
            np.array_equal(orig.descs, mutant.descs) and (orig.image is None or np.array_equal(
                orig.image[orig.image_valid], mutant.image[orig.image_valid])) \
            and all(np.array_equal(a[1], b[1]) for a, b in zip(orig.consts, mutant.consts)):
        return "same bytes"
    if m.kind in ("drop", "duplicate", "swap") and _no_effect(spec, orig, m, feeds):
        return {"swap": "commuting swap", "duplicate": "idempotent duplicate"}.get(m.kind, "no-op where it runs")
    if m.kind in ("field", "opcode"):
        return _same_operand(spec, orig, mutant, m, feeds)
    return None


def score(spec, code: sim.Code, feeds: list[dict], n: int, seed: int = 0, kinds=KINDS) -> dict:
    """Apply `n` random mutations (kinds drawn in turn); per kind: killed, neutral, survived (with details)."""
    rng = random.Random(seed)
    base = _observe(spec, code, feeds)
    out = {k: {"killed": 0, "neutral": 0, "survived": [], "neutral_why": {}} for k in kinds}
    ncmd = len(code.commands)
    avail = [k for k in kinds if (k != "constant" or code.consts) and (k != "image" or code.image_valid.any())
             and (k != "descriptor" or code.descs.size)
             and (k not in ("field", "opcode", "unused_field", "drop", "duplicate") or ncmd)
             and (k != "swap" or ncmd > 1)]
    for t in range(n if avail else 0):  # (a program of no command, constant or image: nothing to mutate)
        kind = avail[t % len(avail)]
        m = draw(code, rng, kind)
        mutant = _copy(code)
        m.apply(mutant)
        try:
            got = _observe(spec, mutant, feeds)
        except ExecutionError:
            out[kind]["killed"] += 1
            continue
        if not _same(base, got):
            out[kind]["killed"] += 1
            continue
        why = neutral(spec, code, mutant, m, feeds)
        if why:
            out[kind]["neutral"] += 1
            out[kind]["neutral_why"][why] = out[kind]["neutral_why"].get(why, 0) + 1
        else:
            out[kind]["survived"].append(m.detail)
    killed = sum(v["killed"] for v in out.values())
    survived = sum(len(v["survived"]) for v in out.values())
    out["total"] = {"killed": killed, "survived": survived,
                    "neutral": sum(v["neutral"] for k, v in out.items() if k in kinds),
                    "score": killed / max(killed + survived, 1)}
    return out
