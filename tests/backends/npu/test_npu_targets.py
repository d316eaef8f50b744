"""Chip TOML validation: bad values are TargetErrors naming the file and the key."""

from __future__ import annotations

import pytest

from kcompiler import targets
from kcompiler.errors import TargetError


@pytest.mark.parametrize("name", ["npu", "warboy", "atom", "rngd"])
def test_builtin_chips_load(name):
    c = targets.chip(name)
    assert c.kind == "npu"
    assert c.spec.clock_hz > 0 and "T" in c.spec.headline()


def test_npu_is_an_alias_of_warboy():
    assert targets.chip("npu").name == "warboy"


def test_published_peaks():
    assert abs(targets.chip("warboy").spec.peak_ops / 64e12 - 1) < 0.05
    atom = targets.chip("atom").spec
    assert abs(atom.peak_ops_for("int8") / 128e12 - 1) < 0.05 and abs(atom.peak_ops_for("fp16") / 32e12 - 1) < 0.05
    rngd = targets.chip("rngd").spec
    assert abs(rngd.peak_ops_for("bf16") / 256e12 - 1) < 0.05
    assert rngd.total_sram_bytes == 256 * 2**20


@pytest.mark.parametrize("replace,append,key", [
    ({}, "\n[npu.extra]\nx = 1\n", "extra"),
    ({"issue_cycles = 16": "issue_cycles = 16\nwarp_drive = 3"}, "", "warp_drive"),
    ({"cores = 2": "cores = 0"}, "", "npu.cores"),
    ({"rows = 64": "rows = -4"}, "", "npu.array.rows"),
    ({"sram_bytes = 16777216": "sram_bytes = 4096"}, "", "npu.sram_bytes"),
    ({'dataflow = "ws"': 'dataflow = "diagonal"'}, "", "npu.array.dataflow"),
    ({'dtype = "int8"': 'dtype = "fp16"'}, "", "npu.array.dtype"),
    ({"bandwidth = 66e9": "bandwidth = 0"}, "", "npu.dram.bandwidth"),
    ({"move = 2 }": "move = 2, teleport = 1 }"}, "", "npu.vector.latency"),
])
def test_bad_values_name_file_and_key(tmp_chip, replace, append, key):
    path = tmp_chip(replace, append)
    with pytest.raises(TargetError) as e:
        targets.chip(path)
    msg = str(e.value)
    assert path in msg and key in msg, msg


def test_sram_too_small_for_one_tile(tmp_chip):
    path = tmp_chip({"sram_bytes = 16777216": "sram_bytes = 50000"})
    with pytest.raises(TargetError, match="too small for one"):
        targets.chip(path)


def test_custom_chip_compiles(tmp_chip):
    import kcompiler

    path = tmp_chip({"cores = 2": "cores = 3"})
    cm = kcompiler.compile("squeezenet", target=path, mode="timing")
    assert cm.simulate().latency_s > 0


def test_headline_and_description_agree_on_the_modelled_peaks():
    """The headline gives the peaks the model computes with; the description gives the published ones
    and the same modelled ones beside them (atom: published 128 TOPS, modelled 131), never only one."""
    from kcompiler.targets import list_targets

    for c in list_targets():
        if c.kind != "npu":
            continue
        assert "modelled" in c.headline() and "published" in c.description, c.name
        for d in c.spec.array.dtypes:
            assert f"{c.spec.peak_ops_for(d) / 1e12:.0f}" in c.description, (c.name, d, c.description)
