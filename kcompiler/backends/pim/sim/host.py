"""The host commands over the staging area: zeroing, strided copies with dtype conversion and FP16
scaling, reductions of read-back partial sums (a run of them as one unbuffered np.add.at), scalar
multiplies and the range rules that choose the shift registers' scales."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.pim.isa import PAIR, RANGE_RULES, UP, Command
from kcompiler.backends.pim.sim.faults import _Fail
from kcompiler.backends.pim.sim.memory import SREGS
from kcompiler.backends.pim.sim.numerics import NP_DTYPES, amax, shift_for, split_shift


class HostCommands:
    """The host commands' semantics over a Machine's memories."""

    # ---- host commands ---------------------------------------------------------------------
    def _desc3(self, c: Command):
        """A host copy's descriptor: (dims, source strides, destination strides)."""
        d = self.code.descs
        if c.desc >= len(d):
            raise _Fail(f"descriptor {c.desc} does not exist ({len(d)})")
        row = d[c.desc]
        return row[0:4], row[4:8], row[8:12]

    def _shift(self, c: Command) -> int:
        """The scaling shift a command reads from its shift register (or pair)."""
        regs = [c.reg] + ([c.reg + 1] if c.flags & PAIR else [])
        if any(r >= SREGS for r in regs):
            raise _Fail(f"shift register {c.reg} outside 0..{SREGS - 1}")
        if not all(self.sreg_valid[r] for r in regs):
            raise _Fail(f"reads shift register {c.reg} that no HRANGE wrote")
        return int(sum(self.sreg[r] for r in regs))

    def host(self, c: Command) -> None:
        """One host command over the staging area."""
        op = c.op
        if op == "HZERO":
            if c.length < 2 or c.length % 2:
                raise _Fail(f"HZERO of {c.length} bytes: not a whole number of 16-bit words")
            v, ok = self._view(c.addr, 2, [c.length // 2], [1], "HZERO", read=False)
            v[...] = 0
            self._mark(ok)
        elif op in ("HCOPY", "HADD"):
            dims, ss, ds = self._desc3(c)
            src, _ = self._view(c.addr2, c.dtype2, dims, ss, f"{op} source", read=True)
            dt = c.dtype if op == "HCOPY" else 0
            if _overlapping(dims, ds):
                raise _Fail(f"{op} destination elements overlap")
            dst, ok = self._view(c.addr, dt, dims, ds, f"{op} destination", read=(op == "HADD"), write=True)
            if op == "HADD":
                dst[...] = dst + src.astype(np.float32)
            else:
                s = self._shift(c) if (c.reg or c.flags & PAIR) else 0
                x = src.astype(np.float32) if src.dtype != np.float32 else np.array(src)
                if s:
                    x = np.ldexp(x, s if c.flags & UP else -s)
                dst[...] = x.astype(NP_DTYPES[c.dtype])
            self._mark(ok)
        elif op == "HMUL":
            v, _ = self._view(c.addr, 0, [c.length], [1], "HMUL", read=True, write=True)
            v[...] = v * np.float32(c.imm)
        elif op == "HRANGE":
            self.hrange(c)
        else:  # pragma: no cover - the opcode table and this dispatcher agree
            raise _Fail(f"no semantics for {op}")

    def hadd_run(self, cs: list[Command]) -> None:
        """Several HADDs as one unbuffered np.add.at (the same additions in the same order: repeated
        destinations are added in command order). Index arrays are built once per program."""
        key = ("hadd",) + tuple(cs)
        g = self.code._views.get(key)
        if g is None:
            g = self.code._views[key] = self._hadd_geometry(cs)
        if g is None:  # mixed source dtypes: one by one
            for c in cs:
                self.host(c)
            return
        src_dt, src_idx, src_w, dst_idx, dst_w = g
        if not (self.valid[src_w].all() and self.valid[dst_w].all()):
            for c in cs:  # the first command reading unwritten staging raises
                self.host(c)
            return
        vals = self.staging[:self.staging.size // src_dt.itemsize * src_dt.itemsize].view(src_dt)[src_idx]
        f32 = self.staging[:self.staging.size // 4 * 4].view(np.float32)
        np.add.at(f32, dst_idx, vals.astype(np.float32))

    def _hadd_geometry(self, cs: list[Command]):
        if len({c.dtype2 for c in cs}) != 1:
            return None
        src_dt = NP_DTYPES[cs[0].dtype2]
        sw = src_dt.itemsize // 2
        src_idx, dst_idx = [], []
        descs = self.code.descs
        d = np.array([c.desc for c in cs])
        if (d < len(descs)).all() and not np.any(descs[d][:, [0, 1, 2, 4, 5, 6, 8, 9, 10]] - [1, 1, 1, 0, 0, 0, 0, 0, 0]) \
                and (descs[d][:, [7, 11]] == 1).all():
            # all one-dimensional and contiguous (the reductions of read-back partial sums)
            n = descs[d][:, 3]
            for c, k in zip(cs, n):
                self._view(c.addr2, c.dtype2, [k], [1], "HADD source", read=False)
                self._view(c.addr, 0, [k], [1], "HADD destination", read=False)
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            src = np.repeat(np.array([c.addr2 // src_dt.itemsize for c in cs]), n) + within
            dst = np.repeat(np.array([c.addr // 4 for c in cs]), n) + within
            return src_dt, src, (src[:, None] * sw + np.arange(sw)).reshape(-1), dst, \
                (dst[:, None] * 2 + np.arange(2)).reshape(-1)
        for c in cs:
            dims, ss, ds = self._desc3(c)
            if _overlapping(dims, ds):
                raise _Fail("HADD destination elements overlap")
            self._view(c.addr2, c.dtype2, dims, ss, "HADD source", read=False)  # geometry checks only
            self._view(c.addr, 0, dims, ds, "HADD destination", read=False)
            for base, st, size, out in ((c.addr2, ss, src_dt.itemsize, src_idx), (c.addr, ds, 4, dst_idx)):
                off = np.zeros([int(d) for d in dims], np.int64) + base // size
                for ax, (d, stv) in enumerate(zip(dims, st)):
                    shape = [1] * len(dims)
                    shape[ax] = int(d)
                    off = off + (np.arange(int(d), dtype=np.int64) * int(stv)).reshape(shape)
                out.append(off.reshape(-1))
        src = np.concatenate(src_idx)
        dst = np.concatenate(dst_idx)
        src_w = (src[:, None] * sw + np.arange(sw)).reshape(-1)
        dst_w = (dst[:, None] * 2 + np.arange(2)).reshape(-1)
        return src_dt, src, src_w, dst, dst_w

    def hrange(self, c: Command) -> None:
        """HRANGE: a range rule's shifts, from the operands' magnitudes, into two shift registers."""
        if c.fn >= len(RANGE_RULES) or c.reg + 1 >= SREGS or c.reg == 0:
            raise _Fail(f"range rule {c.fn} / registers {c.reg},{c.reg + 1} do not exist")
        rule = RANGE_RULES[c.fn]
        # each rule reads its own fields; one it does not read must be 0
        unused = {"one": ("addr2", "count", "col", "imm", "gb"), "add": ("col", "imm", "gb"),
                  "mul": ("col", "imm", "gb"), "matvec_const": ("addr2", "count", "col"),
                  "matvec": ("imm", "gb")}[rule]
        if any(getattr(c, f) for f in unused):
            raise _Fail(f"HRANGE rule '{rule}' does not use {', '.join(f for f in unused if getattr(c, f))}")
        if c.length < 1:
            raise _Fail("HRANGE over no element")
        a, _ = self._view(c.addr, 0, [c.length], [1], "HRANGE operand", read=True)
        ea = amax(a)
        if rule == "one":
            r = (shift_for(ea), 0)
        elif rule == "matvec_const":
            # the weight's shift (gb) was chosen when its bank image was written; the extra shift
            # keeping the FP16 partial sums (at most max|x| * imm = max_n sum_k |w|) in range goes to x
            sx = shift_for(ea)
            r = (sx + shift_for(ea * 2.0 ** -sx * float(np.float32(c.imm))), c.gb)
        else:
            b, _ = self._view(c.addr2, 0, [c.count], [1], "HRANGE operand", read=True)
            eb = amax(b)
            if rule == "add":
                s = shift_for(ea + eb)
                r = (s, s)
            elif rule == "mul":
                sa, sb = shift_for(ea), shift_for(eb)
                r = split_shift(shift_for(ea * 2.0 ** -sa * eb * 2.0 ** -sb), ea, eb, sa, sb)
            else:  # matvec over an activation matrix [rows, col]
                if c.col < 1 or c.count % c.col:
                    raise _Fail(f"matrix of {c.count} elements is not rows of {c.col}")
                l1 = float(np.max(np.sum(np.abs(b.reshape(-1, c.col)), axis=-1))) if b.size else 0.0
                sx, sw = shift_for(ea), shift_for(eb)
                r = split_shift(shift_for(ea * 2.0 ** -sx * l1 * 2.0 ** -sw), ea, eb, sx, sw)
        self.sreg[c.reg], self.sreg[c.reg + 1] = r
        self.sreg_valid[c.reg] = self.sreg_valid[c.reg + 1] = True


def _overlapping(dims, strides) -> bool:
    """Whether a strided layout names some element twice (checked innermost-out by stride)."""
    span = 1
    for d, st in sorted(((int(d), int(st)) for d, st in zip(dims, strides) if d > 1), key=lambda t: t[1]):
        if st < span:
            return True
        span = st * (d - 1) + span
    return False

