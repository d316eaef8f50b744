"""The figures of an analog compute-in-memory chip, validated from the chip TOML's [cim] table.

A chip is ``crossbars`` arrays of ``rows`` x ``cols`` unit cells. A weight is quantised to
``weight_bits`` (signed) and stored either as a differential pair inside the unit cell
(``encoding = "differential"``: the cell's + and - devices, sign by polarity, as HERMES) or offset
by 2^(weight_bits-1) in single devices (``"offset"``, as ISAAC); its magnitude is sliced over
``slices`` cells of ``cell_bits`` each, in the same row, one physical column per slice. Inputs are
quantised to ``input_bits`` (signed, per vector) and applied ``dac_bits`` at a time (bit-serial when
``dac_bits`` < ``input_bits``); every physical column is digitised by an ``adc_bits`` ADC whose full
scale is the column's worst case (``adc_range = "full"``) or ``adc_headroom`` times its weight norm
(``"calibrated"``). Only primary figures are stored; everything a cost model needs is a property.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kcompiler.errors import TargetError
from kcompiler.targets import Link
from kcompiler.targets.interconnect import CardLink
from kcompiler.targets.area import Area
from kcompiler.targets.schema import field

#: the longest crossbar line (rows or columns) a chip file may describe: IR drop along a line limits
#: fabricated arrays to about a thousand cells (HERMES 256, ISAAC 128, NeuRRAM 256)
MAX_LINES = 4096


@dataclass(frozen=True)
class CimDevice:
    """The non-volatile device in each cell and its non-idealities (kcompiler.backends.cim.devices)."""

    model: str = field(choices=("ideal", "pcm", "hermes"),
                       doc="device statistics: ideal, pcm (aihwkit PCMLikeNoiseModel) or hermes (aihwkit "
                           "HermesNoiseModel, two devices per polarity)")
    g_max_us: float = field(min=1e-3, max=1e5, unit="µS", doc="largest programmable conductance")
    g_min_us: float = field(0.0, min=0.0, max=1e5, unit="µS", doc="smallest conductance (a cell at level 0)")
    stuck_at_rate: float = field(0.0, min=0.0, max=1.0, doc="fraction of devices stuck at g_min or g_max")
    sa1_fraction: float = field(0.5, min=0.0, max=1.0, doc="share of the stuck devices stuck at g_max")
    prog_noise_scale: float = field(1.0, min=0.0, max=100.0, doc="multiplier of the programming-noise std")
    read_noise_scale: float = field(1.0, min=0.0, max=100.0, doc="multiplier of the read-noise std")
    drift_scale: float = field(1.0, min=0.0, max=100.0, doc="multiplier of the drift exponent")


@dataclass(frozen=True)
class CimTiming:
    read_s: float = field(min=1e-12, max=1e-3, unit="s",
                          doc="one read of a crossbar with one input slice applied (integration; a time-based "
                              "ADC converts inside it)")
    read_phases: int = field(min=1, max=16, doc="reads per input slice (HERMES' four-phase high-precision mode: 4)")
    adc_conversion_s: float = field(min=0.0, max=1e-3, unit="s",
                                    doc="one conversion of a shared ADC (0: every column has its own, inside read_s)")
    adcs_per_crossbar: int = field(min=1, max=65536, doc="ADCs serving one crossbar's columns")
    digital_s: float = field(min=0.0, max=1e-3, unit="s", doc="fixed digital time per MVM (shift-add, scale)")
    digital_ops_per_s: float = field(min=1e6, unit="op/s", doc="digital periphery throughput (whole chip)")
    sram_bandwidth: float = field(min=1e6, unit="B/s", doc="activation memory bandwidth (whole chip)")
    program_row_s: float = field(min=0.0, max=1.0, unit="s", doc="programming one crossbar row (write-verify)")


@dataclass(frozen=True)
class CimEnergy:
    dac_j: float = field(min=0.0, unit="J", doc="driving one row with one input slice, one phase")
    cell_j: float = field(min=0.0, unit="J", doc="one cell read (one row x one physical column), one phase")
    adc_j: float = field(min=0.0, unit="J", doc="one ADC conversion")
    shift_add_j: float = field(min=0.0, unit="J", doc="one shift-and-add of a digitised partial sum")
    digital_op_j: float = field(min=0.0, unit="J", doc="one digital periphery operation (scale, bias, activation)")
    sram_byte_j: float = field(min=0.0, unit="J", doc="one byte of activation moved in the chip's memory")
    program_cell_j: float = field(min=0.0, unit="J", doc="programming one device (write-verify)")


@dataclass(frozen=True)
class CimArea:
    crossbar_mm2: float = field(min=0.0, max=1e4, unit="mm²",
                                doc="one crossbar with its share of the chip's periphery (ADCs, DACs, digital, memory)")
    other_mm2: float = field(0.0, min=0.0, max=1e5, unit="mm²", doc="the rest of the die (off-chip links)")


@dataclass(frozen=True)
class CimSpec:
    crossbars: int = field(min=1, max=1 << 24, doc="crossbar arrays on the chip")
    rows: int = field(min=1, max=MAX_LINES, doc="rows (inputs) of one crossbar")
    cols: int = field(min=1, max=MAX_LINES, doc="physical columns of one crossbar")
    weight_bits: int = field(min=2, max=24, doc="signed weight precision the compiler programs")
    cell_bits: int = field(min=1, max=16, doc="bits one device holds (its conductance levels: 2^cell_bits)")
    encoding: str = field(choices=("differential", "offset"),
                          doc="differential: + and - devices in each cell; offset: one device, weight + 2^(b-1)")
    input_bits: int = field(min=2, max=24, doc="signed input precision (per-vector abs-max scaling)")
    dac_bits: int = field(min=1, max=24, doc="input bits applied per read (PWM: all; bit-serial: 1)")
    adc_bits: int = field(min=1, max=24, doc="ADC resolution")
    adc_range: str = field(choices=("full", "calibrated"),
                           doc="full: a column's worst case never saturates; calibrated: adc_headroom x the "
                               "column's weight norm (finer steps, saturates on outliers)")
    clock_hz: float = field(min=1e6, max=1e11, unit="Hz", doc="digital periphery clock (cycles in reports)")
    device: CimDevice = field(doc="[cim.device] table")
    timing: CimTiming = field(doc="[cim.timing] table")
    energy: CimEnergy = field(doc="[cim.energy] table")
    link: CardLink = field(doc="[cim.link] table: the chip's link to an NPU on the same card")
    area: CimArea = field(doc="[cim.area] table: published die areas")
    process_nm: float | None = field(None, min=3, max=130, unit="nm", doc="CMOS process of the periphery")
    adc_headroom: float = field(4.0, min=0.01, max=1e6, doc="calibrated full scale in column-norm units")
    digital_dtype: str = field("float32", choices=("float32",), doc="dtype of the digital periphery")

    def validate(self, where: str) -> None:
        if self.device.g_min_us >= self.device.g_max_us:
            raise TargetError(f"{where}: [cim.device] g_min_us ({self.device.g_min_us}) must be below g_max_us "
                              f"({self.device.g_max_us})", hint="a device needs a conductance range to hold levels")
        if self.input_bits % self.dac_bits:
            raise TargetError(f"{where}: [cim] input_bits ({self.input_bits}) must be a multiple of dac_bits "
                              f"({self.dac_bits})", hint="the DAC applies the input in equal slices")
        if self.slices > self.cols:
            raise TargetError(f"{where}: [cim] a weight needs {self.slices} columns (weight_bits {self.weight_bits}, "
                              f"cell_bits {self.cell_bits}) but a crossbar has {self.cols}")

    # ---- derived figures -------------------------------------------------------------
    @property
    def magnitude_bits(self) -> int:
        """Bits of the stored magnitude: a differential pair stores |w|, an offset device w + 2^(b-1)."""
        return self.weight_bits - 1 if self.encoding == "differential" else self.weight_bits

    @property
    def slices(self) -> int:
        return max(1, math.ceil(self.magnitude_bits / self.cell_bits))

    @property
    def levels(self) -> int:
        return 1 << self.cell_bits

    @property
    def planes(self) -> int:
        """Devices per cell: 2 for a differential pair."""
        return 2 if self.encoding == "differential" else 1

    @property
    def outputs_per_crossbar(self) -> int:
        return self.cols // self.slices

    @property
    def input_slices(self) -> int:
        return self.input_bits // self.dac_bits

    @property
    def weights_per_crossbar(self) -> int:
        return self.rows * self.outputs_per_crossbar

    @property
    def capacity_weights(self) -> int:
        return self.crossbars * self.weights_per_crossbar

    def mvm_seconds(self, cols_used: int | None = None) -> float:
        """One input vector through one crossbar: every input slice read (each phase), its columns converted."""
        cols = self.cols if cols_used is None else cols_used
        t = self.timing
        convert = math.ceil(cols / t.adcs_per_crossbar) * t.adc_conversion_s
        return self.input_slices * t.read_phases * max(t.read_s, convert) + t.digital_s

    def mvm_energy(self, rows_used: int | None = None, cols_used: int | None = None) -> dict[str, float]:
        """Energy of one input vector through one crossbar, by where it goes."""
        r = self.rows if rows_used is None else rows_used
        c = self.cols if cols_used is None else cols_used
        e, reads = self.energy, self.input_slices * self.timing.read_phases
        return {"dac": reads * r * e.dac_j, "crossbar": reads * r * c * e.cell_j * self.planes,
                "adc": reads * c * e.adc_j, "shift_add": reads * c * e.shift_add_j}

    @property
    def peak_ops(self) -> float:
        """Peak MVM throughput, ops/s (2 per weight per vector, every crossbar busy)."""
        return 2.0 * self.capacity_weights / self.mvm_seconds()

    @property
    def peak_ops_per_w(self) -> float:
        return 2.0 * self.weights_per_crossbar / sum(self.mvm_energy().values())

    def area_model(self, name: str = "cim") -> Area:
        """The die from published areas (kcompiler.targets.area's model for the cim kind)."""
        return Area.of({"crossbar_cores": self.crossbars * self.area.crossbar_mm2, "other": self.area.other_mm2})

    def peer_link(self) -> Link:
        return self.link.link()

    def headline(self) -> str:
        return (f"{self.peak_ops / 1e12:.1f} TOPS at {self.peak_ops_per_w / 1e12:.2f} TOPS/W "
                f"({self.input_bits}-bit inputs), {self.crossbars} crossbars of {self.rows}x{self.cols}, "
                f"{self.capacity_weights / 1e6:.1f} M weights of {self.weight_bits} bits, {self.device.model} devices")
