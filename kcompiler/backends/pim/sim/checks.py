"""The command decoder's static checks, done once per program: fields a command does not use are 0,
descriptors are canonical, staging accesses stay inside one buffer of the program's table; and
the staging bytes each device command reads and writes."""

from __future__ import annotations

import bisect

import numpy as np

from kcompiler.backends.pim.isa import ALLOWED_FLAGS, DTYPES, HOST, HOST_OPS, OPCODES, Command
from kcompiler.backends.pim.sim.code import Code
from kcompiler.backends.pim.sim.faults import _Fail
from kcompiler.backends.pim.sim.numerics import NP_DTYPES
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ExecutionError


def _check_desc(code: Code, c: Command) -> None:
    """Descriptors are canonical, so no entry is ignored: a bank transfer uses entries 0..3 (the rest
    0); a host copy's dims are >= 1 and a dim of 1 has stride 0."""
    if c.desc >= len(code.descs):
        raise _Fail(f"descriptor {c.desc} does not exist ({len(code.descs)})")
    d = code.descs[c.desc]
    if c.op in ("WR_BK", "RD_BK"):
        if d[4:].any() or d[2] < 1:
            raise _Fail(f"bank-transfer descriptor {d.tolist()} is not (ustride, kstride, grp >= 1, phase)")
    else:
        dims = d[0:4]
        if (dims < 1).any() or ((dims == 1) & ((d[4:8] != 0) | (d[8:12] != 0))).any():
            raise _Fail(f"copy descriptor {d.tolist()}: dims must be >= 1 and a dim of 1 has stride 0")


def _check_fields(c: Command, channels: int) -> None:
    """The channel, the fields a command does not use (0), its dtypes and flags."""
    if c.op in HOST_OPS:
        if c.channel != HOST:
            raise _Fail(f"host command on channel {c.channel}")
    elif c.channel >= channels:
        raise _Fail(f"channel {c.channel} outside the device's {channels}")
    bad = c.unused_fields()
    if bad:
        raise _Fail(f"fields {', '.join(bad)} are not used by {c.op} and must be 0")
    for name in ("dtype", "dtype2"):
        if name in OPCODES[c.op][2] and getattr(c, name) not in DTYPES:
            raise _Fail(f"unknown {name} {getattr(c, name)}")
    if c.flags & ~ALLOWED_FLAGS.get(c.op, 0):
        raise _Fail(f"flags {c.flags} not allowed on {c.op}")



#: staging reads and writes of a device command, for the lock-step proof
def _staging_io(code: Code, c: Command, spec: PimSpec) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    eb = spec.element_bytes
    if c.op == "WR_GB":
        return (c.addr, c.addr + c.length * eb), None
    if c.op == "RD_MAC":
        accb = 4 if spec.accumulate_dtype == "float32" else 2
        lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
        return None, (c.addr, c.addr + c.units * c.nacc * lpa * accb)
    if c.op in ("WR_BK", "RD_BK"):
        if c.desc >= len(code.descs):
            return (0, 1 << 62), (0, 1 << 62)  # let the slow path report it
        u, k, g, p = (int(v) for v in code.descs[c.desc][:4])
        j = p + c.count - 1
        hi = c.addr + ((c.units - 1) * u + (j // max(g, 1)) * k + (j % max(g, 1)) * spec.simd_lanes
                       + spec.simd_lanes) * eb
        rng = (c.addr, hi)
        return (rng, None) if c.op == "WR_BK" else (None, rng)
    return None, None



def _host_ranges(code: Code, c: Command) -> list[tuple[int, int]]:
    """Staging byte ranges a host command reads or writes (bounding ranges of strided views)."""
    def strided(addr, dtype, dims, strides):
        size = NP_DTYPES[dtype].itemsize if dtype in NP_DTYPES else 1
        return addr, addr + (sum((int(d) - 1) * int(st) for d, st in zip(dims, strides)) + 1) * size

    if c.op == "HZERO":
        return [(c.addr, c.addr + c.length)]
    if c.op == "HMUL":
        return [(c.addr, c.addr + 4 * c.length)]
    if c.op == "HRANGE":
        out = [(c.addr, c.addr + 4 * c.length)]
        return out + ([(c.addr2, c.addr2 + 4 * c.count)] if c.addr2 or c.count else [])
    if c.op in ("HCOPY", "HADD") and c.desc < len(code.descs):
        d = code.descs[c.desc]
        return [strided(c.addr2, c.dtype2, d[0:4], d[4:8]),
                strided(c.addr, c.dtype if c.op == "HCOPY" else 0, d[0:4], d[8:12])]
    return []


def _check_regions(code: Code, c: Command, spec: PimSpec) -> None:
    """Every staging range the command touches lies inside one buffer of the program's table."""
    if not len(code.regions):
        return
    if c.op in HOST_OPS:
        ranges = _host_ranges(code, c)
    else:
        r, w = _staging_io(code, c, spec)
        ranges = [x for x in (r, w) if x]
    key = ("regions", len(code.regions))
    table = code._views.get(key)
    if table is None:
        table = code._views[key] = (code.regions[:, 0].tolist(), code.regions[:, 1].tolist())
    starts, ends = table
    for lo, hi in ranges:
        k = bisect.bisect_right(starts, lo) - 1
        if k < 0 or hi > ends[k]:
            raise _Fail(f"staging bytes {lo}..{hi} are not inside one buffer (buffer overflow)")


def _check_buffer_table(code: Code) -> None:
    """The program's buffer table is sorted, disjoint and has no empty buffer."""
    r = code.regions
    if len(r) and ((r[:, 1] <= r[:, 0]).any() or (r[1:, 0] < r[:-1, 1]).any()):
        k = int(np.flatnonzero(r[1:, 0] < r[:-1, 1])[0]) if (r[1:, 0] < r[:-1, 1]).any() else 0
        raise ExecutionError(f"PIM program's buffer table: buffers {r[k].tolist()} and {r[k + 1].tolist()} "
                             "overlap or are empty", hint="the artifact's program table is damaged; recompile")


def _static_error(code: Code, c: Command, spec: PimSpec) -> str | None:
    """Why a command fails the static checks, or None."""
    try:
        _check_fields(c, spec.channels)
        if "desc" in OPCODES[c.op][2]:
            _check_desc(code, c)
        _check_regions(code, c, spec)
    except _Fail as exc:
        return str(exc)
    return None

