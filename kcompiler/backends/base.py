"""The interface every chip implements, and what it hands to the runtime.

A backend is found by its device *kind* (``host``, ``npu``, ``pim``, or a plugin's).
It says which nodes it can run (``supports``), what each would cost (``estimate``,
used by placement and parallelisation before anything is lowered) and turns a placed
subgraph into a ``Program`` (``lower``). The runtime only ever talks to Programs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # (a Program runs without the model: the runtime side imports no onnx_ir)
    import onnx_ir as ir

    from kcompiler.targets import Device, System


@dataclass(frozen=True)
class Support:
    """Whether a backend claims a node; ``reason`` says why not (shown by `kc inspect`)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


def no(reason: str) -> Support:
    return Support(False, reason)


@dataclass
class Cost:
    """What running one node (or one op of a program) costs on a device."""

    seconds: float = 0.0
    cycles: int = 0
    macs: int = 0
    dram_bytes: int = 0
    sram_bytes: int = 0
    energy_j: float = 0.0
    bound: str = "compute"  # "compute" | "memory" | "overhead"

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.seconds + other.seconds, self.cycles + other.cycles, self.macs + other.macs,
                    self.dram_bytes + other.dram_bytes, self.sram_bytes + other.sram_bytes,
                    self.energy_j + other.energy_j, self.bound)


@dataclass
class OpEvent:
    """One op's simulated execution inside a program, relative to the program's start."""

    name: str
    op_type: str
    start_s: float
    end_s: float
    cycles: int = 0
    macs: int = 0
    dram_bytes: int = 0
    sram_bytes: int = 0
    energy_j: float = 0.0
    bound: str = "compute"
    engine: str = ""  # "" means the whole device; else e.g. "core0.matrix"


@dataclass
class EngineSpan:
    """An interval during which one engine works for one op (Chrome trace tracks)."""

    engine: str  # a key of Timeline.engine_busy_s, e.g. "core0.matrix" or "dram"
    start_s: float
    end_s: float
    op: str = ""


@dataclass
class Timeline:
    """A program's simulated run: its ops and each engine's busy time."""

    seconds: float
    cycles: int
    ops: list[OpEvent] = field(default_factory=list)
    engine_busy_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: when each engine was busy (optional; without it a trace shows ops on their `engine`)
    spans: list[EngineSpan] = field(default_factory=list)


@dataclass
class Subgraph:
    """A contiguous run of nodes placed on one device, with its boundary values."""

    device: str
    nodes: list[ir.Node]
    inputs: list[ir.Value]  # produced outside (graph inputs or other partitions)
    outputs: list[ir.Value]  # used outside (graph outputs or other partitions)
    model: ir.Model  # the whole model the nodes belong to (opsets, functions)


class Program(abc.ABC):
    """A device's compiled code for one subgraph."""

    device: str

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute output values from input values (functional simulation)."""

    @abc.abstractmethod
    def simulate(self) -> Timeline:
        """Simulated time of one run; needs no data."""

    def asm(self) -> str:
        """Assembler text of the program (empty for devices without an ISA)."""
        return ""

    def to_bytes(self) -> bytes:
        """The program's binary encoding, for artifacts."""
        return b""


class Backend(abc.ABC):
    """One kind of device. Subclasses set ``kind`` and ``spec_class``."""

    kind: ClassVar[str]
    #: the dataclass validating the chip TOML's ``[kind]`` table
    spec_class: ClassVar[type]
    #: (rtol, atol as a fraction of each output's largest value) of `kc run --check` when this device computes
    #: in reduced precision (kcompiler.check.reduced_precision); None: it computes in float32 (rtol 1e-3, atol 1e-4)
    check_tolerance: ClassVar[tuple[float, float] | None] = None

    def __init__(self, device: "Device", system: "System"):
        self.device = device
        self.system = system
        self.spec = device.chip.spec

    @property
    def name(self) -> str:
        return self.device.name

    @abc.abstractmethod
    def supports(self, node: ir.Node) -> Support:
        """Whether this device can run the node, and if not, why."""

    @abc.abstractmethod
    def estimate(self, node: ir.Node) -> Cost:
        """The cost of the node on this device, without lowering it."""

    @abc.abstractmethod
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        """Compile a placed subgraph into a Program."""

    # ---- artifacts (runtime/artifact.py) -------------------------------------------------
    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        """The program's bytes plus a JSON-able table of whatever else `load_program` needs.

        Called while every weight of the model is an external-data reference into the
        artifact's weight section, so an ONNX graph serialised here carries references,
        not copies. `weights.add(raw) -> offset` puts bytes (a device's memory image) into that
        section, stored once whatever else holds the same bytes; `load_program` maps them back
        with `weights.map(offset, length)`. Default: ``program.to_bytes()`` and no table."""
        return program.to_bytes(), {}

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        """Rebuild a Program from what `save_program` wrote, without compiling again.

        `subgraph` is the loaded graph's (its weights are memory-mapped from the artifact);
        `weights.resolve(proto, what)` points an ONNX proto's references at the artifact.
        Default, for backends that do not implement it: lower the subgraph again (correct,
        but loading then costs what compiling it did)."""
        return self.lower(subgraph, options)

    @classmethod
    def target_files(cls) -> Sequence[str]:
        """Chip TOML files the backend ships (plugins use this)."""
        return ()
