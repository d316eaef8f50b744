"""The device commands, each on the channels `chs` of a lock-step group: the global-buffer write, the
MAC units (BF16 dot product into FP32, or FP16 multiply-accumulate), the register read-back, the
bank transfers and the elementwise units; and the compiler's bank-image writer (WR_BK's layout)."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.pim.isa import CLR, Command
from kcompiler.backends.pim.sim.activation import AF_FUNCS
from kcompiler.backends.pim.sim.faults import _Fail
from kcompiler.backends.pim.spec import PimSpec


class DeviceCommands:
    """The device commands' semantics over a Machine's memories."""

    def wr_gb(self, chs, cs: list[Command]) -> None:
        """WR_GB: staging words into each channel's global buffer."""
        c = cs[0]
        if c.gb + c.length > self.spec.input_buffer_elems or c.length < 1:
            raise _Fail(f"global buffer overflow: {c.gb}+{c.length} > {self.spec.input_buffer_elems} elements")
        for ch, ci in zip(chs, cs):
            w = self._words(ci.addr, c.length, "WR_GB source")
            if not self.valid[w].all():
                raise _Fail("reads staging that nothing wrote")
            self.gb[ch, c.gb:c.gb + c.length] = self.words[w]
            self.gb_valid[ch, c.gb:c.gb + c.length] = True

    def mac_abk(self, chs, c: Command) -> None:
        """MAC_ABK: every unit multiplies a bank row by the global buffer into its accumulator(s)."""
        self._geometry(c)
        regs = self.spec.accumulators_per_unit
        lanes = self.lanes
        if self.dot:
            if c.nacc != 1 or c.acc >= regs:
                raise _Fail(f"accumulator {c.acc} (nacc={c.nacc}) outside the unit's {regs} register(s)")
            n = c.count * lanes
            if c.gb + n > self.spec.input_buffer_elems:
                raise _Fail(f"global buffer overflow: reads {c.gb}..{c.gb + n}")
            if not self.gb_valid[chs, c.gb:c.gb + n].all():
                raise _Fail("reads global-buffer elements nothing wrote")
            w = self._bank_read(chs, c, c.row).astype(np.float32)
            x = self.gb[chs, c.gb:c.gb + n].view(self.dev).astype(np.float32).reshape(len(chs), 1, c.count, lanes)
            prod = w * x  # BF16 x BF16 is exact in FP32
            while prod.shape[-1] > 1:  # the adder tree, level by level
                prod = prod[..., 0::2] + prod[..., 1::2]
            tree = prod[..., 0]  # [ch, unit, count]
            if c.flags & CLR:
                a0 = np.zeros(tree.shape[:2], np.float32)
            else:
                if not self.acc_valid[chs[:, None], np.arange(c.units)[None, :], c.acc].all():
                    raise _Fail(f"accumulates onto register {c.acc} that was never cleared")
                a0 = self.acc[chs[:, None], np.arange(c.units)[None, :], c.acc, 0]
            # the accumulator, one column command at a time (ufunc.accumulate adds in order)
            run = np.add.accumulate(np.concatenate([a0[..., None], tree], axis=-1), axis=-1)[..., -1]
            self.acc[chs[:, None], np.arange(c.units)[None, :], c.acc, 0] = run
            self.acc_valid[chs[:, None], np.arange(c.units)[None, :], c.acc] = True
        else:
            if not 1 <= c.nacc <= regs or c.acc >= c.nacc:
                raise _Fail(f"registers: phase {c.acc} of {c.nacc} outside the unit's {regs}")
            nk = (c.acc + c.count + c.nacc - 1) // c.nacc
            if c.gb + nk > self.spec.input_buffer_elems:
                raise _Fail(f"global buffer overflow: reads {c.gb}..{c.gb + nk}")
            if not self.gb_valid[chs, c.gb:c.gb + nk].all():
                raise _Fail("reads global-buffer elements nothing wrote")
            w = self._bank_read(chs, c, c.row)  # [ch, unit, count, lanes] fp16
            xk = self.gb[chs, c.gb:c.gb + nk].view(self.dev)  # [ch, nk]
            j = c.acc + np.arange(c.count)
            # FP16 multiply and FP16 accumulate. numpy's float16 arithmetic is float32 arithmetic rounded
            # to float16 after every operation; doing exactly that on float32 arrays gives the same bits
            # several times faster than numpy's float16 loops
            f16, f32 = np.float16, np.float32
            prod = (w.astype(f32) * xk[:, None, j // c.nacc, None].astype(f32)).astype(f16).astype(f32)
            units = np.arange(c.units)
            if c.flags & CLR:
                self.acc[chs[:, None], units[None, :], :c.nacc] = 0
                self.acc_valid[chs[:, None], units[None, :], :c.nacc] = True
            elif not self.acc_valid[chs[:, None], units[None, :], :c.nacc].all():
                raise _Fail(f"accumulates onto registers 0..{c.nacc - 1} that were never cleared")
            acc = self.acc[chs[:, None], units[None, :], :c.nacc].astype(f32)  # [ch, unit, nacc, lanes]
            if c.acc == 0 and c.count % c.nacc == 0:
                p = prod.reshape(len(chs), c.units, c.count // c.nacc, c.nacc, lanes)
                for k in range(p.shape[2]):  # in k order, each register rounding to FP16 after every add
                    acc = (acc + p[:, :, k]).astype(f16).astype(f32)
            else:  # a run starting mid-k: column by column
                for i, jj in enumerate(j):
                    r = jj % c.nacc
                    acc[:, :, r] = (acc[:, :, r] + prod[:, :, i]).astype(f16).astype(f32)
            self.acc[chs[:, None], units[None, :], :c.nacc] = acc.astype(f16)  # GRF_B holds FP16
        self.counts["macs"] += len(chs) * c.units * c.count * lanes

    def rd_mac(self, chs, cs: list[Command]) -> None:
        """RD_MAC: the accumulators read back into staging."""
        c = cs[0]
        regs = self.spec.accumulators_per_unit
        if not 1 <= c.units <= self.upc or c.nacc < 1 or c.acc + c.nacc > regs:
            raise _Fail(f"reads registers {c.acc}..{c.acc + c.nacc} of {c.units} units: outside the device")
        units = np.arange(c.units)
        regs_ = slice(c.acc, c.acc + c.nacc)
        if not self.acc_valid[chs[:, None], units[None, :], regs_].all():
            raise _Fail("reads accumulators nothing wrote")
        vals = self.acc[chs[:, None], units[None, :], regs_]
        nwords = c.units * c.nacc * self.lpa * self.accdt.itemsize // 2
        for k, (ch, ci) in enumerate(zip(chs, cs)):
            w = self._words(ci.addr, nwords, "RD_MAC destination")
            if self.accdt.itemsize == 4 and ci.addr % 4:
                raise _Fail(f"RD_MAC destination {ci.addr} not aligned to 4 bytes")
            self.words[w] = np.ascontiguousarray(vals[k]).reshape(-1).view(np.uint16)
            self.valid[w] = True

    def _bk_index(self, c: Command) -> np.ndarray:
        """Staging element index (relative to addr) of every (unit, column, lane) a bank transfer moves."""
        key = (c.desc, c.count, c.units)
        hit = self._rel.get(key)
        if hit is None:
            hit = self._rel[key] = self._bk_index1(c)
        return hit

    def _bk_index1(self, c: Command) -> np.ndarray:
        """_bk_index, worked out (and the descriptor checked)."""
        d = self.code.descs
        if c.desc >= len(d):
            raise _Fail(f"descriptor {c.desc} does not exist ({len(d)})")
        ustride, kstride, grp, phase = (int(v) for v in d[c.desc][:4])
        if grp < 1 or not 0 <= phase < grp or ustride < 0 or kstride < 0:
            raise _Fail(f"bad bank-transfer descriptor {d[c.desc][:4].tolist()}")
        one_group = (phase + c.count + grp - 1) // grp == 1
        if one_group and grp > 1:
            raise _Fail(f"descriptor {d[c.desc][:4].tolist()}: a run inside one group of columns is written "
                        "with grp 1")
        if (c.units == 1 and ustride) or (c.count == 1 and kstride):
            raise _Fail(f"descriptor {d[c.desc][:4].tolist()} sets a stride {c.op} of {c.units} unit(s) x "
                        f"{c.count} column(s) does not use")
        j = phase + np.arange(c.count)
        col = (j // grp) * kstride + (j % grp) * self.lanes
        return (np.arange(c.units)[:, None, None] * ustride + col[None, :, None]
                + np.arange(self.lanes)[None, None, :])

    def wr_bk(self, chs, cs: list[Command]) -> None:
        """WR_BK: staging words into a bank row of every unit."""
        c = cs[0]
        self._geometry(c)
        rel = self._bk_index(c)
        hi = int(rel.max()) + 1
        for ci in cs:
            self._words(ci.addr, hi, "WR_BK source")
        idx = rel[None] + (np.array([ci.addr for ci in cs]) // 2)[:, None, None, None]
        if not self.valid[idx].all():
            raise _Fail("reads staging that nothing wrote")
        self._bank_write(chs, c, c.row, self.words[idx].view(self.dev))

    def rd_bk(self, chs, cs: list[Command]) -> None:
        """RD_BK: a bank row of every unit into staging."""
        c = cs[0]
        self._geometry(c)
        rel = self._bk_index(c)
        hi = int(rel.max()) + 1
        for ci in cs:
            self._words(ci.addr, hi, "RD_BK destination")
        data = self._bank_read(chs, c, c.row)
        # (channels of a lock-step group write disjoint staging: the plan proved it)
        idx = rel[None] + (np.array([ci.addr for ci in cs]) // 2)[:, None, None, None]
        self.words[idx] = data.view(np.uint16)
        self.valid[idx] = True

    def ew(self, chs, c: Command) -> None:
        """EWADD, EWMUL, AF: the elementwise units, from bank rows into a bank row."""
        rows = ("row", "row3") if c.op == "AF" else ("row", "row2", "row3")
        self._geometry(c, rows)
        a = self._bank_read(chs, c, c.row).astype(np.float32)
        if c.op == "AF":
            if c.fn >= len(self.code.fns):
                raise _Fail(f"activation function {c.fn} not in the program's table ({len(self.code.fns)})")
            name, p = self.code.fns[c.fn]
            y = AF_FUNCS[name](p)(a)
        else:
            b = self._bank_read(chs, c, c.row2).astype(np.float32)
            y = a + b if c.op == "EWADD" else a * b
        self._bank_write(chs, c, c.row3, y.astype(self.dev))

    # ---- dispatch ------------------------------------------------------------------------------
    def exec_group(self, cs: list[Command]) -> None:
        """One command on each of several channels (identical but for channel and staging address)."""
        c = cs[0]
        chs = np.array([x.channel for x in cs])
        if c.op == "MAC_ABK":
            self.mac_abk(chs, c)
        elif c.op == "WR_GB":
            self.wr_gb(chs, cs)
        elif c.op == "RD_MAC":
            self.rd_mac(chs, cs)
        elif c.op == "WR_BK":
            self.wr_bk(chs, cs)
        elif c.op == "RD_BK":
            self.rd_bk(chs, cs)
        else:
            self.ew(chs, c)



def write_image(spec: PimSpec, image: np.ndarray, valid: np.ndarray, descs: np.ndarray, cmds: list[Command],
                data: np.ndarray) -> None:
    """Run WR_BK commands from `data` (16-bit words, addressed from 0) into a bank image: the compiler
    lays constant matrices out with the same command the program uses for activations."""
    lanes = spec.simd_lanes
    for c in cmds:
        ustride, kstride, grp, phase = (int(v) for v in descs[c.desc][:4])
        j = phase + np.arange(c.count)
        rel = (np.arange(c.units)[:, None, None] * ustride + ((j // grp) * kstride + (j % grp) * lanes)[None, :, None]
               + np.arange(lanes)[None, None, :])
        bk = np.arange(c.units) * spec.banks_per_unit + c.bank
        image[c.channel, bk, c.row, c.col:c.col + c.count] = data[c.addr // 2 + rel]
        valid[c.channel, bk, c.row, c.col:c.col + c.count] = True

