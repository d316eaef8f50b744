"""Chip and system descriptions: TOML data validated into frozen dataclasses.

A *chip* file has ``name``, ``kind`` (which backend runs it), ``description`` and one
table named after the kind, validated by that backend's ``spec_class``. A *system* is a
set of device instances plus the links between them; every system also has the host
CPU, which runs what no accelerator claims.

Target names: a built-in chip (``warboy``), a path to a TOML file, ``A+B`` (chips
packaged together), ``NxA`` (N copies of a chip), ``warboy[1/2]`` (a partition: the second of two
equal slices of the chip, see partition).
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
from kcompiler.targets.interconnect import Link, make
from kcompiler.targets.kinds import known_kinds, plugin_target_files, spec_class_for_kind

HOST = "host"


@dataclass(frozen=True)
class Partition:
    """Which slice of a chip a partitioned Chip is (a virtual NPU): cores ``index * cores`` to
    ``(index + 1) * cores - 1`` of the chip's ``of``, the DRAM window ``[dram_base, dram_base +
    dram_bytes)`` its programs' buffers lie in (the simulator faults any access outside it), and the
    fraction of the chip's DRAM bandwidth it is given."""

    index: int
    cores: int
    of: int
    dram_base: int
    dram_bytes: int
    bandwidth: float

    @property
    def count(self) -> int:
        """How many such partitions the chip holds."""
        return self.of // self.cores

    @property
    def default_bandwidth(self) -> bool:
        """Whether the bandwidth is the partition's proportional share (cores / the chip's cores)."""
        return abs(self.bandwidth - self.cores / self.of) < 1e-12

    def suffix(self) -> str:
        """``[1/2]``, or ``[1/2@1]`` with a bandwidth fraction other than the share: what resolve reads."""
        return f"[{self.index}/{self.count}" + ("" if self.default_bandwidth else f"@{self.bandwidth:g}") + "]"

    def describe(self) -> dict:
        return {"index": self.index, "count": self.count, "cores": self.cores, "of": self.of,
                "dram_base": self.dram_base, "dram_bytes": self.dram_bytes, "bandwidth": self.bandwidth}


@dataclass(frozen=True)
class Chip:
    """One chip description: its kind selects the backend, ``spec`` holds the figures."""

    name: str
    kind: str
    description: str
    spec: Any
    source: str
    aliases: tuple[str, ...] = ()
    #: set on a slice of a chip (see partition): its spec then holds the slice's figures
    partition: Partition | None = None

    def headline(self) -> str:
        fn = getattr(self.spec, "headline", None)
        return fn() if callable(fn) else self.description

    @property
    def label(self) -> str:
        """The chip's name, with the partition it is (``warboy[1/2]``) if it is one."""
        return self.name + (self.partition.suffix() if self.partition is not None else "")


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
    base, part = split_partition(name)
    if part is not None:  # warboy[1/2]
        return partition_of(chip(base), *part)
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
    if isinstance(name, Chip) and not Path(c.source).is_file():
        # a variant's or an artifact's chip has no file of its own: its figures are its spec
        return {"name": c.name, "kind": c.kind, "description": c.description, "aliases": list(c.aliases),
                c.kind: schema.to_table(c.spec)}
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
    if base.partition is not None:  # a partition's variant is still that slice of the chip
        c = dataclasses.replace(c, partition=base.partition)
    return dataclasses.replace(c, source=src) if changes else c


def partition(chip_: "str | Chip", cores: int, index: int = 0, bandwidth: float | None = None) -> Chip:
    """Slice `index` of a chip cut into equal slices of `cores` cores each: a virtual NPU, as a cloud
    gives one tenant (one of Warboy's two PEs, some of ATOM's or RNGD's eight).

    The slice has those cores with their own SRAM, the same share of the chip's shared SRAM and of
    its DRAM capacity, and `bandwidth` (a fraction 0 < f <= 1) of its DRAM bandwidth: by default its
    share, cores / the chip's cores; 1.0 gives it the whole channel (no other tenant is busy). Its
    programs' DRAM buffers lie in the window [index * size, (index + 1) * size) of the chip's DRAM,
    size = its share of the capacity, and the simulator faults any access outside it. Energy per
    operation is the chip's; its area (from its figures) is its share of the chip's. It keeps the
    chip's name (devices are named alike); ``Chip.partition`` and ``Chip.label`` (``warboy[1/2]``)
    say which slice it is."""
    base = chip_ if isinstance(chip_, Chip) else chip(chip_)
    what = f"partition of '{base.name}'"
    if base.partition is not None:
        raise TargetError(f"{what}: '{base.label}' is already a partition", hint=f"partition the whole chip, "
                          f"'{base.name}', into smaller slices instead")
    total = getattr(base.spec, "cores", None)
    if base.kind != "npu" or not isinstance(total, int):
        raise TargetError(f"{what}: a {base.kind} chip has no cores to partition",
                          hint="partition an NPU chip (warboy, atom, rngd)")
    if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= total:
        raise TargetError(f"{what}: {cores!r} cores, but '{base.name}' has {total}",
                          hint=f"give a whole number of cores from 1 to {total}")
    if total % cores:
        fits = [c for c in range(1, total + 1) if total % c == 0]
        raise TargetError(f"{what}: {cores} cores do not divide the chip's {total} into equal partitions",
                          hint=f"give one of {fits} cores per partition")
    count = total // cores
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise TargetError(f"{what}: index {index!r} is out of range: {total} cores make {count} partitions of "
                          f"{cores}", hint=f"give an index from 0 to {count - 1}")
    share = cores / total
    if bandwidth is None:
        bandwidth = share
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0 < bandwidth <= 1:
        raise TargetError(f"{what}: DRAM bandwidth fraction {bandwidth!r} is not in (0, 1]",
                          hint=f"give the fraction of the chip's bandwidth it gets, e.g. {share:g} (its share, "
                               "the default) or 1.0 (all of it)")
    spec = base.spec
    size = spec.dram.capacity * cores // total
    label = f"{base.name}[{index}/{count}" + ("" if bandwidth == share else f"@{float(bandwidth):g}") + "]"
    changes = {"npu.cores": cores, "npu.dram.bandwidth": spec.dram.bandwidth * bandwidth, "npu.dram.capacity": size}
    if spec.shared_sram_bytes:  # a chip without shared SRAM does not name the figure
        changes["npu.shared_sram_bytes"] = spec.shared_sram_bytes * cores // total
    c = variant(base, changes, label=label)
    part = Partition(index=index, cores=cores, of=total, dram_base=index * size, dram_bytes=size,
                     bandwidth=float(bandwidth))
    first = index * cores
    desc = (f"partition {index} of {count} of {base.name}: core{'s' if cores > 1 else ''} {first}"
            + (f"-{first + cores - 1}" if cores > 1 else "") + f" of {total}, {bandwidth:.0%} of its DRAM "
            f"bandwidth ({spec.dram.bandwidth * bandwidth / 1e9:.0f} GB/s), DRAM window "
            f"[{part.dram_base:#x}, {part.dram_base + size:#x}). {base.description}")
    return dataclasses.replace(c, description=desc, partition=part, source=f"{base.source}, {label}")


_PARTITION = re.compile(r"^(.*?)\[\s*(\d+)\s*/\s*(\d+)\s*(?:@\s*([^\]]*?)\s*)?\]$")


def parse_partition(text: str) -> tuple[int, int, float | None]:
    """``1/2`` (the second of two equal partitions) or ``1/2@1.0`` (with the whole DRAM bandwidth) ->
    (index, count, bandwidth fraction or None for the share)."""
    m = _PARTITION.match(f"[{str(text).strip()}]")
    if m is None:
        raise TargetError(f"partition '{text}' is not INDEX/COUNT", hint="e.g. 1/2: the second of two equal "
                          "partitions of the chip (1/2@1.0: with all of its DRAM bandwidth)")
    return int(m.group(2)), int(m.group(3)), _fraction(m.group(4), text) if m.group(4) else None


def split_partition(name: str) -> tuple[str, tuple[int, int, float | None] | None]:
    """``warboy[1/2]`` -> ("warboy", (1, 2, None)); a name without a partition -> (name, None)."""
    m = _PARTITION.match(name.strip()) if name.strip().endswith("]") else None
    if m is None:
        return name, None
    return m.group(1).strip(), (int(m.group(2)), int(m.group(3)),
                                _fraction(m.group(4), name) if m.group(4) else None)


def _fraction(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TargetError(f"partition '{where}': '{text}' is not a bandwidth fraction", hint="e.g. 1/2@1.0") from None


def partition_of(chip_: "str | Chip", index: int, count: int, bandwidth: float | None = None) -> Chip:
    """Partition `index` of `count` equal partitions of a chip (partition() with cores = its cores / count)."""
    base = chip_ if isinstance(chip_, Chip) else chip(chip_)
    total = getattr(base.spec, "cores", None)
    if base.kind == "npu" and isinstance(total, int) and base.partition is None and \
            (not isinstance(count, int) or count < 1 or total % count):
        raise TargetError(f"partition {index}/{count} of '{base.name}': its {total} cores do not split into "
                          f"{count} equal partitions", hint="give a count that divides them: "
                          + ", ".join(str(c) for c in range(1, total + 1) if total % c == 0))
    return partition(base, total // count if isinstance(total, int) and base.kind == "npu" else 0, index, bandwidth)


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


def list_targets() -> list[Chip]:
    """One entry per chip (aliases folded), host first."""
    seen, out = set(), []
    for c in builtin_chips().values():
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return sorted(out, key=lambda c: (c.kind != HOST, c.kind, c.name))


def describe(c: Chip) -> dict:
    out = {"name": c.name, "kind": c.kind, "description": c.description, "aliases": list(c.aliases),
           "source": c.source, c.kind: schema.to_table(c.spec)}
    if c.partition is not None:
        out["partition"] = c.partition.describe()
    return out


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

__all__ = ["Chip", "Device", "HOST", "Link", "Partition", "System", "chip", "chip_data", "chip_from_data", "describe",
           "list_targets", "load_chip_file", "parse_partition", "partition", "partition_of", "read_chip_data",
           "resolve", "variant", "dataclasses"]
