"""Partitions of a chip (virtual NPUs): the figures a slice gets, the names that ask for one, and the
requests that cannot be met."""

from __future__ import annotations

import pytest

from kcompiler import targets
from kcompiler.errors import TargetError
from kcompiler.targets.area import chip_area

GIB = 1 << 30


def test_one_pe_of_warboy():
    whole = targets.chip("warboy")
    c = targets.partition("warboy", 1, index=1)
    s, w = c.spec, whole.spec
    assert c.name == "warboy" and c.label == "warboy[1/2]"
    assert s.cores == 1 and s.sram_bytes == w.sram_bytes and s.shared_sram_bytes == 0
    assert s.dram.bandwidth == w.dram.bandwidth / 2 and s.dram.capacity == 8 * GIB
    assert c.partition == targets.Partition(index=1, cores=1, of=2, dram_base=8 * GIB, dram_bytes=8 * GIB,
                                            bandwidth=0.5)
    assert c.partition.count == 2
    assert c.description.startswith("partition 1 of 2 of warboy: core 1 of 2, 50% of its DRAM bandwidth (33 GB/s)")
    assert "[0x200000000, 0x400000000)" in c.description
    # the per-op figures are the chip's; the area is its share
    assert s.energy == w.energy and s.array == w.array and s.clock_hz == w.clock_hz
    assert chip_area(c).total_mm2 == pytest.approx(chip_area(whole).total_mm2 / 2)


def test_atom_slices_share_the_shared_sram_and_dram():
    w = targets.chip("atom").spec
    parts = [targets.partition("atom", 2, index=i) for i in range(4)]
    for i, c in enumerate(parts):
        assert c.spec.cores == 2 and c.spec.shared_sram_bytes == w.shared_sram_bytes // 4
        assert c.spec.dram.bandwidth == pytest.approx(w.dram.bandwidth / 4)
        assert (c.partition.dram_base, c.partition.dram_bytes) == (i * 4 * GIB, 4 * GIB)
    assert c.description.startswith("partition 3 of 4 of atom: cores 6-7 of 8")
    # the windows tile the chip's DRAM without overlap
    assert parts[-1].partition.dram_base + parts[-1].partition.dram_bytes == w.dram.capacity
    assert chip_area(parts[0]).total_mm2 == pytest.approx(chip_area(targets.chip("atom")).total_mm2 / 4)


def test_bandwidth_fraction():
    w = targets.chip("rngd").spec
    full = targets.partition("rngd", 1, index=5, bandwidth=1.0)
    assert full.spec.dram.bandwidth == w.dram.bandwidth and full.partition.bandwidth == 1.0
    assert full.label == "rngd[5/8@1]"
    assert targets.partition("rngd", 1, bandwidth=0.25).spec.dram.bandwidth == pytest.approx(w.dram.bandwidth / 4)


@pytest.mark.parametrize("args, words", [
    (("warboy", 3), ["3 cores", "has 2", "from 1 to 2"]),
    (("warboy", 0), ["0 cores", "from 1 to 2"]),
    (("atom", 3), ["3 cores do not divide", "[1, 2, 4, 8]"]),
    (("warboy", 1, 2), ["index 2 is out of range", "from 0 to 1"]),
    (("atom", 4, -1), ["index -1 is out of range"]),
    (("aim", 1), ["pim chip has no cores", "NPU chip"]),
    (("host", 1), ["host chip has no cores"]),
    (("warboy", 1, 0, 0.0), ["fraction 0.0 is not in (0, 1]", "0.5"]),
    (("warboy", 1, 0, 1.5), ["fraction 1.5 is not in (0, 1]"]),
])
def test_impossible_partitions_are_target_errors(args, words):
    with pytest.raises(TargetError) as info:
        targets.partition(*args)
    text = str(info.value)
    assert f"partition of '{args[0]}'" in text
    for w in words:
        assert w in text, text


def test_a_partition_is_not_partitioned_again():
    with pytest.raises(TargetError, match="already a partition"):
        targets.partition(targets.partition("atom", 4), 2)


def test_partition_of_a_variant():
    v = targets.variant("warboy", {"npu.dram.capacity": 256 << 20})
    c = targets.partition(v, 1, index=1)
    assert (c.partition.dram_base, c.partition.dram_bytes) == (128 << 20, 128 << 20)
    assert c.spec.dram.capacity == 128 << 20 and "npu.dram.capacity=268435456" in c.source
    # and a variant of a partition is still that slice
    vv = targets.variant(c, {"npu.sram_bytes": 1 << 22})
    assert vv.partition == c.partition and vv.spec.sram_bytes == 1 << 22 and vv.spec.cores == 1


def test_names_and_resolve():
    assert targets.parse_partition("1/2") == (1, 2, None)
    assert targets.parse_partition(" 3 / 8 @ 1.0 ") == (3, 8, 1.0)
    for target, kw in (("warboy[1/2]", {}), ("warboy", {"partition": (1, 2)}), ("warboy", {"partition": "1/2"})):
        s = targets.resolve(target, **kw)
        assert s.name == "warboy[1/2]" and [d.name for d in s.devices] == ["host", "warboy"]
        assert s.accelerators[0].chip.partition.index == 1
    assert targets.chip("atom[2/4]").spec.cores == 2
    s = targets.resolve("atom", devices=2, partition=(0, 8, 1.0))
    assert s.name == "2xatom[0/8@1]" and all(d.chip.partition.bandwidth == 1.0 for d in s.accelerators)
    assert targets.resolve("2xatom[3/4]").accelerators[1].chip.label == "atom[3/4]"
    assert targets.resolve(targets.resolve("warboy"), partition="0/2").name == "warboy[0/2]"


@pytest.mark.parametrize("call, words", [
    (lambda: targets.resolve("warboy[0/3]"), ["0/3 of 'warboy'", "1, 2"]),
    (lambda: targets.resolve("warboy[1/2@x]"), ["'x' is not a bandwidth fraction"]),
    (lambda: targets.resolve("warboy", partition="half"), ["'half' is not INDEX/COUNT"]),
    (lambda: targets.resolve("warboy[1/2]", partition="0/2"), ["also given"]),
    (lambda: targets.resolve("atom+aim", partition="0/2"), ["'aim'", "no cores"]),
])
def test_bad_partition_names(call, words):
    with pytest.raises(TargetError) as info:
        call()
    for w in words:
        assert w in str(info.value), str(info.value)


def test_describe_says_the_partition():
    d = targets.describe(targets.chip("warboy[1/2]"))
    assert d["partition"] == {"index": 1, "count": 2, "cores": 1, "of": 2, "dram_base": 8 * GIB,
                              "dram_bytes": 8 * GIB, "bandwidth": 0.5}
    assert "partition" not in targets.describe(targets.chip("warboy"))
