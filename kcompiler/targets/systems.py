"""Systems: a set of device instances plus the links between them, and target names read into
one (``npu``, ``atom+aim``, ``4xatom``, ``my.toml``, ``warboy[1/2]``). Every system also has the
host CPU, which runs what no accelerator claims."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from kcompiler.errors import TargetError
from kcompiler.targets.chips import HOST, Chip, Partition, describe
from kcompiler.targets.interconnect import Link, make
from kcompiler.targets.variants import chip, parse_partition, partition_of, split_partition


@dataclass(frozen=True)
class Device:
    """An instance of a chip in a system (``atom``, or ``atom0``..``atom3``)."""

    name: str
    chip: Chip

    @property
    def kind(self) -> str:
        return self.chip.kind


@dataclass(frozen=True)
class System:
    """Devices plus links. ``devices[0]`` is always the host."""

    name: str
    devices: tuple[Device, ...]
    links: tuple[tuple[str, str, Link], ...] = ()
    #: the chip-to-chip fabric of N identical chips (kcompiler.targets.interconnect.Interconnect)
    interconnect: Any = None

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise TargetError(f"system '{self.name}' has no device '{name}'",
                          hint=f"its devices are {[d.name for d in self.devices]}")

    @property
    def host(self) -> Device:
        return self.devices[0]

    @property
    def accelerators(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind != HOST)

    def link(self, a: str, b: str) -> Link:
        """The link data takes from device a to device b (none needed on one device)."""
        if a == b:
            return Link(bandwidth=float("inf"), latency=0.0, name="local")
        for x, y, link in self.links:
            if {x, y} == {a, b}:
                return link
        if self.interconnect is not None and a in self.interconnect.devices and b in self.interconnect.devices:
            return self.interconnect.link(a, b)
        # accelerators on one card: a chip spec may describe its link to the others (`peer_link`)
        devs = {d.name: d for d in self.devices}
        if a in devs and b in devs and HOST not in (devs[a].kind, devs[b].kind):
            for d in (devs[a], devs[b]):
                peer = getattr(d.chip.spec, "peer_link", None)
                if callable(peer):
                    return peer()
        return self.host.chip.spec.pcie_link()

    def route(self, a: str, b: str) -> list[tuple[str, str]]:
        """The directed links a transfer from a to b occupies (shared links make transfers queue)."""
        if self.interconnect is not None and a in self.interconnect.devices and b in self.interconnect.devices:
            return self.interconnect.route(a, b)
        return [] if a == b else [(a, b)]


_COUNT = re.compile(r"^(\d+)\s*[x\*]\s*(.+)$")


def resolve(target: "str | System | None", devices: int | None = None, interconnect: str | None = None,
            topology: str | None = None, chips: "dict[str, Chip] | None" = None,
            partition: "tuple | str | None" = None) -> System:
    """Turn a target name (``npu``, ``atom+aim``, ``4xatom``, ``my.toml``, ``warboy[1/2]``) into a System.

    Two or more identical chips are joined by an interconnect (a preset of
    kcompiler/targets/fabrics/interconnects.toml, PCIe Gen5 through a switch unless named).
    chips: chip name -> Chip to use for it instead of the built-in one (a variant).
    partition: (index, count) or (index, count, bandwidth fraction), or the text ``1/2`` /
    ``1/2@1.0``: every accelerator of the target is that partition of its chip (see partition;
    the system's name then ends in ``[1/2]``). A target name may say it itself: ``warboy[1/2]``."""
    part = _partition_arg(partition)
    if isinstance(target, System):
        if part is not None:
            devs = tuple(d if d.kind == HOST else Device(d.name, partition_of(d.chip, *part)) for d in target.devices)
            target = dataclasses.replace(target, devices=devs, name=target.name + _suffix(devs))
        if interconnect is None and topology is None:
            return target
        names = tuple(d.name for d in target.accelerators)
        return dataclasses.replace(target, interconnect=make(names, interconnect, topology))
    target = (target or HOST).strip()
    host = Device(HOST, chip(HOST))
    parts: list[tuple[int, Chip]] = []
    for piece in target.split("+"):
        piece = piece.strip()
        if not piece:
            raise TargetError(f"target '{target}': empty name between '+'", hint="join chip names: atom+aim")
        m = _COUNT.match(piece) if not piece.endswith(".toml") else None
        count, name = (int(m.group(1)), m.group(2)) if m else (1, piece)
        if count < 1 or count > 1024:
            raise TargetError(f"target '{target}': count {count} must be between 1 and 1024", hint="e.g. 4xatom")
        name, own = split_partition(name)
        c = chip(name)
        c = chips.get(c.name, c) if chips else c
        if own is not None:
            if part is not None:
                raise TargetError(f"target '{target}' names its partition, and a partition was also given",
                                  hint="give it one way: --target warboy[1/2] or --target warboy --partition 1/2")
            c = partition_of(c, *own)
        elif part is not None and c.kind != HOST:
            c = partition_of(c, *part)
        parts.append((count, c))
    if devices is not None:
        if devices < 1 or devices > 1024:
            raise TargetError(f"--devices {devices}: must be between 1 and 1024", hint="e.g. --devices 2")
        if len(parts) != 1:
            raise TargetError(f"--devices applies to a single chip, not the system '{target}'",
                              hint=f"name one chip (--target atom --devices 2), or repeat it in the target (2x{target})"
                              if "+" not in target else "name one chip: --target atom --devices 2")
        parts = [(devices, parts[0][1])]
    devs: list[Device] = [host]
    totals: dict[str, int] = {}
    for count, c in parts:
        totals[c.name] = totals.get(c.name, 0) + (count if c.kind != HOST else 0)
    index: dict[str, int] = {}
    for count, c in parts:
        if c.kind == HOST:
            continue
        for _ in range(count):
            i = index.get(c.name, 0)
            index[c.name] = i + 1
            devs.append(Device(f"{c.name}{i}" if totals[c.name] > 1 else c.name, c))
    name = target if devices is None else f"{devices}x{parts[0][1].label}"
    if part is not None:
        name += _suffix(devs) if devices is None else ""
    accs = [d for d in devs if d.kind != HOST]
    fabric = None
    if len(accs) > 1 and len({d.chip.name for d in accs}) == 1 or interconnect or topology:
        fabric = make(tuple(d.name for d in accs), interconnect, topology)
    return System(name=name, devices=tuple(devs), interconnect=fabric)


def _partition_arg(partition) -> tuple[int, int, float | None] | None:
    if partition is None:
        return None
    if isinstance(partition, str):
        return parse_partition(partition)
    if isinstance(partition, Partition):
        return partition.index, partition.count, partition.bandwidth
    if isinstance(partition, (tuple, list)) and len(partition) in (2, 3):
        return (partition[0], partition[1], partition[2] if len(partition) == 3 else None)
    raise TargetError(f"partition {partition!r} is not (index, count) or 'INDEX/COUNT'", hint="e.g. (1, 2) or '1/2'")


def _suffix(devs) -> str:
    """The partition suffix of a system's name (its first partitioned accelerator's)."""
    return next((d.chip.partition.suffix() for d in devs if d.chip.partition is not None), "")


def describe_system(s: System) -> dict:
    """A system's devices, the links between them and each chip's full description."""
    accs = s.accelerators
    out: dict = {"system": s.name, "devices": [{"name": d.name, "chip": d.chip.name, "kind": d.kind}
                                               for d in s.devices]}
    pairs = [(a.name, b.name) for i, a in enumerate(accs) for b in accs[i + 1:]]
    pairs += [(s.host.name, a.name) for a in accs]
    links = []
    for a, b in pairs:
        link = s.link(a, b)
        links.append({"from": a, "to": b, "link": link.name, "bandwidth_GBps": link.bandwidth / 1e9,
                      "latency_us": link.latency * 1e6})
    out["links"] = links
    if s.interconnect is not None:
        out["interconnect"] = s.interconnect.describe()
    chips = {}
    for d in accs or (s.host,):
        chips.setdefault(d.chip.name, describe(d.chip))
    out["chips"] = chips
    return out


def is_system_name(name: str) -> bool:
    """Whether a target name names a system (chips joined by '+' or repeated by 'N x')."""
    return "+" in name or (_COUNT.match(name.strip()) is not None and not name.endswith(".toml"))
