"""The fast path's plan: the command list grouped into host commands, runs of reductions and
lock-step groups of device commands, where the fields prove the grouping changes nothing."""

from __future__ import annotations

import heapq

from kcompiler.backends.pim.isa import HOST_OPS, Command
from kcompiler.backends.pim.sim.checks import _staging_io, _static_error
from kcompiler.backends.pim.sim.code import Code
from kcompiler.backends.pim.spec import PimSpec


def _key(c: Command):
    """The fields of a device command but its channel and staging address (equal keys: one group)."""
    return (c.op, c.row, c.col, c.count, c.flags, c.bank, c.units, c.acc, c.nacc, c.row2, c.row3, c.gb, c.length,
            c.desc, c.fn, c.step)


def _plan(code: Code, spec: PimSpec, lockstep: bool = True) -> list:
    """Group the command list into host commands and lock-step groups of device commands.

    Channels share nothing but the staging area. So within a maximal run of device commands, if no
    channel writes staging that another channel of the run reads or writes, any interleaving that
    keeps each channel's own order gives the same memories: the run is executed position by
    position (the p-th command of every channel), one call per set of identical fields. Fields are
    checked here once (the plan is rebuilt whenever the command list changes)."""
    cmds = code.commands
    out: list = []
    i, n = 0, len(cmds)
    while i < n:
        bad = _static_error(code, cmds[i], spec)
        if bad:
            out.append(("error", i, bad))
            i += 1
            continue
        if cmds[i].op == "HADD" and lockstep:
            # a run of reductions: one np.add.at over all of them, which adds repeated destinations
            # in the order they appear, as the commands one by one would
            j = i + 1
            while j < n and cmds[j].op == "HADD" and not _static_error(code, cmds[j], spec):
                j += 1
            out.append(("hadd", list(range(i, j))) if j - i > 1 else ("one", i))
            i = j
            continue
        if cmds[i].op in HOST_OPS:
            out.append(("one", i))
            i += 1
            continue
        j = i + 1
        while j < n and cmds[j].op not in HOST_OPS and not _static_error(code, cmds[j], spec):
            j += 1
        blocks: dict[int, list[int]] = {}
        for k in range(i, j):
            blocks.setdefault(cmds[k].channel, []).append(k)
        if not lockstep or len(blocks) < 2 or not _independent(code, spec, blocks):
            out.extend(("one", k) for k in range(i, j))
        else:
            depth = max(len(b) for b in blocks.values())
            for p in range(depth):
                groups: dict = {}
                for b in blocks.values():
                    if p < len(b):
                        groups.setdefault(_key(cmds[b[p]]), []).append(b[p])
                out.extend(("group", g) if len(g) > 1 else ("one", g[0]) for g in groups.values())
        i = j
    return out



def _independent(code: Code, spec: PimSpec, blocks: dict[int, list[int]]) -> bool:
    """No channel writes staging bytes another channel of the run reads or writes (a sweep over the
    intervals sorted by start, counting the open ones per channel)."""
    ev = []
    for ch, idx in blocks.items():
        for k in idx:
            r, w = _staging_io(code, code.commands[k], spec)
            if r:
                ev.append((r[0], r[1], ch, False))
            if w:
                ev.append((w[0], w[1], ch, True))
    if not any(e[3] for e in ev):
        return True
    ev.sort()
    heap: list = []
    open_all: dict[int, int] = {}
    open_w: dict[int, int] = {}
    n_all = n_w = 0
    for a0, a1, ch, is_w in ev:
        while heap and heap[0][0] <= a0:
            _e, och, ow = heapq.heappop(heap)
            open_all[och] -= 1
            n_all -= 1
            if ow:
                open_w[och] -= 1
                n_w -= 1
        if is_w and n_all - open_all.get(ch, 0) > 0:
            return False
        if n_w - open_w.get(ch, 0) > 0:
            return False
        heapq.heappush(heap, (a1, ch, is_w))
        open_all[ch] = open_all.get(ch, 0) + 1
        n_all += 1
        if is_w:
            open_w[ch] = open_w.get(ch, 0) + 1
            n_w += 1
    return True

