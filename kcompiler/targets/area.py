"""Die area of a chip from its primary figures, so that design-space sweeps weigh speed and
energy against silicon.

    chip_area(chip) -> Area            one chip: total mm² and a breakdown by component
    system_area_mm2(system) -> float   the accelerators of a system (the host CPU is not counted)

What is counted is the silicon a chip's figures pay for: the MAC arrays, on-chip SRAM, the vector
lanes and their control for an NPU; the processing logic added to the DRAM banks for a PIM device.
Left out, on every chip: I/O pads and PHYs (DRAM, PCIe), the on-chip network, host-interface and
management cores, and (for PIM) the DRAM cells themselves, as no chip's DRAM is counted. So the
model comes in under a published die size (tests/targets/test_area.py compares them).

Each constant is taken from a published chip or paper, cited beside it; where a figure is our
assumption the comment says "assumed". A process node is costed by its number alone
(`process_nm`): logic scales by Stillmaker & Baas's factors, SRAM by published bitcell sizes.

A chip kind without a model here (a plugin's) may give its spec an ``area()`` method returning an
Area; otherwise it counts as 0 mm² and the Area says so in its notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# ---- process scaling ---------------------------------------------------------------------------
#: logic area of the same design at each node, relative to 45 nm. 130..7 nm: A. Stillmaker and B. Baas,
#: "Scaling equations for the accurate prediction of CMOS device performance from 180 nm to 7 nm",
#: Integration, the VLSI Journal 58, 2017 (area scaling table, the 45 nm row).
#: 5 nm: 7 nm / 1.84, the logic-density gain of TSMC N5 over N7 (G. Yeap et al., "5nm CMOS production
#: technology platform featuring full-fledged EUV, and high mobility channel FinFETs with densest
#: 0.021 µm² SRAM cells", IEDM 2019). 3 nm: 5 nm / 1.6, TSMC's published N3E logic-density gain over N5
#: (TSMC Technology Symposium 2022; assumed for any 3 nm-class process).
LOGIC_AREA_VS_45NM = {130: 6.4, 90: 2.8, 65: 1.5, 45: 1.0, 32: 0.46, 20: 0.21, 16: 0.19, 14: 0.17,
                      10: 0.10, 7: 0.059, 5: 0.059 / 1.84, 3: 0.059 / 1.84 / 1.6}

#: high-density 6T SRAM bitcell area (µm²) at each node, from the foundries' SRAM papers:
SRAM_BITCELL_UM2 = {
    28: 0.127,  # TSMC 28 nm: 64 Mb SRAM, 0.127 µm² cell (TSMC, Symposium on VLSI Technology 2009)
    14: 0.064,  # Samsung 14 nm FinFET: T. Song et al., "A 14 nm FinFET 128 Mb SRAM with VMIN enhancement
                # techniques for low-power applications", ISSCC 2014 (0.064 µm² HD cell)
    10: 0.040,  # Samsung 10 nm FinFET: T. Song et al., "A 10 nm FinFET 128 Mb SRAM with assist adjustment
                # system for power, performance, and area optimization", JSSC 2017 (0.040 µm² HD cell)
    7: 0.026,   # Samsung 7 nm EUV: T. Song et al., ISSCC 2018, 256 Mb SRAM (0.026 µm² cell; TSMC N7's is
                # 0.027 µm², J. Chang et al., ISSCC 2017)
    5: 0.021,   # TSMC N5: J. Chang et al., "A 5nm 135Mb SRAM in EUV and high-mobility-channel FinFET
                # technology ...", ISSCC 2020 (0.021 µm²)
    3: 0.021,   # TSMC N3E: the same 0.021 µm² cell as N5 (TSMC, IEDM 2022: SRAM stopped scaling)
}
# nodes above 28 nm: the 28 nm cell scaled like logic (assumed; SRAM cells scaled with logic until 28 nm)


def _loglog(table: Mapping[float, float], nm: float) -> float:
    """Interpolate a node -> value table linearly in log(node) and log(value)."""
    nodes = sorted(table)
    if nm <= nodes[0]:
        return table[nodes[0]]
    if nm >= nodes[-1]:
        return table[nodes[-1]]
    for lo, hi in zip(nodes, nodes[1:]):
        if lo <= nm <= hi:
            t = (math.log(nm) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp(math.log(table[lo]) + t * (math.log(table[hi]) - math.log(table[lo])))
    raise AssertionError(nm)  # pragma: no cover


def logic_scale(nm: float) -> float:
    """Area of a logic block at `nm` relative to the same block at 45 nm."""
    return _loglog(LOGIC_AREA_VS_45NM, nm)


def sram_bitcell_um2(nm: float) -> float:
    """Area of one high-density SRAM bitcell at `nm` (µm²)."""
    if nm > 28:
        return SRAM_BITCELL_UM2[28] * logic_scale(nm) / logic_scale(28)
    return _loglog(SRAM_BITCELL_UM2, nm)


# ---- NPU constants ------------------------------------------------------------------------------
#: Google TPUv1 (N. Jouppi et al., "In-datacenter performance analysis of a tensor processing unit",
#: ISCA 2017): a < 331 mm² die in 28 nm; its floor plan (Figure 2) gives the 256 x 256 = 65,536-MAC
#: INT8 matrix unit 24% of the die, the 24 MiB unified buffer 29%, the 256-wide activation pipeline 6%.
TPU1_NM = 28
TPU1_DIE_MM2 = 331.0
TPU1_MACS = 65536
TPU1_MAC_UM2 = 0.24 * TPU1_DIE_MM2 * 1e6 / TPU1_MACS  # ~1212 µm² per INT8 MAC cell, registers and wiring included
TPU1_UB_BITS = 24 * 2**20 * 8
#: fraction of the unified buffer's area that is bitcells (taking TSMC's 0.127 µm² 28 nm cell, assumed):
#: ~0.27. Scratchpads this wide and this banked pay for periphery; every SRAM here is costed at it.
SRAM_ARRAY_EFFICIENCY = TPU1_UB_BITS * SRAM_BITCELL_UM2[28] / (0.29 * TPU1_DIE_MM2 * 1e6)
#: one lane of the activation pipeline (256 lanes in 6% of the die), µm² at 28 nm: the cost of a
#: vector lane with its nonlinear-function and pooling hardware (assumed to stand for any NPU's lane)
VECTOR_LANE_UM2_28NM = 0.06 * TPU1_DIE_MM2 * 1e6 / 256
#: control, instruction issue, DMA engines and the wiring between a core's blocks, as a fraction of the
#: modelled core area. Assumed: TPUv1's control is 2% of its die, but a multi-core NPU repeats
#: instruction fetch, DMA queues and synchronisation in every core.
CONTROL_FRACTION = 0.10

#: arithmetic area (µm², 45 nm) of one multiply-accumulate per dtype: multiplier + accumulating adder,
#: from M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, area table:
#: 8-bit multiply 282 + 32-bit add 137; FP16 multiply 1640 + FP32 add 4184; FP32 multiply 7700 + add
#: 4184 (FP32 accumulation, as MAC_ENERGY_45NM_PJ in backends/npu/spec.py). Not in the table, assumed:
#: bf16 as fp16; tf32 as fp32; fp8 as an 8-bit multiply with an FP16 adder (282 + 1360; FP8 arrays
#: accumulate at reduced precision); int4 as a quarter of the 8-bit multiplier with a 32-bit adder.
MAC_ARITH_UM2_45NM = {"int8": 282 + 137, "int4": 282 / 4 + 137, "fp8": 282 + 1360,
                      "fp16": 1640 + 4184, "bf16": 1640 + 4184, "fp32": 7700 + 4184, "tf32": 7700 + 4184}
#: operand bytes per dtype: a PE's registers and wiring scale with them
_OPERAND_BYTES = {"int8": 1, "int4": 0.5, "fp8": 1, "fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}


def pe_um2_28nm(dtype: str) -> float:
    """One MAC cell of dtype at 28 nm: TPUv1's INT8 cell, its arithmetic swapped for dtype's
    (MAC_ARITH_UM2_45NM) and its registers and wiring widened to dtype's operands."""
    arith = {d: a * logic_scale(TPU1_NM) for d, a in MAC_ARITH_UM2_45NM.items()}
    rest = TPU1_MAC_UM2 - arith["int8"]
    return rest * _OPERAND_BYTES[dtype] + arith[dtype]


# ---- PIM constants ------------------------------------------------------------------------------
#: processing logic per unit of 16 multipliers, mm² at the paper's DRAM node, by how the unit is built
#: (PimSpec.mac_dataflow). DRAM-process logic (three metal layers, slow transistors) is several times
#: larger than the same logic in a logic process; both figures are taken at their own DRAM node.
PIM_UNIT_MM2 = {
    # Samsung HBM-PIM, Y.-C. Kwon et al., "A 20nm 6GB Function-In-Memory DRAM, Based on HBM2 with a
    # 1.2TFLOPS Programmable Computing Unit Using Bank-Level Parallelism", ISSCC 2021: each PIM die gives
    # up half its cells (4 Gb where Aquabolt's dies hold 8 Gb) for 32 PCUs (16-wide FP16 SIMD, register
    # files). Assumed: the PCUs fill the cell area they displace, about a quarter of a ~100 mm² 20 nm HBM2
    # die, i.e. ~0.8 mm² per PCU (the paper gives no per-PCU area that we could check).
    "simd": (0.8, 20.0),
    # SK hynix GDDR6-AiM, S. Lee et al., "A 1ynm 1.25V 8Gb, 16Gb/s/pin GDDR6-based Accelerator-in-Memory
    # supporting 1TFLOPS MAC Operation ...", ISSCC 2022: one PU (16 BF16 multipliers, adder tree) per
    # bank, 32 per chip, beside the full 8 Gb. Assumed: ~20% of a ~65 mm² 1y nm 8 Gb GDDR6 die for the
    # PUs, global buffers and activation unit, i.e. ~0.4 mm² per PU (no per-PU area we could check).
    "dot": (0.4, 17.0),
}
PIM_REF_LANES = 16  # both papers' units have 16 multipliers

# ---- host ---------------------------------------------------------------------------------------
#: one CPU core with its L2 and its share of L3, mm² at 7 nm: AMD Zen 2's core chiplet holds 8 cores and
#: 32 MB of L3 in ~74 mm² of TSMC N7 (T. Singh et al., "Zen 2: The AMD 7nm energy-efficient
#: high-performance x86-64 microprocessor core", ISSCC 2020)
HOST_CORE_MM2_7NM = 74.0 / 8
#: FP32 FLOP per cycle of one core: two 256-bit FMA units (AVX2), as host.toml's peak_flops assumes
HOST_FLOPS_PER_CYCLE = 32

#: the node a chip that does not give process_nm is costed at (assumed; its Area's notes say so)
ASSUMED_NM = {"npu": 7.0, "pim": 20.0, "host": 7.0}


# ---- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Area:
    """A chip's modelled die area: `breakdown` maps each component to mm² and sums to `total_mm2`;
    `notes` say what was assumed (a node not given, a kind without a model)."""

    total_mm2: float
    breakdown: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, breakdown: Mapping[str, float], notes: tuple[str, ...] = ()) -> "Area":
        return cls(total_mm2=float(sum(breakdown.values())), breakdown=dict(breakdown), notes=tuple(notes))

    def describe(self) -> dict[str, Any]:
        """For `kc targets show`: the total and the breakdown, rounded to 0.01 mm²."""
        out: dict[str, Any] = {"total_mm2": round(self.total_mm2, 2),
                               "breakdown_mm2": {k: round(v, 2) for k, v in self.breakdown.items()}}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _node(spec, kind: str, name: str) -> tuple[float, tuple[str, ...]]:
    nm = getattr(spec, "process_nm", None)
    if nm is not None:
        return float(nm), ()
    nm = ASSUMED_NM[kind]
    return nm, (f"chip '{name}' gives no process_nm: its area assumes {nm:g} nm",)


def npu_area(spec, name: str = "npu") -> Area:
    """MAC arrays, per-core and shared SRAM, vector lanes, and control (CONTROL_FRACTION of those).

    A PE that runs several dtypes is costed at the most demanding one, max over dtypes of (MACs per PE
    per cycle x that dtype's MAC cell): a multi-precision array shares its multipliers (assumed), so an
    INT8 array that also runs FP16 at a quarter rate costs little more, one whose full rate is BF16 a lot."""
    nm, notes = _node(spec, "npu", name)
    shrink = logic_scale(nm) / logic_scale(TPU1_NM)
    arr = spec.array
    pe_um2 = max(rate * pe_um2_28nm(d) for d, rate in arr.dtypes.items()) * shrink
    bit_um2 = sram_bitcell_um2(nm) / SRAM_ARRAY_EFFICIENCY
    parts = {
        "mac_array": spec.cores * arr.rows * arr.cols * pe_um2 / 1e6,
        "sram_core": spec.cores * spec.sram_bytes * 8 * bit_um2 / 1e6,
        "sram_shared": spec.shared_sram_bytes * 8 * bit_um2 / 1e6,
        "vector": spec.cores * spec.vector.lanes * VECTOR_LANE_UM2_28NM * shrink / 1e6,
    }
    parts["control"] = CONTROL_FRACTION * sum(parts.values())
    return Area.of(parts, notes)


def pim_area(spec, name: str = "pim") -> Area:
    """The processing logic added to the banks: units x (lanes / 16) x the published unit's area, scaled
    from its DRAM node like logic (assumed). The DRAM cells are not counted (no chip's DRAM is)."""
    nm, notes = _node(spec, "pim", name)
    unit_mm2, ref_nm = PIM_UNIT_MM2[spec.mac_dataflow]
    per_unit = unit_mm2 * spec.simd_lanes / PIM_REF_LANES * logic_scale(nm) / logic_scale(ref_nm)
    return Area.of({"pim_logic": spec.units * per_unit}, notes)


def host_area(spec, name: str = "host") -> Area:
    """CPU cores (peak FLOP/s / (clock x 32 FLOP per cycle)) with their caches; never counted in a system."""
    nm, notes = _node(spec, "host", name)
    cores = max(1, round(spec.peak_flops / (spec.clock_hz * HOST_FLOPS_PER_CYCLE)))
    return Area.of({"cpu_cores": cores * HOST_CORE_MM2_7NM * logic_scale(nm) / logic_scale(7)}, notes)


def cim_area(spec, name: str = "cim") -> Area:
    """Analog in-memory chips: crossbars x the published area per crossbar core (its ADCs, DACs and
    digital periphery included), plus the rest of the die; the spec holds them (backends/cim/spec.py)."""
    return spec.area_model(name)


#: chip kind -> its area model (a table: a kind's model is data, not a branch)
AREA_MODELS: dict[str, Callable[[Any, str], Area]] = {"npu": npu_area, "pim": pim_area, "host": host_area,
                                                      "cim": cim_area}


def chip_area(chip) -> Area:
    """The modelled die area of one chip (a targets.Chip); a plugin kind's spec may provide area()."""
    model = AREA_MODELS.get(chip.kind)
    if model is not None:
        return model(chip.spec, chip.name)
    own = getattr(chip.spec, "area", None)
    if callable(own):
        return own()
    return Area.of({}, (f"no area model for chip '{chip.name}' of kind '{chip.kind}': counted as 0 mm²",))


def system_area(system) -> Area:
    """The accelerators' areas by device (`atom0`, `atom1`, `aim`); the host CPU is not counted, as
    every system has the same one."""
    parts, notes = {}, []
    for d in system.accelerators:
        a = chip_area(d.chip)
        parts[d.name] = a.total_mm2
        notes += [n for n in a.notes if n not in notes]
    return Area.of(parts, tuple(notes))


def system_area_mm2(system) -> float:
    """Total modelled die area of a system's accelerators (mm²); the host CPU is not counted."""
    return system_area(system).total_mm2


__all__ = ["AREA_MODELS", "Area", "chip_area", "logic_scale", "sram_bitcell_um2", "system_area", "system_area_mm2"]
