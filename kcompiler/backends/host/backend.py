"""Host backend: one ONNX Runtime session per subgraph, created at compile time.

Timing is a roofline of the CPU's figures (targets/host.toml): an op takes the longer
of its FLOPs at the achieved peak and its bytes at DRAM bandwidth, plus dispatch overhead.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, OpEvent, Program, Subgraph, Support, Timeline
from kcompiler.errors import ExecutionError, LoweringError, UnsupportedOpError
from kcompiler.irutil import external_weights_dir, nested_graphs, node_inputs
from kcompiler.targets import Link
from kcompiler.targets.schema import field
from kcompiler.threads import host_threads

#: ONNX Runtime 1.31 rejects IR versions above this
ORT_MAX_IR_VERSION = 10

#: element types that ONNX Runtime's numpy bridge cannot carry: it refuses them as inputs and
#: outputs ("No corresponding Numpy type"), or hands float8e4m3fn back as its raw uint8 bits.
#: Values of these types cross as raw bytes in OrtValues, and come back as ml_dtypes arrays.
RAW_TYPES = frozenset({
    ir.DataType.BFLOAT16, ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2,
    ir.DataType.FLOAT8E5M2FNUZ, ir.DataType.FLOAT8E8M0, ir.DataType.INT4, ir.DataType.UINT4,
    ir.DataType.FLOAT4E2M1, ir.DataType.INT2, ir.DataType.UINT2})


def to_ortvalue(arr: Any, dtype: ir.DataType | None):
    """An OrtValue of `arr`; for a RAW_TYPES dtype, of the ONNX type itself (an ml_dtypes array,
    or its bits as unsigned integers of the same size). Bytes-wide types are not copied (the
    OrtValue is only valid while `arr` lives); 4- and 2-bit types are packed as ONNX stores them,
    the first element in the lowest bits of a byte."""
    import onnxruntime as ort  # (lazy: a 0.2 s import, paid only when the host runs a node)

    if dtype not in RAW_TYPES:
        return ort.OrtValue.ortvalue_from_numpy(arr)
    arr = np.ascontiguousarray(arr)
    bits = dtype.bitwidth
    if arr.dtype.itemsize * 8 != max(bits, 8):
        raise ExecutionError(f"an input of type {dtype.name} came as {arr.dtype} ({arr.dtype.itemsize} bytes "
                             f"an element)", hint=f"give an ml_dtypes {dtype.numpy()} array")
    if bits >= 8:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr, dtype.value)
    per_byte = 8 // bits
    codes = arr.view(np.uint8).reshape(-1) & np.uint8((1 << bits) - 1)
    codes = np.concatenate([codes, np.zeros(-codes.size % per_byte, np.uint8)]).reshape(-1, per_byte)
    packed = np.bitwise_or.reduce(codes << (np.arange(per_byte, dtype=np.uint8) * bits), axis=1).astype(np.uint8)
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), dtype.value)
    if value.tensor_size_in_bytes() != packed.nbytes:
        raise ExecutionError(f"ONNX Runtime holds a {dtype.name} tensor of shape {arr.shape} in "
                             f"{value.tensor_size_in_bytes()} bytes, not the {packed.nbytes} packed here")
    if packed.nbytes:
        ctypes.memmove(value.data_ptr(), packed.ctypes.data, packed.nbytes)
    return value


def from_ortvalue(value, dtype: ir.DataType | None) -> Any:
    """The numpy value of an OrtValue output; for a RAW_TYPES dtype, an ml_dtypes array of it:
    a view of the uint8 bits where ONNX Runtime returns those (float8e4m3fn), else a copy of the
    tensor's bytes (unpacked for 4- and 2-bit types)."""
    if dtype not in RAW_TYPES:
        return value.numpy()
    np_dtype = np.dtype(dtype.numpy())
    shape = tuple(value.shape())
    bits = dtype.bitwidth
    if bits >= 8:
        try:
            raw = value.numpy()
        except Exception:  # "No corresponding Numpy type for Tensor Type"
            raw = None
        if raw is not None and raw.dtype.itemsize == np_dtype.itemsize and raw.shape == shape:
            return raw.view(np_dtype)
    buf = np.empty(value.tensor_size_in_bytes(), np.uint8)
    if buf.size:
        ctypes.memmove(buf.ctypes.data, value.data_ptr(), buf.size)
    if bits >= 8:
        return buf.view(np_dtype).reshape(shape)
    per_byte = 8 // bits
    codes = (buf[:, None] >> (np.arange(per_byte, dtype=np.uint8) * bits)) & np.uint8((1 << bits) - 1)
    count = int(np.prod(shape, dtype=np.int64))
    return codes.reshape(-1)[:count].astype(np.uint8).view(np_dtype).reshape(shape)


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
    process_nm: float | None = field(None, min=3, max=130, unit="nm",
                                     doc="process node of the CPU's cores, for the die-area model "
                                         "(kcompiler/targets/area.py; the host is never counted in a "
                                         "system's area); not given: an assumed node")

    def pcie_link(self) -> Link:
        return Link(bandwidth=self.pcie_bandwidth, latency=self.pcie_latency_s, name="pcie")

    def headline(self) -> str:
        return (f"{self.peak_flops / 1e9:.0f} GFLOP/s FP32, {self.dram_bandwidth / 1e9:.1f} GB/s DRAM, "
                f"PCIe {self.pcie_bandwidth / 1e9:.1f} GB/s")


def extract_model(sub: Subgraph) -> onnx.ModelProto:
    """A standalone ModelProto computing `sub.outputs` from `sub.inputs` (with open input dims when
    it holds control flow: see _open_for_control_flow)."""
    proto = _extract_model(sub)
    if any(next(nested_graphs(n), None) is not None for n in sub.nodes):
        _open_for_control_flow(proto)
    return proto


def _open_for_control_flow(proto: onnx.ModelProto) -> None:
    """Give ONNX Runtime a subgraph holding If/Loop/Scan with its inputs' dims open (rank kept) and
    no declared shapes inside the bodies: ORT infers every branch's shapes when it loads the model,
    and with fixed dims a branch the bound shapes never take can be statically invalid (silero-vad's
    8 kHz branch with a 512-sample input ends in an LSTM of rank 4) although it never runs; the
    exporter's declared shapes inside the bodies are those of one traced branch. The run still
    feeds the bound shapes, so nothing computed changes."""
    graph = proto.graph
    for vi in graph.input:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for k, dim in enumerate(vi.type.tensor_type.shape.dim):
                dim.Clear()
                dim.dim_param = f"{vi.name}__{k}"
    del graph.value_info[:]
    stack = [a.g for n in graph.node for a in n.attribute if a.HasField("g")]
    stack += [g for n in graph.node for a in n.attribute for g in a.graphs]
    while stack:
        body = stack.pop()
        del body.value_info[:]
        for vi in body.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
        stack += [a.g for n in body.node for a in n.attribute if a.HasField("g")]
        stack += [g for n in body.node for a in n.attribute for g in a.graphs]


def _extract_model(sub: Subgraph) -> onnx.ModelProto:
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


def _threads() -> int:
    return host_threads()


def ort_session(proto: onnx.ModelProto, what: str, base_dir=None, literal_qdq: bool = False):
    """An ONNX Runtime session on the CPU; external weights are read from `base_dir`
    (ORT would otherwise look in the current directory, since it gets the model as bytes).

    literal_qdq: compute a QDQ model's function as written (DequantizeLinear, the float op,
    QuantizeLinear) instead of through ORT's fused integer kernels, which on x86 without VNNI
    saturate 16-bit pair sums (uint8 x int8, and int8 activations converted to uint8): the
    reference `kc run --check` compares a quantised program with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors come back as exceptions; ORT's own log lines are noise
    # ORT's intra-op threads otherwise spin after each run, on the cores the simulators of the
    # other devices' subgraphs (which run next) compute on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = _threads()
    if base_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
    if literal_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        # (int8 activations: ORT's QDQS8ToU8Transformer shifts them to uint8 for its u8 x s8 kernels, whose 16-bit
        # pair sums saturate on x86 without VNNI; without it ORT computes int8 groups exactly)
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["QDQS8ToU8Transformer"])
    except Exception as exc:
        text = " ".join(str(exc).split())[:500]
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "not a registered" in text:
            raise UnsupportedOpError(f"{what}: ONNX Runtime (the host fallback) cannot run it: {text}",
                                     hint="no device of the target supports this op; use a newer onnxruntime "
                                          "or replace the op in the exporter") from None
        raise LoweringError(f"{what}: kcompiler's host backend (kcompiler/backends/host) built a subgraph that "
                            f"ONNX Runtime refuses: {text}",
                            hint="if the model itself runs in ONNX Runtime, this is a bug in kcompiler's passes or "
                                 "host backend: `--print-after cleanup` shows the graph it came from, and "
                                 "--disable-pass fold-constants (or remove-identity, cse) finds the pass; please "
                                 "report it") from None


class HostProgram(Program):
    def __init__(self, sub: Subgraph, proto: onnx.ModelProto, session, cost_fn):
        self.device = sub.device
        self.proto = proto
        self.session = session
        self.input_names = [v.name for v in sub.inputs]
        self.output_names = [v.name for v in sub.outputs]
        #: inputs and outputs whose type ONNX Runtime's numpy bridge cannot carry (RAW_TYPES)
        self.raw_types = {v.name: v.dtype for v in list(sub.inputs) + list(sub.outputs) if v.dtype in RAW_TYPES}
        self.node_info = [(n.name, n.op_type, cost_fn(n)) for n in sub.nodes]
        #: per node, the dtype ONNX Runtime computes it at (its first output's; the report's dtype column)
        self.node_dtypes = [_value_dtype(n) for n in sub.nodes]
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
            if self.raw_types:
                types = self.raw_types.get
                values = self.session.run_with_ort_values(
                    self.output_names, {k: to_ortvalue(v, types(k)) for k, v in feeds.items()})
                outs = [from_ortvalue(v, types(k)) for k, v in zip(self.output_names, values)]
            else:
                outs = self.session.run(self.output_names, feeds)
        except ExecutionError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:500]
            raise ExecutionError(f"host subgraph failed in ONNX Runtime: {text}",
                                 hint="the message names the failing node") from None
        return dict(zip(self.output_names, outs))

    def simulate(self) -> Timeline:
        t, ops = 0.0, []
        dtypes = getattr(self, "node_dtypes", None) or [""] * len(self.node_info)
        for (name, op_type, c), dtype in zip(self.node_info, dtypes):
            ops.append(OpEvent(name, op_type, t, t + c.seconds, macs=c.macs, dram_bytes=c.dram_bytes,
                               energy_j=c.energy_j, bound=c.bound, engine="cpu", dtype=dtype))
            t += c.seconds
        return Timeline(seconds=t, cycles=0, ops=ops, engine_busy_s={"cpu": t})


#: ONNX dtype names as the reports write them
_REPORT_DTYPE = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "DOUBLE": "fp64", "INT8": "int8",
                 "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "FLOAT8E4M3FN": "fp8e4m3",
                 "FLOAT8E5M2": "fp8e5m2", "BOOL": "bool"}


def _value_dtype(node) -> str:
    """The dtype a host node computes at, as the report writes it: its first typed output's."""
    for v in node.outputs:
        if v is not None and v.dtype is not None:
            return _REPORT_DTYPE.get(v.dtype.name, v.dtype.name.lower())
    return ""


class HostBackend(Backend):
    kind = "host"
    fallback = True
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
