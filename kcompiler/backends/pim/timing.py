"""Command-level DRAM timing of one channel's PIM command stream.

Each channel has two resources: its banks (lock-stepped in all-bank mode: one open row
address for all of them) and its external data bus. Column commands (MAC_ABK, EW*, AF) need
the row open: a row switch costs a precharge (after tRAS and tRTP), tRP, the activation of
every bank (one command, or bank by bank under tRRD and the four-activation window tFAW)
and tRCD before the first column; columns then follow at tCCD_L (or the unit's own pace).
Transfers (WR_GB, RD_MAC, WR_BK, RD_BK) occupy the bus and overlap with row switches, but
a buffer is not overwritten while MACs read it, nor accumulators before they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kcompiler.backends.pim.isa import BURST, HOST_OPS, RESIDENT, Command
from kcompiler.backends.pim.spec import PimSpec


@dataclass
class ChannelTime:
    seconds: float = 0.0
    activations: int = 0  # all-bank row activations
    columns: int = 0  # all-bank column commands
    io_bytes: int = 0
    busy_columns_s: float = 0.0
    stall_s: dict[str, float] = field(default_factory=dict)


def simulate_channel(spec: PimSpec, commands: list[Command]) -> ChannelTime:
    t = spec.timing
    tck = t.tck_s
    period = spec.column_period_s
    io_s_per_burst = BURST / spec.io_bandwidth_per_channel
    nb = spec.banks_per_channel
    if t.all_bank_act_in_faw:
        act_spread = max((nb - 1) * t.tRRD, ((nb - 1) // 4) * t.tFAW) * tck
    else:
        act_spread = 0.0
    open_row = -1
    act_t = -1e9
    last_col = -1e9  # issue time of the last column command
    bus_free = 0.0
    buf_ready = 0.0  # the input buffer holds what the next MAC needs
    buf_busy_until = 0.0  # MACs read the buffer until then
    acc_free = 0.0  # accumulators read out
    bank_data_ready = 0.0  # operands written by WR_BK
    out = ChannelTime()
    end = 0.0
    eb = spec.element_bytes
    acc_bytes = 4 if spec.accumulate_dtype == "float32" else 2
    lpa = 1 if spec.mac_dataflow == "dot" else spec.simd_lanes
    for c in commands:
        if c.op in HOST_OPS or c.flags & RESIDENT:
            # host-side conversion, scaling and reduction are outside the device's timeline; a
            # resident KV cache is already in the banks (frontend/state.py): no bus time
            continue
        bursts = c.bursts(spec.simd_lanes, eb, acc_bytes, lpa)
        if c.op in ("MAC_ABK", "EWADD", "EWMUL", "AF"):
            first = last_col + period
            if c.row != open_row:
                pre = max(act_t + t.tRAS * tck, last_col + t.tRTP * tck) if open_row >= 0 else 0.0
                act = max(pre + (t.tRP * tck if open_row >= 0 else 0.0), 0.0)
                act_t = act
                rcd = t.tRCD_mac if c.op == "MAC_ABK" else t.tRCD
                first = max(first, act + act_spread + rcd * tck)
                open_row = c.row
                out.activations += 1
            deps = buf_ready if c.op == "MAC_ABK" else bank_data_ready
            if c.op == "MAC_ABK":
                deps = max(deps, acc_free)
            start = max(first, deps)
            last_col = start + (c.count - 1) * period
            out.columns += c.count
            out.busy_columns_s += c.count * period
            done = last_col + period
            if c.op == "MAC_ABK":
                buf_busy_until = done
            end = max(end, done)
        elif c.op == "WR_GB":
            start = max(bus_free, buf_busy_until)
            bus_free = start + bursts * io_s_per_burst
            buf_ready = bus_free
            out.io_bytes += bursts * BURST
            end = max(end, bus_free)
        elif c.op == "RD_MAC":
            start = max(bus_free, last_col + period)
            bus_free = start + bursts * io_s_per_burst
            acc_free = bus_free
            out.io_bytes += bursts * BURST
            end = max(end, bus_free)
        elif c.op == "WR_BK":
            start = bus_free
            bus_free = start + bursts * io_s_per_burst
            bank_data_ready = bus_free
            out.io_bytes += bursts * BURST
            end = max(end, bus_free)
        elif c.op == "RD_BK":
            start = max(bus_free, last_col + period)
            bus_free = start + bursts * io_s_per_burst
            out.io_bytes += bursts * BURST
            end = max(end, bus_free)
        else:  # pragma: no cover - the ISA table and this model must agree
            raise AssertionError(f"no timing for PIM command {c.op}")
    out.seconds = end
    return out
