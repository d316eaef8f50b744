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

from kcompiler.errors import ArtifactError

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
    #: where energy_j goes, for devices that know (CIM: dac, crossbar, adc, shift_add, digital, ...)
    energy_parts: dict[str, float] = field(default_factory=dict)
    #: the dtype the op computed at: "int8", "fp16", "fp32 as 10 int8 passes" (an emulation in passes of
    #: a dtype the chip lists), the vector unit's "fp32", a PIM's "bf16"; "" for ops that compute nothing
    dtype: str = ""


@dataclass
class EngineSpan:
    """An interval during which one engine works for one op (Chrome trace tracks)."""

    engine: str  # a key of Timeline.engine_busy_s, e.g. "core0.matrix" or "dram"
    start_s: float
    end_s: float
    op: str = ""


@dataclass
class OpRecord:
    """One op on the whole system's clock (a report's row; a program's OpEvent placed in time)."""

    name: str
    op_type: str
    device: str
    start_s: float
    end_s: float
    cycles: int = 0
    macs: int = 0
    dram_bytes: int = 0
    sram_bytes: int = 0
    energy_j: float = 0.0
    bound: str = "compute"
    engine: str = ""
    energy_parts: dict[str, float] = field(default_factory=dict)
    dtype: str = ""  # what it computed at (OpEvent.dtype)


@dataclass
class Transfer:
    """A value crossing a link between two devices."""

    src: str
    dst: str
    value: str
    nbytes: int
    start_s: float
    end_s: float


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
    #: a program whose ops span several devices and links (communication): the executor hands it
    #: the shared clocks (`schedule`) instead of running it on one device's clock
    spans_devices: ClassVar[bool] = False

    def schedule(self, ready: dict, link_free: dict, transfers: list, ops: list) -> None:
        """For programs that span devices: advance the shared clocks. `ready` maps value ->
        (time, device) and `link_free` a directed link -> when it is next free; append the
        Transfers and OpRecords it makes."""
        raise TypeError(f"{type(self).__name__} runs on one device (spans_devices is False): the executor runs it, "
                        "it does not schedule itself")

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute output values from input values (functional simulation)."""

    @abc.abstractmethod
    def simulate(self) -> Timeline:
        """Simulated time of one run; needs no data."""

    def check_precision(self) -> tuple[str, tuple[float, float]] | None:
        """Why this program's values are not float32's, and the (rtol, atol as a fraction of each
        output's largest value) `kc run --check` should use; None: float32, or the backend's
        `check_tolerance` says it (kcompiler.check.reduced_precision)."""
        return None

    def configure(self, options: Mapping[str, Any]) -> None:
        """Apply run-time options of its backend (`Backend.options`, e.g. the time a CIM chip is read
        after programming) to a compiled or loaded program. Default: none apply."""

    def asm(self) -> str:
        """Assembler text of the program (empty for devices without an ISA)."""
        return ""

    def to_bytes(self) -> bytes:
        """The program's binary encoding, for artifacts."""
        return b""


def check_stored_program(where: str, kind: str, meta: Mapping[str, Any], encoding: int, subgraph: Subgraph) -> None:
    """What every backend's `load_program` checks first: the program was stored in the encoding this
    kcompiler reads (`kind` names it: "PIM", "CIM"), and its step table matches the subgraph's nodes."""
    if int(meta.get("encoding", 0)) != encoding:
        raise ArtifactError(f"{where}: stored in {kind} encoding {meta.get('encoding')}, this kcompiler reads "
                            f"{encoding}", hint="recompile the model")
    ops = list(meta.get("ops", ()))
    if ops != [n.op_type for n in subgraph.nodes]:
        raise ArtifactError(f"{where}: its step table ({len(ops)} steps) does not match the subgraph's "
                            f"{len(subgraph.nodes)} nodes")


class Backend(abc.ABC):
    """One kind of device. Subclasses set ``kind`` and ``spec_class``."""

    kind: ClassVar[str]
    #: the dataclass validating the chip TOML's ``[kind]`` table
    spec_class: ClassVar[type]
    #: False for a backend that is no chip (communication): target files cannot name its kind
    is_chip: ClassVar[bool] = True
    #: the device every node can fall back to (the host): placement's last resort, and never a
    #: reason not to fuse
    fallback: ClassVar[bool] = False
    #: the fusion patterns this backend lowers as one op, as data (like TVM Relax's
    #: FuseOpsByPattern tables): pattern name -> the kcompiler ops (kcompiler.fused) it makes.
    #: A fusion rule fires only when some device of the target claims its pattern and every
    #: claiming device's `check_fusion` accepts the node (passes/fusion/_base.py: claim_check).
    #: Built-in patterns: "epilogue" (Fused{Conv,MatMul,Gemm}), "elementwise-chain"
    #: (FusedElementwise), "attention" (ONNX Attention).
    fusions: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: rewrite rules of the backend's own, as (name, rule) pairs of onnxscript RewriteRules, run
    #: by the fusion pass ``backend-patterns`` on targets that have this device: how a chip adds a
    #: fused op of its own (its ``supports`` then claims the op; its function body lets every
    #: other device, ONNX Runtime included, run it)
    patterns: ClassVar[Sequence[tuple[str, Any]]] = ()
    #: (rtol, atol as a fraction of each output's largest value) of `kc run --check` when this device computes
    #: in reduced precision (kcompiler.check.reduced_precision); None: it computes in float32 (rtol 1e-3, atol 1e-4)
    check_tolerance: ClassVar[tuple[float, float] | None] = None
    #: options of this kind, given to `lower` (and to a loaded program's `Program.configure`): name ->
    #: (metavar, help). The command line offers each as --name-with-dashes on compile, run, bench and
    #: inspect; a compile naming one that no device of its target reads is refused
    options: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def __init__(self, device: "Device", system: "System"):
        self.device = device
        self.system = system
        self.spec = device.chip.spec

    @property
    def name(self) -> str:
        return self.device.name

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse a malformed value of one of this backend's `options` (a KCError naming it) before
        anything is compiled. Default: nothing to check."""

    @abc.abstractmethod
    def supports(self, node: ir.Node) -> Support:
        """Whether this device can run the node, and if not, why."""

    def check_fusion(self, pattern: str, node: ir.Node, **facts: Any) -> Support:
        """Whether this device can run what fusion `pattern` would make of `node`; `facts` are
        what the rule measured (each pattern documents its own: an epilogue's operands, the
        members of an elementwise chain, attention's dimensions). Default: `supports(node)`."""
        return self.supports(node)

    def compute_dtype(self, node: ir.Node) -> str | None:
        """The float format this device computes `node`'s arithmetic in ("bfloat16", "float16", "float32"),
        which placement weighs against the node's own dtype (kcompiler.passes.precision keeps the ops that a
        16-bit format would change off a device that narrows them). None, the default: at the node's own
        dtype, as ONNX Runtime computes it: the host; the NPU, whose vector unit computes float32 and whose
        float GEMMs reach float32's accuracy (npu/emulation.py); a CIM chip, whose products are analog by
        design (its check_precision says how) and which claims no other op."""
        return None

    @abc.abstractmethod
    def estimate(self, node: ir.Node) -> Cost:
        """The cost of the node on this device, without lowering it."""

    @abc.abstractmethod
    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        """Compile a placed subgraph into a Program."""

    # ---- artifacts (kcompiler/artifact) -------------------------------------------------
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
