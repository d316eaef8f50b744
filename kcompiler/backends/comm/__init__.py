"""The communication backend (kind ``comm``): runs the collectives a parallel plan inserts.

It is no chip: a multi-chip system gets one, under the device name ``COMM_DEVICE``, beside its
chips' backends (kcompiler.driver.make_backends). It claims only the communication ops
(collectives.py), costs them with the interconnect's closed forms, lowers a run of them into a
CommProgram that spans devices and links, and saves/loads that program in artifacts like any
other backend's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, Program, Subgraph, Support, no
from kcompiler.backends.comm.collectives import (COMM_DEVICE, DOMAIN, OPS, CommProgram, collective_time, is_comm,
                                                 load_program, save_program)
from kcompiler.targets import Chip, Device, System


@dataclass(frozen=True)
class CommSpec:
    """The communication device has no figures of its own: its costs are the system's links."""

    def headline(self) -> str:
        return "the system's interconnect"


class CommBackend(Backend):
    kind = "comm"
    spec_class = CommSpec
    is_chip = False

    @classmethod
    def for_system(cls, system: System) -> "CommBackend":
        chip = Chip(name="comm", kind="comm", description="communication between the system's chips",
                    spec=CommSpec(), source="kcompiler.backends.comm")
        return cls(Device(COMM_DEVICE, chip), system)

    def supports(self, node: ir.Node) -> Support:
        return YES if is_comm(node) else no("only communication ops run on the interconnect")

    def estimate(self, node: ir.Node) -> Cost:
        if "devices" in node.attributes:
            devices = [str(d) for d in node.attributes["devices"].value]
        else:  # Send / Recv
            devices = [str(node.attributes[k].value) for k in ("src", "dst") if k in node.attributes]
        nbytes = opinfo.nbytes(node.inputs[0]) if node.inputs and node.inputs[0] is not None else 0
        return Cost(seconds=collective_time(node.op_type, nbytes, devices, self.system), bound="link")

    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        return CommProgram(subgraph, self.system)

    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        return save_program(program, subgraph)

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        return load_program(subgraph, blob, meta, self.system)


__all__ = ["COMM_DEVICE", "DOMAIN", "OPS", "CommBackend", "CommProgram", "collective_time", "is_comm"]
