"""A Machine: one device's memories with the device and host command units over them."""

from __future__ import annotations

from kcompiler.backends.pim.sim.device import DeviceCommands
from kcompiler.backends.pim.sim.host import HostCommands
from kcompiler.backends.pim.sim.memory import Memories


class Machine(Memories, DeviceCommands, HostCommands):
    """The memories of one device during one run, and the commands' semantics over them."""
