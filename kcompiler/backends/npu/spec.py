"""The NPU chip description: primary figures from the TOML ``[npu]`` table, the rest derived.

A chip is ``cores`` identical cores, each with a systolic array, a vector unit and a
scratchpad SRAM, sharing one DRAM. Only primary figures are stored (array rows and
columns, MACs per PE per cycle for each dtype, clock, bytes, bandwidths, energies);
peak throughput, bytes per cycle and the like are properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kcompiler.backends.npu.cost import VECTOR_CLASSES
from kcompiler.backends.npu.emulation import Charge, charge
from kcompiler.errors import TargetError
from kcompiler.targets.schema import field

DATAFLOWS = ("ws", "os", "is")
_FOR_VALUES: dict = {}  # (id(spec), dtype) -> (spec, spec for those values)
#: bytes per element of each dtype the array may be charged at
DTYPE_BYTES = {"int8": 1, "fp8": 1, "int4": 0.5, "fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}
#: relative energy of one MAC per dtype, multiply plus accumulate add, from M. Horowitz, "Computing's
#: energy problem", ISSCC 2014 (45 nm): 8-bit int multiply 0.2 pJ + 32-bit int add 0.1 pJ; 16-bit
#: FP multiply 1.1 pJ + 32-bit FP add 0.9 pJ (float32 accumulation); 32-bit FP multiply 3.7 pJ +
#: add 0.9 pJ. bf16 is not in the table and is taken as fp16 (assumption). A chip's TOML gives the
#: absolute energy at its charged dtype; other dtypes scale by these ratios (unlisted: unscaled).
MAC_ENERGY_45NM_PJ = {"int8": 0.3, "fp16": 2.0, "bf16": 2.0, "fp32": 4.6}


@dataclass(frozen=True)
class ArraySpec:
    """The systolic array of one core."""

    rows: int = field(min=1, max=4096, doc="PE rows (the reduction dimension K streams through them in ws)")
    cols: int = field(min=1, max=4096, doc="PE columns")
    dataflow: str = field(choices=DATAFLOWS, doc="ws = weight, os = output, is = input stationary")
    #: dtype -> MACs per PE per cycle (e.g. int8 = 1.0, bf16 = 0.5)
    dtypes: dict[str, float] = field(doc="MACs per PE per cycle for each supported dtype")
    dtype: str = field(choices=tuple(DTYPE_BYTES), doc="dtype whose throughput the timing model charges")

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def rate(self) -> float:
        """MACs per PE per cycle at the charged dtype."""
        return self.dtypes[self.dtype]


#: the dtype classes the vector unit may compute in (npu.vector.dtypes keys)
VECTOR_DTYPES = ("f32", "i32", "i64")


@dataclass(frozen=True)
class VectorSpec:
    """The SIMD vector unit of one core (elementwise, reductions, pooling, epilogues)."""

    lanes: int = field(min=1, max=65536, doc="elements processed per cycle")
    #: op class -> pipeline latency in cycles (added once per vector instruction)
    latency: dict[str, int] = field(doc="pipeline latency in cycles per op class")
    #: op class -> cycles per lane-group (1 for simple ALU ops, more for transcendental ones)
    cycles_per_elem: dict[str, float] = field(doc="cycles per lane-group per op class")
    #: how an integer GEMM's int32 accumulator becomes int8/uint8 (kernels/qgemm.py, sim/intvec.py)
    requant: str = field("fixed", choices=("fixed", "float32"),
                         doc="integer requantisation: fixed (a Q31 multiplier and a shift, gemmlowp/TFLite's "
                             "integer arithmetic) or float32 (a float32 scale multiply, as ONNX Runtime's MLAS "
                             "and TensorRT's int8 kernels do)")
    #: dtype class -> cycles per lane-group relative to float32's, for each dtype the unit computes in
    dtypes: dict[str, float] = field({"f32": 1.0},
                                     doc="the dtypes the vector unit computes in, each with its cost per element "
                                         "relative to float32 (f32: every float function; i32 and i64: the "
                                         "exact integer, mask and index functions of sim/maskvec.py); ops "
                                         "needing a dtype left out run on the host")


@dataclass(frozen=True)
class DramSpec:
    bandwidth: float = field(min=1e6, unit="B/s", doc="peak DRAM bandwidth shared by all cores")
    latency_s: float = field(min=0.0, max=1e-3, unit="s", doc="latency of one DMA transfer")
    capacity: int = field(min=1 << 20, unit="B", doc="DRAM capacity")
    efficiency: float = field(0.8, min=0.05, max=1.0, doc="fraction of peak bandwidth sustained")


@dataclass(frozen=True)
class EnergySpec:
    per_mac_j: float = field(min=0.0, unit="J", doc="energy of one MAC at the charged dtype")
    per_vector_op_j: float = field(min=0.0, unit="J", doc="energy of one vector-lane operation")
    per_sram_byte_j: float = field(min=0.0, unit="J")
    per_dram_byte_j: float = field(min=0.0, unit="J")


@dataclass(frozen=True)
class NpuSpec:
    clock_hz: float = field(min=1e6, max=1e11, unit="Hz")
    cores: int = field(min=1, max=1024)
    sram_bytes: int = field(min=1024, unit="B", doc="scratchpad SRAM per core")
    array: ArraySpec = field()
    vector: VectorSpec = field()
    dram: DramSpec = field()
    energy: EnergySpec = field()
    shared_sram_bytes: int = field(0, min=0, unit="B", doc="SRAM shared by all cores (not tiled into)")
    issue_cycles: int = field(16, min=0, max=100000, doc="cycles to issue one instruction to an engine")
    process_nm: float | None = field(None, min=3, max=130, unit="nm",
                                     doc="process node the chip is made in (the foundry's name for it: 14 for "
                                         "Samsung 14LPP), for the die-area model (kcompiler/targets/area.py); "
                                         "every built-in chip gives it; one that leaves it out is costed at an "
                                         "assumed node, which its area's notes name")

    @property
    def value_dtype(self) -> str:
        """The dtype of the values the ops move ("": the charged one); set by for_values, never by
        the TOML (not a field, so the chip tables and artifacts do not carry it)."""
        return self.__dict__.get("_value_dtype", "")

    # ---- derived -------------------------------------------------------------------------
    @property
    def dtype(self) -> str:
        return self.array.dtype

    @property
    def elem_bytes(self) -> float:
        """Bytes of one element DMA and SRAM move: the values' dtype (for_values), else the charged one."""
        return DTYPE_BYTES[self.value_dtype or self.array.dtype]

    def for_values(self, dtype: str) -> "NpuSpec":
        """This chip as the tiler sees ops whose values are `dtype` ('fp32', 'fp16' or 'bf16'): DMA
        and SRAM bytes at `dtype`'s element size; MACs at the array dtype and in the passes the one
        rule (emulation.charge) gives for these operands, at that dtype's rate and MAC energy times the
        passes (float32 on warboy: 10 int8 passes). The timing model charges each MATMUL by the same
        rule (timing.mac_charge), so placement and simulated time agree. One object per (chip,
        dtype), as the tiler's caches key on the spec's identity."""
        if dtype not in ("fp16", "bf16", "fp32"):
            return self
        key = (id(self), dtype)
        hit = _FOR_VALUES.get(key)
        if hit is not None and hit[0] is self:
            return hit[1]
        arr = self.array
        c = charge(arr.dtypes, dtype, arr.dtype)
        e = MAC_ENERGY_45NM_PJ
        scale = e[c.dtype] / e[arr.dtype] if c.dtype in e and arr.dtype in e else 1.0
        s = dataclasses.replace(self, array=dataclasses.replace(arr, dtype=c.dtype),
                                energy=dataclasses.replace(self.energy,
                                                           per_mac_j=self.energy.per_mac_j * scale * c.passes))
        object.__setattr__(s, "_value_dtype", dtype)
        object.__setattr__(s, "_charge", c)
        _FOR_VALUES[key] = (self, s)
        return s

    @property
    def mac_passes(self) -> int:
        """Passes of the array per GEMM of this spec's values (for_values; 1 for the chip itself)."""
        c = self.__dict__.get("_charge")
        return c.passes if c is not None else 1

    @property
    def gemm_charge(self) -> Charge | None:
        """How this spec's values' GEMMs run (for_values), or None for the chip itself."""
        return self.__dict__.get("_charge")

    @property
    def macs_per_cycle(self) -> float:
        return self.cores * self.array.pes * self.array.rate

    @property
    def peak_ops(self) -> float:
        """Peak operations per second (2 per MAC) at the charged dtype."""
        return 2 * self.macs_per_cycle * self.clock_hz

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram.bandwidth * self.dram.efficiency / self.clock_hz

    @property
    def total_sram_bytes(self) -> int:
        return self.cores * self.sram_bytes + self.shared_sram_bytes

    def peak_ops_for(self, dtype: str) -> float:
        return 2 * self.cores * self.array.pes * self.array.dtypes[dtype] * self.clock_hz

    def headline(self) -> str:
        peaks = ", ".join(f"{self.peak_ops_for(d) / 1e12:.0f} T{'OPS' if d.startswith('int') else 'FLOPS'} {d}"
                          for d in sorted(self.array.dtypes, key=lambda d: -self.array.dtypes[d]))
        return (f"{peaks} modelled; {self.cores} core(s) x {self.array.rows}x{self.array.cols} {self.array.dataflow}; "
                f"SRAM {self.total_sram_bytes / 2**20:.0f} MiB; DRAM {self.dram.bandwidth / 1e9:.0f} GB/s; "
                f"{self.clock_hz / 1e9:.2f} GHz")

    def validate(self, path: str) -> None:
        """Cross-field checks the per-key ranges cannot express."""
        a = self.array
        if a.dtype not in a.dtypes:
            raise TargetError(f"{path}: 'npu.array.dtype' = {a.dtype!r} is not one of npu.array.dtypes",
                              hint=f"add it to npu.array.dtypes or choose one of {sorted(a.dtypes)}")
        for d, r in a.dtypes.items():
            if d not in DTYPE_BYTES:
                raise TargetError(f"{path}: 'npu.array.dtypes.{d}' is not a known dtype",
                                  hint=f"known dtypes: {sorted(DTYPE_BYTES)}")
            if not r > 0:
                raise TargetError(f"{path}: 'npu.array.dtypes.{d}' = {r} must be positive")
        for table in ("latency", "cycles_per_elem"):
            got = getattr(self.vector, table)
            missing = [c for c in VECTOR_CLASSES if c not in got]
            extra = [c for c in got if c not in VECTOR_CLASSES]
            if missing or extra:
                raise TargetError(f"{path}: 'npu.vector.{table}' must list exactly the op classes "
                                  f"{list(VECTOR_CLASSES)}" + (f"; missing {missing}" if missing else "")
                                  + (f"; unknown {extra}" if extra else ""))
            for c, v in got.items():
                if v < 0 or (table == "cycles_per_elem" and v <= 0):
                    raise TargetError(f"{path}: 'npu.vector.{table}.{c}' = {v} must be positive")
        bad = [d for d in self.vector.dtypes if d not in VECTOR_DTYPES]
        if bad or "f32" not in self.vector.dtypes or not all(r > 0 for r in self.vector.dtypes.values()):
            raise TargetError(f"{path}: 'npu.vector.dtypes' lists the dtypes the vector unit computes in, with a "
                              f"positive cost each, f32 among them; got {dict(self.vector.dtypes)}",
                              hint=f"known vector dtypes: {list(VECTOR_DTYPES)}")
        # one double-buffered minimal tile: an R x C operand pair and a C-wide accumulator
        b = self.elem_bytes
        one_tile = int(2 * (a.rows * a.cols * b + a.rows * a.cols * b) + a.rows * a.cols * 4)
        if self.sram_bytes < one_tile:
            raise TargetError(f"{path}: 'npu.sram_bytes' = {self.sram_bytes} is too small for one "
                              f"double-buffered {a.rows}x{a.cols} tile ({one_tile} bytes)",
                              hint=f"give at least {one_tile} bytes or a smaller array")
