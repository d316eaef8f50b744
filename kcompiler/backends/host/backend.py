"""Host backend: one ONNX Runtime session per subgraph, created at compile time.

Timing is a roofline of the CPU's figures (targets/host.toml): an op takes the longer
of its FLOPs at the achieved peak and its bytes at DRAM bandwidth, plus dispatch overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline
from kcompiler.errors import ExecutionError, LoweringError, UnsupportedOpError
from kcompiler.irutil import external_weights_dir, node_inputs
from kcompiler.targets import Link
from kcompiler.targets.schema import field

#: ONNX Runtime 1.31 rejects IR versions above this
ORT_MAX_IR_VERSION = 10


@dataclass(frozen=True)
class HostSpec:
    clock_hz: float = field(min=1e6, max=1e11, unit="Hz")
    peak_flops: float = field(min=1e6, unit="FLOP/s", doc="peak FP32 FLOP/s of the CPU")
    efficiency: float = field(min=0.01, max=1.0, doc="fraction of peak ONNX Runtime reaches")
    dram_bandwidth: float = field(min=1e6, unit="B/s")
    op_overhead_s: float = field(min=0.0, max=1.0, unit="s")
    pcie_bandwidth: float = field(min=1e6, unit="B/s", doc="host-to-card link, one direction")
    pcie_latency_s: float = field(min=0.0, max=1.0, unit="s")
    energy_per_flop_j: float = field(min=0.0, unit="J")
    energy_per_dram_byte_j: float = field(min=0.0, unit="J")

    def pcie_link(self) -> Link:
        return Link(bandwidth=self.pcie_bandwidth, latency=self.pcie_latency_s, name="pcie")

    def headline(self) -> str:
        return (f"{self.peak_flops / 1e9:.0f} GFLOP/s FP32, {self.dram_bandwidth / 1e9:.1f} GB/s DRAM, "
                f"PCIe {self.pcie_bandwidth / 1e9:.1f} GB/s")


def extract_model(sub: Subgraph) -> onnx.ModelProto:
    """A standalone ModelProto computing `sub.outputs` from `sub.inputs`."""
    model = sub.model
    all_nodes = list(model.graph)
    if len(sub.nodes) == len(all_nodes) and {v.name for v in sub.outputs} == {
            v.name for v in model.graph.outputs} and len(sub.outputs) == len(model.graph.outputs) and {
            v.name for v in sub.inputs} == {v.name for v in model.graph.inputs}:
        # (a graph input no node reads, e.g. CastLike's `like` after folding, is not fed: take
        # the general path below, which declares only the inputs the subgraph reads)
        proto = ir.serde.serialize_model(model)
        # keep only the graph's own order of outputs; inputs already match
        proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
        return proto
    graph = onnx.GraphProto(name=f"{model.graph.name or 'graph'}_{sub.device}")
    input_names = {v.name for v in sub.inputs}
    inits: dict[str, ir.Value] = {}
    for node in sub.nodes:
        for v in node_inputs(node):
            if v.name not in input_names and v.is_initializer() and v.const_value is not None:
                inits[v.name] = v
        graph.node.append(ir.serde.serialize_node(node))
    for v in sub.inputs:
        graph.input.append(ir.serde.serialize_value(v))
    for v in sub.outputs:
        graph.output.append(ir.serde.serialize_value(v))
    for name, v in inits.items():
        t = ir.serde.serialize_tensor(v.const_value)
        t.name = name
        graph.initializer.append(t)
    opsets = [onnx.helper.make_opsetid(d, ver) for d, ver in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets,
                                   ir_version=min(model.ir_version, ORT_MAX_IR_VERSION))
    for fn in model.functions.values():
        proto.functions.append(ir.serde.serialize_function(fn))
    return proto


def external_data_dir(sub: Subgraph):
    """The folder holding the external weights the subgraph reads (None if it reads none)."""
    return external_weights_dir(v for node in sub.nodes for v in node_inputs(node))


def ort_session(proto: onnx.ModelProto, what: str, base_dir=None):
    """An ONNX Runtime session on the CPU; external weights are read from `base_dir`
    (ORT would otherwise look in the current directory, since it gets the model as bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors come back as exceptions; ORT's own log lines are noise
    # ORT's intra-op threads otherwise spin after each run, on the cores the simulators of the
    # other devices' subgraphs (which run next) compute on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if base_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
    try:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = " ".join(str(exc).split())[:500]
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "not a registered" in text:
            raise UnsupportedOpError(f"{what}: ONNX Runtime (the host fallback) cannot run it: {text}",
                                     hint="no device of the target supports this op; use a newer onnxruntime "
                                          "or replace the op in the exporter") from None
        raise LoweringError(f"{what}: ONNX Runtime refused the subgraph: {text}") from None


class HostProgram(Program):
    def __init__(self, sub: Subgraph, proto: onnx.ModelProto, session, cost_fn):
        self.device = sub.device
        self.proto = proto
        self.session = session
        self.input_names = [v.name for v in sub.inputs]
        self.output_names = [v.name for v in sub.outputs]
        self.node_info = [(n.name, n.op_type, cost_fn(n)) for n in sub.nodes]
        #: builds the session on first run (programs loaded from an artifact)
        self.make_session = None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None and self.make_session is not None:
            self.session, self.make_session = self.make_session(), None
        if self.session is None:
            raise ExecutionError("this host subgraph was compiled in timing mode and cannot compute values",
                                 hint="compile with mode='functional'")
        feeds = {name: inputs[name] for name in self.input_names}
        try:
            outs = self.session.run(self.output_names, feeds)
        except Exception as exc:
            text = " ".join(str(exc).split())[:500]
            raise ExecutionError(f"host subgraph failed in ONNX Runtime: {text}",
                                 hint="the message names the failing node") from None
        return dict(zip(self.output_names, outs))

    def simulate(self) -> Timeline:
        t, ops = 0.0, []
        for name, op_type, c in self.node_info:
            ops.append(OpEvent(name, op_type, t, t + c.seconds, macs=c.macs, dram_bytes=c.dram_bytes,
                               energy_j=c.energy_j, bound=c.bound, engine="cpu"))
            t += c.seconds
        return Timeline(seconds=t, cycles=0, ops=ops, engine_busy_s={"cpu": t})


class HostBackend(Backend):
    kind = "host"
    spec_class = HostSpec

    def supports(self, node: ir.Node) -> Support:
        return YES

    def estimate(self, node: ir.Node) -> Cost:
        s: HostSpec = self.spec
        fl = opinfo.flops(node)
        by = opinfo.bytes_moved(node)
        if node.op_type in opinfo.VIEW_OPS or node.op_type in ("Constant", "Shape", "Size"):
            by = 0
        t_compute = fl / (s.peak_flops * s.efficiency)
        t_mem = by / s.dram_bandwidth
        seconds = s.op_overhead_s + max(t_compute, t_mem)
        bound = "overhead" if s.op_overhead_s > max(t_compute, t_mem) else (
            "compute" if t_compute >= t_mem else "memory")
        return Cost(seconds=seconds, macs=opinfo.macs(node), dram_bytes=by, bound=bound,
                    energy_j=fl * s.energy_per_flop_j + by * s.energy_per_dram_byte_j)

    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        if (options or {}).get("mode") == "timing":
            # timing-only: no session, so no weight is ever read
            return HostProgram(subgraph, None, None, self.estimate)
        proto = extract_model(subgraph)
        first = subgraph.nodes[0] if subgraph.nodes else None
        what = f"host subgraph of {len(subgraph.nodes)} node(s)" + (
            f" starting at '{first.name}' ({first.op_type})" if first is not None else "")
        session = ort_session(proto, what, external_data_dir(subgraph))
        return HostProgram(subgraph, proto, session, self.estimate)

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        if program.proto is None:  # timing-only: nothing to run
            return b"", {"timing": True}
        # extracted again now that the weights are references into the artifact (the compiled
        # proto may point at the source model's external-data file)
        return extract_model(subgraph).SerializeToString(deterministic=True), {}

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        if meta.get("timing") or not blob:
            return HostProgram(subgraph, None, None, self.estimate)
        proto = onnx.ModelProto.FromString(blob)
        weights.resolve(proto, f"host subgraph starting at '{subgraph.nodes[0].name if subgraph.nodes else ''}'")
        prog = HostProgram(subgraph, proto, None, self.estimate)
        what = f"host subgraph of {len(subgraph.nodes)} node(s) loaded from {weights.path.name}"
        # ONNX Runtime maps the artifact's weight section itself; the session is made on first run
        # so that loading stays cheap
        prog.make_session = lambda: ort_session(proto, what, weights.base_dir)
        return prog
