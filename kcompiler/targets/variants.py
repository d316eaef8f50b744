"""A chip by name (``warboy``, ``my.toml``, ``warboy[1/2]``), and the chips derived from one:
variants with some figures changed, and partitions (a slice of an NPU's cores: a virtual NPU)."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

from kcompiler.errors import TargetError
from kcompiler.targets import chips, schema
from kcompiler.targets.chips import (BROKEN, Chip, Partition, builtin_chips, chip_from_data, load_chip_file,
                                     read_chip_data)


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
        text = (chips.builtin_dir() / c.source).read_text() if (chips.builtin_dir() / c.source).is_file() else None
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
