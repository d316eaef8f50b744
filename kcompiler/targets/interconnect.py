"""How the chips of a multi-chip system talk: presets (interconnects.toml), topology, routes,
and the closed-form times of point-to-point transfers and ring collectives.

A route is the list of directed links a transfer occupies; the executor keeps, per directed
link, when it is next free, so transfers (and collectives) sharing a link queue behind each
other (link contention).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kcompiler.errors import TargetError
from kcompiler.targets.schema import field

@dataclass(frozen=True)
class Link:
    """A point-to-point (or shared) connection between two devices."""

    bandwidth: float  # bytes per second, one direction
    latency: float  # seconds per transfer
    name: str = "pcie"

    def transfer_s(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else self.latency + nbytes / self.bandwidth


@dataclass(frozen=True)
class CardLink:
    """A chip file's link to an NPU on the same card (the [pim.link] and [cim.link] tables)."""

    bandwidth: float = field(min=1e6, unit="B/s", doc="this device <-> an NPU on the same card, one direction")
    latency_s: float = field(min=0.0, max=1.0, unit="s")

    def link(self) -> Link:
        return Link(bandwidth=self.bandwidth, latency=self.latency_s, name="card")


TOPOLOGIES = ("switch", "ring", "all-to-all")
DEFAULT = "pcie-gen5"
SWITCH = "switch"


@dataclass(frozen=True)
class Preset:
    name: str
    bandwidth: float  # bytes/s per direction of one link
    latency: float  # seconds per transfer (per hop on a ring)
    topology: str


@lru_cache(maxsize=None)
def presets() -> dict[str, Preset]:
    path = "kcompiler/targets/fabrics/interconnects.toml"
    data = tomllib.loads(resources.files("kcompiler.targets.fabrics").joinpath("interconnects.toml").read_text())
    out = {}
    for name, t in data.items():
        unknown = sorted(set(t) - {"bandwidth", "latency_s", "topology"})
        if unknown:
            raise TargetError(f"{path}: [{name}] has unknown key(s) {unknown}",
                              hint="allowed: bandwidth, latency_s, topology")
        bw, lat, topo = t.get("bandwidth"), t.get("latency_s"), t.get("topology")
        if not isinstance(bw, (int, float)) or not 1e6 <= bw <= 1e14:
            raise TargetError(f"{path}: [{name}] bandwidth = {bw!r} must be between 1e6 and 1e14 B/s")
        if not isinstance(lat, (int, float)) or not 0 <= lat <= 1e-2:
            raise TargetError(f"{path}: [{name}] latency_s = {lat!r} must be between 0 and 0.01 s")
        if topo not in TOPOLOGIES:
            raise TargetError(f"{path}: [{name}] topology = {topo!r} is not one of {list(TOPOLOGIES)}")
        out[name] = Preset(name, float(bw), float(lat), topo)
    return out


@dataclass(frozen=True)
class Interconnect:
    """The fabric between a system's accelerators (the host keeps its own PCIe links)."""

    name: str
    bandwidth: float
    latency: float
    topology: str
    devices: tuple[str, ...]  # accelerators, in ring order

    def describe(self) -> str:
        return (f"{self.name}: {self.topology}, {self.bandwidth / 1e9:.1f} GB/s per link and direction, "
                f"{self.latency * 1e6:.2f} us")

    def _ring_path(self, a: str, b: str) -> list[str]:
        n = len(self.devices)
        i, j = self.devices.index(a), self.devices.index(b)
        fwd = (j - i) % n
        step = 1 if fwd <= n - fwd else -1
        path, k = [a], i
        while self.devices[k] != b:
            k = (k + step) % n
            path.append(self.devices[k])
        return path

    def hops(self, a: str, b: str) -> int:
        if a == b:
            return 0
        if self.topology == "ring":
            return len(self._ring_path(a, b)) - 1
        return 1

    def link(self, a: str, b: str) -> Link:
        """The end-to-end link from a to b: every hop adds its latency (cut-through)."""
        return Link(bandwidth=self.bandwidth, latency=self.latency * max(self.hops(a, b), 1), name=self.name)

    def route(self, a: str, b: str) -> list[tuple[str, str]]:
        """The directed links a transfer from a to b occupies."""
        if a == b:
            return []
        if self.topology == "switch":
            return [(a, SWITCH), (SWITCH, b)]
        if self.topology == "ring":
            p = self._ring_path(a, b)
            return list(zip(p, p[1:]))
        return [(a, b)]


def make(devices: tuple[str, ...], name: str | None = None, topology: str | None = None) -> Interconnect:
    name = name or DEFAULT
    table = presets()
    if name not in table:
        raise TargetError(f"unknown interconnect '{name}'", hint=f"known: {', '.join(sorted(table))}")
    if topology is not None and topology not in TOPOLOGIES:
        raise TargetError(f"unknown topology '{topology}'", hint=f"choose one of {list(TOPOLOGIES)}")
    p = table[name]
    return Interconnect(name, p.bandwidth, p.latency, topology or p.topology, tuple(devices))


# ---- closed forms ------------------------------------------------------------------------------

def p2p_s(nbytes: float, link: Link) -> float:
    """Point to point: n / bandwidth + latency."""
    return link.transfer_s(int(nbytes))


def allreduce_s(nbytes: float, p: int, link: Link) -> float:
    """Ring all-reduce (reduce-scatter then all-gather, Patarasuk & Yuan 2009):
    2(p-1)/p * n / bandwidth + 2(p-1) steps of latency."""
    if p <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (p - 1) / p * nbytes / link.bandwidth + 2 * (p - 1) * link.latency


def allgather_s(nbytes: float, p: int, link: Link) -> float:
    """Ring all-gather of a tensor of n bytes in total: (p-1)/p * n / bandwidth + (p-1) latencies."""
    if p <= 1 or nbytes <= 0:
        return 0.0
    return (p - 1) / p * nbytes / link.bandwidth + (p - 1) * link.latency
