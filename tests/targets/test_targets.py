"""Target descriptions: validation errors name the file and key; systems resolve by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kcompiler import targets
from kcompiler.errors import TargetError
from kcompiler.targets import schema
from kcompiler.targets.schema import field

HOST_TOML = """
name = "myhost"
kind = "host"
description = "test host"
[host]
clock_hz = 3.0e9
peak_flops = 1e11
efficiency = 0.5
dram_bandwidth = 2e10
op_overhead_s = 1e-6
pcie_bandwidth = 3e10
pcie_latency_s = 1e-6
energy_per_flop_j = 1e-11
energy_per_dram_byte_j = 5e-11
"""


def test_host_is_always_device_zero():
    system = targets.resolve("host")
    assert [d.name for d in system.devices] == ["host"]
    assert system.host.kind == "host"


def test_api_lists_targets():
    import kcompiler

    assert "host" in kcompiler.targets()


def test_load_chip_file_from_path(tmp_path):
    p = tmp_path / "myhost.toml"
    p.write_text(HOST_TOML)
    chip = targets.load_chip_file(p)
    assert chip.name == "myhost" and chip.spec.clock_hz == 3.0e9


@pytest.mark.parametrize(
    "edit, words",
    [
        (("efficiency = 0.5", "efficiency = 0.5\nbogus = 1"), ["unknown key", "bogus", "myhost.toml"]),
        (("efficiency = 0.5", "efficiency = 2.5"), ["host.efficiency", "above the maximum"]),
        (("peak_flops = 1e11", "peak_flops = -1"), ["host.peak_flops", "below the minimum"]),
        (("peak_flops = 1e11", 'peak_flops = "fast"'), ["host.peak_flops", "must be a number"]),
        (("clock_hz = 3.0e9\n", ""), ["missing key", "host.clock_hz"]),
        (('kind = "host"', 'kind = "quantum"'), ["unknown kind", "quantum"]),
        (("[host]", "[host\n"), ["not valid TOML"]),
        (('description = "test host"', 'description = "x"\nextra = 3'), ["unknown key", "extra"]),
    ],
)
def test_bad_chip_files_name_file_and_key(tmp_path, edit, words):
    p = tmp_path / "myhost.toml"
    p.write_text(HOST_TOML.replace(*edit))
    with pytest.raises(TargetError) as err:
        targets.load_chip_file(p)
    text = str(err.value)
    for w in words:
        assert w in text, text


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError) as err:
        targets.resolve("no-such-chip")
    assert "no-such-chip" in str(err.value) and "kc targets" in str(err.value)


def test_missing_toml_path():
    with pytest.raises(TargetError, match="no such target file"):
        targets.resolve("/nonexistent/chip.toml")


def test_bad_counts_and_devices():
    with pytest.raises(TargetError):
        targets.resolve("0xhost+")
    with pytest.raises(TargetError):
        targets.resolve("host", devices=0)


@dataclass(frozen=True)
class Inner:
    dataflow: str = field(choices=("ws", "os", "is"))


@dataclass(frozen=True)
class Outer:
    inner: Inner
    sizes: list[int] = field(default=[1])


def test_schema_choices_and_nested():
    ok = schema.from_table(Outer, {"inner": {"dataflow": "ws"}, "sizes": [1, 2]}, "f.toml", "chip")
    assert ok.inner.dataflow == "ws" and ok.sizes == [1, 2]
    with pytest.raises(TargetError, match=r"chip.inner.dataflow.*not allowed"):
        schema.from_table(Outer, {"inner": {"dataflow": "xx"}}, "f.toml", "chip")
    with pytest.raises(TargetError, match=r"chip.sizes\[1\].*integer"):
        schema.from_table(Outer, {"inner": {"dataflow": "os"}, "sizes": [1, 2.5]}, "f.toml", "chip")
    assert schema.to_table(ok) == {"inner": {"dataflow": "ws"}, "sizes": [1, 2]}


def test_link_transfer_time():
    link = targets.resolve("host").link("host", "elsewhere")
    assert link.transfer_s(0) == 0.0
    # host.toml's PCIe 4.0 x16: 1 us to set up, then 31.5 MB at 31.5 GB/s take 1 ms
    assert link.transfer_s(31_500_000) == pytest.approx(1e-6 + 1e-3, rel=1e-6)


def test_a_broken_builtin_file_only_breaks_itself(monkeypatch):
    import kcompiler.targets as t
    from kcompiler.targets import chips

    real = chips.builtin_dir

    class Fake:
        def __init__(self, name, text):
            self.name, self._text = name, text

        def read_text(self):
            return self._text

    class Dir:
        def iterdir(self):
            yield from real().iterdir()
            yield Fake("zz_broken.toml", 'name = "zz_broken"\nkind = "host"\n[host]\nclock_hz = -1\n')

    monkeypatch.setattr(chips, "builtin_dir", lambda: Dir())
    t.builtin_chips.cache_clear()
    try:
        assert t.resolve("host").host.name == "host"
        with pytest.raises(TargetError, match="clock_hz"):
            t.resolve("zz_broken")
    finally:
        t.builtin_chips.cache_clear()
        t.BROKEN.clear()
