"""Chip descriptions: the Chip record, and chip TOML files validated into it.

A *chip* file has ``name``, ``kind`` (which backend runs it), ``description`` and one table named
after the kind, validated by that kind's ``spec_class`` (kcompiler.targets.kinds). The built-in
files are those beside this module and the plugins' (``builtin_chips``).
"""

from __future__ import annotations

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


def builtin_dir():
    """The folder of the chip files shipped with kcompiler (kcompiler/targets/*.toml)."""
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
    files = [(f.name, f.read_text()) for f in builtin_dir().iterdir() if f.name.endswith(".toml")]
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
