"""A CIM chip's compiled program: instruction rows, crossbar images and memory image (sim.Code),
run under Conditions (time after programming, noise, seed, drift compensation) for its values and
timed from the same rows."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kcompiler.backends.base import Program, Timeline
from kcompiler.backends.cim import isa
from kcompiler.backends.cim.conditions import Conditions
from kcompiler.backends.cim.sim import Code, Crossbars, execute
from kcompiler.backends.cim.sim.timing import programming_cost, simulate
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import ExecutionError


class CimProgram(Program):
    """``code`` is the live object the simulator reads on every run (mutate its arrays in place, then
    call ``invalidate`` so the next run re-reads the crossbars)."""

    def __init__(self, device: str, spec: CimSpec, code: Code, conditions: Conditions):
        self.device = device
        self.spec = spec
        self.code = code
        self.conditions = conditions
        self._xbars: Crossbars | None = None

    @property
    def output_names(self) -> list[str]:
        return [b.name for b in self.code.outputs]

    def invalidate(self) -> None:
        self._xbars = None

    def set_conditions(self, conditions: Conditions) -> None:
        """Read the same programmed chip at another time, seed or noise setting."""
        self.conditions = conditions
        self._xbars = None

    def check_precision(self) -> tuple[str, tuple[float, float]]:
        """Quantisation bounds a noise-free read: inputs and weights rounded to their bits (half a step
        each, relative to the largest) and the ADC's step; 4 steps of the coarsest of them, as a fraction
        of each output's largest value. With device noise on the values are analog and the message says
        how to check the program's arithmetic alone."""
        s = self.spec
        bits = min(s.input_bits, s.weight_bits, s.adc_bits if s.adc_range == "calibrated" else 24)
        tol = 4.0 / (1 << (bits - 1))
        what = (f"{self.device} computes in analog: {s.input_bits}-bit inputs, {s.weight_bits}-bit weights, "
                f"{s.adc_bits}-bit ADC")
        if self.conditions.noise:
            what += (f", with device noise ({self.conditions.describe()}); --cim-noise off checks the "
                     "program's arithmetic alone")
        return what, (tol, tol)

    def configure(self, options) -> None:
        self.set_conditions(Conditions.from_options(options, base=self.conditions))

    @property
    def crossbars(self) -> Crossbars:
        if self._xbars is None or self._xbars.conditions != self.conditions:
            if self.code.images is None:
                raise ExecutionError("this CIM program was compiled in timing mode and holds no crossbar images",
                                     hint="compile with mode='functional'")
            self._xbars = Crossbars(self.spec, self.code.images, self.conditions, self.code.image_base)
        return self._xbars

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return execute(self.spec, self.code, inputs, self.crossbars)

    def simulate(self) -> Timeline:
        tl = simulate(self.spec, self.code)
        s = self.spec
        if len(self.code.image_rows):
            tl.notes.append(f"{self.device} multiplies in analog, as charged: {s.input_bits}-bit inputs "
                            f"({s.input_slices} read{'s' * (s.input_slices > 1)} of {s.dac_bits} bit"
                            f"{'s' * (s.dac_bits > 1)}), {s.weight_bits}-bit weights over {s.slices} cell"
                            f"{'s' * (s.slices > 1)} of {s.cell_bits} bits, {s.adc_bits}-bit ADCs; its digital "
                            f"periphery computes in {s.digital_dtype}")
        every = any(int(r[0]) == isa.PROG and int(r[4]) for r in self.code.instrs)
        used = len({int(r[2]) for r in self.code.instrs if int(r[0]) == isa.PROG})
        if every:
            tl.notes.append(f"{self.device}: the model's weights need more crossbars than the chip's "
                            f"{self.spec.crossbars} ({self.utilisation():.0%} of this program's crossbar cells used): "
                            "they are reprogrammed every inference (charged in time and "
                            "energy as 'programming'); a target with more CIM chips or a smaller model keeps "
                            "them resident")
        elif used:
            s, j, n = programming_cost(self.spec, self.code)
            tl.notes.append(f"{self.device}: this program's weights resident in {n} of the chip's "
                            f"{self.spec.crossbars} crossbars ({self.utilisation():.0%} of their cells used), "
                            f"programmed once ({s * 1e3:.3g} ms, {j * 1e3:.3g} mJ, not per inference); "
                            f"{self.conditions.describe()}")
        return tl

    def utilisation(self) -> float:
        """Share of the cells of this program's crossbar images that hold a weight digit."""
        c, s = self.code, self.spec
        cells = float((c.image_rows.astype(np.int64) * c.image_outs * s.slices).sum())
        return cells / max(len(c.image_rows) * s.rows * s.cols, 1)

    def asm(self) -> str:
        lines, step = [], -1
        for row in self.code.instrs:
            if int(row[1]) != step:
                step = int(row[1])
                if 0 <= step < len(self.code.steps):
                    name, op = self.code.steps[step]
                    lines.append(f"; {name} ({op})")
            lines.append(isa.text(row))
        return "\n".join(lines)

    def to_bytes(self) -> bytes:
        return np.ascontiguousarray(self.code.instrs, "<i8").tobytes()
