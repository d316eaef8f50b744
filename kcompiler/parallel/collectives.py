"""Communication ops (domain ``kcompiler``) and the program that runs them.

The parallel strategies insert these nodes; they are never lowered for a chip. The runtime
executes them itself: values are the sum / concatenation / slices of the per-device arrays,
time is the closed forms of interconnect.py on the links of the system, reserved so that
transfers and collectives sharing a link queue behind each other.

    Send(x)            src, dst      x crosses from src to dst (n / bandwidth + latency per hop)
    Recv(x)            src, dst      marks its arrival on dst (free)
    AllReduce(x_0..)   devices       every device gets sum_i x_i             (ring all-reduce)
    AllGather(x_0..)   devices, axis every device (or `targets`) gets concat(x_i) (ring all-gather;
                       targets        to the host: every device sends its shard over its own link)
    Scatter(x)         devices, axis  slice i of x goes from the host to device i
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Program, Subgraph, Timeline
from kcompiler.errors import ArtifactError, ExecutionError
from kcompiler.frontend.state import RESIDENT
from kcompiler.targets import Link
from kcompiler.targets import interconnect as ic
from kcompiler.runtime.report import OpRecord, Transfer

DOMAIN = "kcompiler"
#: the placement tag of communication nodes: the runtime, not a backend, runs them
COMM_DEVICE = "kcompiler.comm"
OPS = ("Send", "Recv", "AllReduce", "AllGather", "Scatter")


def is_comm(node: ir.Node) -> bool:
    return node.domain == DOMAIN and node.op_type in OPS


def _strs(node: ir.Node, name: str) -> list[str]:
    """A strings attribute (devices, targets) as a list; empty when absent."""
    a = node.attributes.get(name)
    return list(a.value) if a is not None else []


def _str(node: ir.Node, name: str) -> str:
    """A string attribute the op requires (src, dst)."""
    return node.attributes[name].value


def _int(node: ir.Node, name: str, default: int = 0) -> int:
    """An int attribute (axis), or `default` when absent."""
    a = node.attributes.get(name)
    return int(a.value) if a is not None else default


def _shards(x: np.ndarray, axis: int, p: int) -> list[np.ndarray]:
    """`x` cut into `p` equal contiguous slices along `axis` (what Scatter hands out)."""
    return [np.ascontiguousarray(s) for s in np.split(x, p, axis=axis)]


class CommProgram(Program):
    """A run of communication nodes; the executor schedules it across devices and links."""

    collective = True  # tells the executor to call schedule() instead of placing it on one device

    def __init__(self, sub: Subgraph, system):
        self.device = COMM_DEVICE
        self.nodes = list(sub.nodes)
        self.system = system
        self.output_names = [v.name for v in sub.outputs]

    # ---- values ------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(inputs)
        for node in self.nodes:
            try:
                xs = [env[v.name] for v in node.inputs]
            except KeyError as exc:
                raise ExecutionError(f"communication op '{node.name}' ({node.op_type}): input {exc} missing") from None
            op = node.op_type
            if op in ("Send", "Recv"):
                ys = [xs[0]]
            elif op == "AllReduce":
                total = xs[0].copy()
                for x in xs[1:]:
                    total = total + x
                ys = [total] * len(node.outputs)
            elif op == "AllGather":
                full = np.concatenate(xs, axis=_int(node, "axis"))
                ys = [full] * len(node.outputs)
            elif op == "Scatter":
                ys = _shards(xs[0], _int(node, "axis"), len(node.outputs))
            else:  # pragma: no cover - is_comm guards this
                raise ExecutionError(f"unknown communication op {op}")
            for v, y in zip(node.outputs, ys):
                env[v.name] = y
        return {n: env[n] for n in self.output_names}

    def simulate(self) -> Timeline:
        return Timeline(seconds=0.0, cycles=0)

    def asm(self) -> str:
        lines = []
        for n in self.nodes:
            attrs = ", ".join(f"{k}={a.value}" for k, a in n.attributes.items())
            lines.append(f"; {n.op_type}({', '.join(v.name for v in n.inputs)}) -> "
                         f"({', '.join(v.name for v in n.outputs)}) [{attrs}]")
        return "\n".join(lines)

    # ---- time --------------------------------------------------------------------------
    def schedule(self, ex, ready: dict, link_free: dict, transfers: list, ops: list) -> None:
        """Advance the executor's clocks: `ready` maps value -> (time, device), `link_free`
        directed link -> time it is next free."""
        system = self.system
        host = system.host.name
        for node in self.nodes:
            op = node.op_type
            if op == "Send":
                src, dst = _str(node, "src"), _str(node, "dst")
                v = node.inputs[0]
                t, where = ready.get(v.name, (0.0, host))
                end = t if where == dst else ex._transfer(v, where, dst, t, link_free, transfers)
                ready[node.outputs[0].name] = (end, dst)
                ops.append(OpRecord(node.name, op, src, t, end, bound="link", engine="comm"))
                continue
            if op == "Recv":
                ready[node.outputs[0].name] = ready.get(node.inputs[0].name, (0.0, host))
                continue
            devices = _strs(node, "devices")
            if op == "Scatter":
                v = node.inputs[0]
                t, where = ready.get(v.name, (0.0, host))
                if where == RESIDENT:  # device-resident state: every device already holds its slice
                    for dev, out in zip(devices, node.outputs):
                        ready[out.name] = (t, dev)
                    continue
                nbytes = opinfo.nbytes(v) // max(len(devices), 1)
                for dev, out in zip(devices, node.outputs):
                    end = self._p2p(where, dev, nbytes, t, link_free, transfers, out.name)
                    ready[out.name] = (end, dev)
                    ops.append(OpRecord(node.name, op, dev, t, end, bound="link", engine="comm"))
                continue
            # gather the inputs onto their devices (a rank's piece may have been computed on the host)
            start = 0.0
            for dev, v in zip(devices, node.inputs):
                t, where = ready.get(v.name, (0.0, host))
                if where != dev:
                    t = ex._transfer(v, where, dev, t, link_free, transfers)
                start = max(start, t)
            p = len(devices)
            targets = _strs(node, "targets") or devices
            if op == "AllGather" and targets == [RESIDENT]:  # state output: the slices stay put
                ready[node.outputs[0].name] = (start, RESIDENT)
                continue
            if op == "AllGather" and targets == [host]:
                end = start
                for dev, v in zip(devices, node.inputs):
                    end = max(end, self._p2p(dev, host, opinfo.nbytes(v), start, link_free, transfers,
                                             node.outputs[0].name))
                ready[node.outputs[0].name] = (end, host)
                for dev in devices:
                    ops.append(OpRecord(node.name, op, dev, start, end, bound="link", engine="comm"))
                continue
            ring = [(devices[i], devices[(i + 1) % p]) for i in range(p)] if p > 1 else []
            keys = [k for a, b in ring for k in system.route(a, b)]
            start = max([start] + [link_free.get(k, 0.0) for k in keys])
            link = _slowest(system, ring)
            n = opinfo.nbytes(node.inputs[0])
            if op == "AllReduce":
                dur = ic.allreduce_s(n, p, link)
                moved = 2 * (p - 1) / p * n if p > 1 else 0
            else:
                n = n * p  # the gathered tensor
                dur = ic.allgather_s(n, p, link)
                moved = (p - 1) / p * n if p > 1 else 0
            end = start + dur
            for k in keys:
                link_free[k] = end
            for a, b in ring:
                transfers.append(Transfer(a, b, f"{op} {node.name}", int(moved), start, end))
            for dev, out in zip(targets, node.outputs):
                ready[out.name] = (end, dev)
            for dev in devices:
                ops.append(OpRecord(node.name, op, dev, start, end, bound="link", engine="comm"))

    def _p2p(self, src: str, dst: str, nbytes: int, t: float, link_free: dict, transfers: list, name: str) -> float:
        if src == dst:
            return t
        route = self.system.route(src, dst)
        start = max([t] + [link_free.get(k, 0.0) for k in route])
        end = start + self.system.link(src, dst).transfer_s(nbytes)
        for k in route:
            link_free[k] = end
        transfers.append(Transfer(src, dst, name, nbytes, start, end))
        return end


def _slowest(system, pairs):
    links = [system.link(a, b) for a, b in pairs]
    if not links:
        return Link(bandwidth=float("inf"), latency=0.0, name="local")
    bw = min(l.bandwidth for l in links)
    lat = max(l.latency for l in links)
    return Link(bandwidth=bw, latency=lat, name=links[0].name)


def lower(sub: Subgraph, system) -> CommProgram:
    return CommProgram(sub, system)


# ---- artifacts (runtime/artifact.py) ---------------------------------------------------------
def save_program(program: CommProgram, sub: Subgraph) -> tuple[bytes, dict]:
    """A communication program is its nodes, which the stored graph holds (op, devices, axis and
    targets are node attributes); the program section is its assembler text, the table the ops in
    order, checked against the graph on load."""
    return program.asm().encode(), {"ops": [n.op_type for n in program.nodes]}


def load_program(sub: Subgraph, blob: bytes, meta: Mapping, system) -> CommProgram:
    ops = list(meta.get("ops", ()))
    got = [n.op_type for n in sub.nodes]
    if ops != got or not all(is_comm(n) for n in sub.nodes):
        raise ArtifactError(f"communication program of {ops} for a subgraph of {got}",
                            hint="recompile the model")
    for n in sub.nodes:
        for dev in _strs(n, "devices") + _strs(n, "targets") + [
                a.value for k, a in n.attributes.items() if k in ("src", "dst")]:
            if dev != RESIDENT:
                system.device(dev)  # a TargetError names the device the system lacks
    prog = CommProgram(sub, system)
    if prog.asm().encode() != bytes(blob):
        raise ArtifactError("communication program: its stored text differs from the graph's nodes",
                            hint="recompile the model")
    return prog


def collective_time(op: str, nbytes: int, devices: list[str], system) -> float:
    """What a collective over `devices` costs in isolation (for the strategies' cost estimates)."""
    p = len(devices)
    if p <= 1:
        return 0.0
    ring = [(devices[i], devices[(i + 1) % p]) for i in range(p)]
    link = _slowest(system, ring)
    if op == "AllReduce":
        return ic.allreduce_s(nbytes, p, link)
    if op == "AllGather":
        return ic.allgather_s(nbytes, p, link)
    return link.transfer_s(nbytes)
