"""The figures of a DRAM processing-in-memory device, validated from the chip TOML's [pim] table.

Only primary figures are stored (organisation, clocks, DRAM timing in command-clock cycles,
energy per event, link); everything a cost model needs beyond them is a property.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcompiler.errors import TargetError
from kcompiler.targets import Link
from kcompiler.targets.interconnect import CardLink
from kcompiler.targets.schema import field


@dataclass(frozen=True)
class DramTiming:
    """DRAM timing parameters in cycles of the command clock ``tck_s``."""

    tck_s: float = field(min=1e-11, max=1e-8, unit="s", doc="command-clock period")
    tRCD: int = field(min=1, max=1000, unit="tCK", doc="activate to column command")
    tRCD_mac: int = field(min=1, max=1000, unit="tCK", doc="activate to the first MAC column command")
    tRP: int = field(min=1, max=1000, unit="tCK", doc="precharge to activate")
    tRAS: int = field(min=1, max=1000, unit="tCK", doc="activate to precharge")
    tRTP: int = field(min=0, max=1000, unit="tCK", doc="last column read to precharge")
    tCCD_S: int = field(min=1, max=100, unit="tCK", doc="column to column, different bank group")
    tCCD_L: int = field(min=1, max=100, unit="tCK", doc="column to column, same bank group (all-bank PIM pace)")
    tRRD: int = field(min=1, max=100, unit="tCK", doc="activate to activate, different banks")
    tFAW: int = field(min=1, max=1000, unit="tCK", doc="window holding at most four activations")
    all_bank_act_in_faw: bool = field(doc="whether an all-bank activate is issued bank by bank under tRRD/tFAW")


@dataclass(frozen=True)
class PimEnergy:
    act_j: float = field(min=0.0, unit="J", doc="one row activation + precharge of one bank")
    column_j: float = field(min=0.0, unit="J", doc="one column access (column_bytes) inside a bank")
    mac_j: float = field(min=0.0, unit="J", doc="one multiply-accumulate of the processing unit")
    io_byte_j: float = field(min=0.0, unit="J", doc="one byte over the device's external interface")


@dataclass(frozen=True)
class PimSpec:
    clock_hz: float = field(min=1e6, max=1e10, unit="Hz", doc="processing-unit clock")
    dtype: str = field(choices=("bfloat16", "float16"), doc="multiplier input type")
    accumulate_dtype: str = field(choices=("float32", "float16"), doc="accumulator type")
    mac_dataflow: str = field(choices=("dot", "simd"),
                              doc="dot: lanes along the reduction with an adder tree (AiM); "
                                  "simd: lanes along the outputs, input broadcast as a scalar (HBM-PIM)")
    chips: int = field(min=1, max=4096, doc="packages (chips or cubes) behind this device")
    channels_per_chip: int = field(min=1, max=1024, doc="PIM-enabled (pseudo-)channels per package")
    banks_per_channel: int = field(min=1, max=256)
    banks_per_unit: int = field(min=1, max=16, doc="banks feeding one processing unit")
    rows_per_bank: int = field(min=1, max=1 << 24)
    simd_lanes: int = field(min=1, max=1024, doc="multipliers per processing unit")
    row_bytes: int = field(min=32, max=1 << 16, unit="B", doc="DRAM page per bank")
    column_bytes: int = field(min=2, max=1024, unit="B", doc="bytes one column command reads per bank")
    input_buffer_bytes: int = field(min=2, max=1 << 20, unit="B",
                                    doc="input-vector buffer every unit of a channel reads")
    accumulators_per_unit: int = field(min=1, max=1024, doc="accumulator registers per unit")
    io_bandwidth_per_channel: float = field(min=1e6, unit="B/s", doc="external bandwidth of one channel")
    max_gemv_rows: int = field(min=1, max=1024, doc="largest activation row count the compiler sends to PIM")
    activation_functions: tuple[str, ...] = field(doc="ONNX ops the activation-function unit evaluates")
    timing: DramTiming = field(doc="[pim.timing] table")
    energy: PimEnergy = field(doc="[pim.energy] table")
    link: CardLink = field(doc="[pim.link] table: the device's link to an NPU on the same card")
    process_nm: float | None = field(None, min=3, max=130, unit="nm",
                                     doc="DRAM process node of the packages (20 for a '20 nm' DRAM, 17 for "
                                         "'1y nm'), for the die-area model of the PIM logic "
                                         "(kcompiler/targets/area.py); not given: an assumed node")

    def validate(self, where: str) -> None:
        if self.banks_per_channel % self.banks_per_unit:
            raise TargetError(f"{where}: [pim] banks_per_channel ({self.banks_per_channel}) must be a multiple "
                              f"of banks_per_unit ({self.banks_per_unit})")
        if self.row_bytes % self.column_bytes or self.column_bytes % self.element_bytes:
            raise TargetError(f"{where}: [pim] row_bytes must be a multiple of column_bytes, and column_bytes "
                              "of the element size")
        if self.column_bytes // self.element_bytes != self.simd_lanes:
            raise TargetError(f"{where}: [pim] one column ({self.column_bytes} B) must feed exactly simd_lanes "
                              f"({self.simd_lanes}) elements")

    # ---- derived figures -------------------------------------------------------------
    @property
    def element_bytes(self) -> int:
        return 2

    @property
    def channels(self) -> int:
        return self.chips * self.channels_per_chip

    @property
    def units_per_channel(self) -> int:
        return self.banks_per_channel // self.banks_per_unit

    @property
    def units(self) -> int:
        return self.channels * self.units_per_channel

    @property
    def columns_per_row(self) -> int:
        return self.row_bytes // self.column_bytes

    @property
    def input_buffer_elems(self) -> int:
        return self.input_buffer_bytes // self.element_bytes

    @property
    def peak_flops(self) -> float:
        return 2.0 * self.units * self.simd_lanes * self.clock_hz

    @property
    def column_period_s(self) -> float:
        """Spacing of all-bank MAC column commands: tCCD_L, or the unit's own pace if slower."""
        return max(self.timing.tCCD_L * self.timing.tck_s, 1.0 / self.clock_hz)

    @property
    def internal_bandwidth(self) -> float:
        """Bytes per second all units read from their banks while computing (the PIM roofline)."""
        return self.units * self.column_bytes / self.column_period_s

    @property
    def external_bandwidth(self) -> float:
        return self.channels * self.io_bandwidth_per_channel

    @property
    def capacity_bytes(self) -> int:
        return self.channels * self.banks_per_channel * self.rows_per_bank * self.row_bytes

    def peer_link(self) -> Link:
        return self.link.link()

    def headline(self) -> str:
        return (f"{self.peak_flops / 1e12:.2f} TFLOP/s {self.dtype}, internal {self.internal_bandwidth / 1e9:.0f} GB/s "
                f"(external {self.external_bandwidth / 1e9:.0f} GB/s), {self.units} units, "
                f"{self.capacity_bytes / 2**30:.0f} GiB")
