"""Chip and system descriptions: TOML data validated into frozen dataclasses.

A *chip* file has ``name``, ``kind`` (which backend runs it), ``description`` and one
table named after the kind, validated by that backend's ``spec_class``. A *system* is a
set of device instances plus the links between them; every system also has the host
CPU, which runs what no accelerator claims.

Target names: a built-in chip (``warboy``), a path to a TOML file, ``A+B`` (chips
packaged together), ``NxA`` (N copies of a chip), ``warboy[1/2]`` (a partition: the second of two
equal slices of the chip, see partition).

Modules: ``chips`` (the Chip record, chip files, the built-in chips), ``variants`` (a chip by name,
variants and partitions of one), ``systems`` (System and Device, ``resolve`` of target names),
``interconnect`` (links and fabrics), ``kinds`` (which class validates a kind), ``schema``, ``area``.
"""

from __future__ import annotations

import dataclasses  # (named in __all__ since the package held everything)
import sys

from kcompiler.targets.chips import HOST, Chip, Partition, chip_from_data, describe, list_targets, load_chip_file, \
    read_chip_data
from kcompiler.targets.interconnect import Link
from kcompiler.targets.systems import Device, System, resolve
from kcompiler.targets.variants import chip, chip_data, parse_partition, partition, partition_of, variant

# also used as targets.X, though not in __all__
from kcompiler.targets.chips import BROKEN, builtin_chips  # noqa: F401,E402
from kcompiler.targets.systems import describe_system, is_system_name  # noqa: F401,E402
from kcompiler.targets.variants import split_partition  # noqa: F401,E402


class _CallableModule(type(sys)):
    """`kcompiler.targets()` lists chip names even though `kcompiler.targets` is this package."""

    def __call__(self) -> list[str]:
        return [c.name for c in list_targets()]


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Chip", "Device", "HOST", "Link", "Partition", "System", "chip", "chip_data", "chip_from_data", "describe",
           "list_targets", "load_chip_file", "parse_partition", "partition", "partition_of", "read_chip_data",
           "resolve", "variant", "dataclasses"]
