"""Chip and system descriptions: TOML data validated into frozen dataclasses.

A *chip* file has ``name``, ``kind`` (which backend runs it), ``description`` and one
table named after the kind, validated by that backend's ``spec_class``. A *system* is a
set of device instances plus the links between them; every system also has the host
CPU, which runs what no accelerator claims.

Target names: a built-in chip (``warboy``), a path to a TOML file, ``A+B`` (chips
packaged together), ``NxA`` (N copies of a chip).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kcompiler.errors import TargetError
from kcompiler.targets import schema

HOST = "host"


@dataclass(frozen=True)
class Chip:
    """One chip description: its kind selects the backend, ``spec`` holds the figures."""

    name: str
    kind: str
    description: str
    spec: Any
    source: str
    aliases: tuple[str, ...] = ()

    def headline(self) -> str:
        fn = getattr(self.spec, "headline", None)
        return fn() if callable(fn) else self.description


@dataclass(frozen=True)
class Link:
    """A point-to-point (or shared) connection between two devices."""

    bandwidth: float  # bytes per second, one direction
    latency: float  # seconds per transfer
    name: str = "pcie"

    def transfer_s(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else self.latency + nbytes / self.bandwidth


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
    #: the chip-to-chip fabric of N identical chips (kcompiler.parallel.interconnect.Interconnect)
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


def _builtin_dir():
    return resources.files("kcompiler.targets")


def load_chip_file(path: str | Path, text: str | None = None) -> Chip:
    """Read and validate one chip TOML file."""
    return chip_from_data(read_chip_data(path, text), path)


def read_chip_data(path: str | Path, text: str | None = None) -> dict:
    """The raw TOML table of a chip file (not validated: see chip_from_data)."""
    path_s = str(path)
    try:
        return tomllib.loads(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise TargetError(f"{path_s}: no such target file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise TargetError(f"{path_s}: not valid TOML: {exc}") from None


def chip_from_data(data: dict, path: str | Path) -> Chip:
    """Validate a chip's TOML table (as read by read_chip_data) into a Chip; `path` names it in errors."""
    from kcompiler.backends import spec_class_for_kind, known_kinds

    path_s = str(path)
    for key in ("name", "kind"):
        if not isinstance(data.get(key), str) or not data.get(key):
            raise TargetError(f"{path_s}: missing key '{key}' (a string)")
    kind = data["kind"]
    if kind == "system":
        raise TargetError(f"{path_s}: this is a system description, not a chip")
    cls = spec_class_for_kind(kind)
    if cls is None:
        raise TargetError(f"{path_s}: unknown kind '{kind}'", hint=f"known kinds: {sorted(known_kinds())}")
    allowed = {"name", "kind", "description", "aliases", kind}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TargetError(f"{path_s}: unknown key(s) {unknown}", hint=f"allowed top-level keys: {sorted(allowed)}")
    if kind not in data:
        raise TargetError(f"{path_s}: missing table [{kind}] with the chip's figures")
    spec = schema.from_table(cls, data[kind], path_s, kind)
    validate = getattr(spec, "validate", None)
    if callable(validate):
        validate(path_s)
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise TargetError(f"{path_s}: 'aliases' must be a list of strings")
    return Chip(name=data["name"], kind=kind, description=str(data.get("description", "")), spec=spec,
                source=path_s, aliases=tuple(aliases))


#: chip files that failed to load: file name -> the error (shown when that chip is asked for)
BROKEN: dict[str, TargetError] = {}


@lru_cache(maxsize=None)
def builtin_chips() -> dict[str, Chip]:
    """Every chip shipped with kcompiler or a plugin, by name and alias.

    One bad file (a plugin's, or one being edited) must not take every other target down:
    its error is kept in BROKEN and raised only when that chip is asked for.
    """
    from kcompiler.backends import plugin_target_files

    chips: dict[str, Chip] = {}
    files = [(f.name, f.read_text()) for f in _builtin_dir().iterdir() if f.name.endswith(".toml")]
    files += [(str(p), Path(p).read_text()) for p in plugin_target_files()]
    for name, text in sorted(files):
        try:
            chip = load_chip_file(name, text)
        except TargetError as exc:
            BROKEN[Path(name).stem] = exc
            continue
        for key in (chip.name, *chip.aliases):
            chips.setdefault(key, chip)
    return chips


def chip(name: str) -> Chip:
    if name.endswith(".toml") or "/" in name or "\\" in name:
        return load_chip_file(name)
    chips = builtin_chips()
    if name not in chips and name in BROKEN:
        raise BROKEN[name]
    if name not in chips:
        raise TargetError(f"unknown target '{name}'",
                          hint=f"run `kc targets` to list them; known chips: {', '.join(sorted(chips))}")
    return chips[name]


def chip_data(name: "str | Chip") -> dict:
    """A chip's raw TOML table (built-in, plugin or file), to derive variants from (see variant)."""
    c = name if isinstance(name, Chip) else chip(name)
    if c.source.endswith(".toml") and not Path(c.source).is_absolute() and "/" not in c.source:
        text = (_builtin_dir() / c.source).read_text() if (_builtin_dir() / c.source).is_file() else None
        if text is not None:
            return read_chip_data(c.source, text)
    return read_chip_data(c.source)


def variant(name: "str | Chip", changes: dict[str, Any], label: str | None = None) -> Chip:
    """Chip `name` with some figures changed: `changes` maps dotted keys of its TOML table
    (``npu.array.rows``, ``pim.chips``) to new values. The result is validated like any chip file,
    so an impossible value is a TargetError naming the key; it keeps the base chip's name (its
    devices are named alike) and says what changed in its source."""
    import copy

    base = name if isinstance(name, Chip) else chip(name)
    name = base.name
    data = copy.deepcopy(chip_data(base))
    where = label or f"{name} variant"
    for key, value in changes.items():
        parts = key.split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                raise TargetError(f"{where}: '{key}' names no table of chip '{name}' ('{'.'.join(parts[:i + 1])}' "
                                  "is not one)", hint=f"`kc targets show {name}` lists its figures")
            node = node[p]
        if parts[-1] not in node:
            raise TargetError(f"{where}: chip '{name}' has no figure '{key}'",
                              hint=f"`kc targets show {name}` lists its figures")
        node[parts[-1]] = value
    src = f"{base.source} with " + ", ".join(f"{k}={v}" for k, v in changes.items())
    c = chip_from_data(data, where)
    return dataclasses.replace(c, source=src) if changes else c


_COUNT = re.compile(r"^(\d+)\s*[x\*]\s*(.+)$")


def resolve(target: "str | System | None", devices: int | None = None, interconnect: str | None = None,
            topology: str | None = None, chips: "dict[str, Chip] | None" = None) -> System:
    """Turn a target name (``npu``, ``atom+aim``, ``4xatom``, ``my.toml``) into a System.

    Two or more identical chips are joined by an interconnect (a preset of
    kcompiler/parallel/interconnects.toml, PCIe Gen5 through a switch unless named).
    chips: chip name -> Chip to use for it instead of the built-in one (a variant)."""
    if isinstance(target, System):
        if interconnect is None and topology is None:
            return target
        from kcompiler.parallel.interconnect import make

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
        c = chip(name)
        parts.append((count, chips.get(c.name, c) if chips else c))
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
    name = target if devices is None else f"{devices}x{parts[0][1].name}"
    accs = [d for d in devs if d.kind != HOST]
    fabric = None
    if len(accs) > 1 and len({d.chip.name for d in accs}) == 1 or interconnect or topology:
        from kcompiler.parallel.interconnect import make

        fabric = make(tuple(d.name for d in accs), interconnect, topology)
    return System(name=name, devices=tuple(devs), interconnect=fabric)


def list_targets() -> list[Chip]:
    """One entry per chip (aliases folded), host first."""
    seen, out = set(), []
    for c in builtin_chips().values():
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return sorted(out, key=lambda c: (c.kind != HOST, c.kind, c.name))


def describe(c: Chip) -> dict:
    return {"name": c.name, "kind": c.kind, "description": c.description, "aliases": list(c.aliases),
            "source": c.source, c.kind: schema.to_table(c.spec)}


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


class _CallableModule(type(sys)):
    """`kcompiler.targets()` lists chip names even though `kcompiler.targets` is this package."""

    def __call__(self) -> list[str]:
        return [c.name for c in list_targets()]


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Chip", "Device", "HOST", "Link", "System", "chip", "chip_data", "chip_from_data", "describe",
           "list_targets", "load_chip_file", "read_chip_data", "resolve", "variant", "dataclasses"]
