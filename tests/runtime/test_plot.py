"""`kc bench --plot`: a PNG with a roofline per chip and a per-engine timeline."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kcompiler
from kcompiler.errors import KCError
from kcompiler.runtime import plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_roofs_of_the_chips():
    """The roofs against the figures in the chips' TOML files, worked out by hand."""
    # atom: 2 ops/MAC x 8 engines x 64x128 INT8 PEs x 1.0 GHz; GDDR6 256 GB/s at 80% efficiency
    peak, bw = plot.roofs(kcompiler.targets.chip("atom").spec)
    assert peak == pytest.approx(131.072e12) and bw == pytest.approx(204.8e9)
    # host: 128 GFLOP/s peak at the 60% ONNX Runtime reaches; one DDR4-3200 channel, 25.6 GB/s
    peak, bw = plot.roofs(kcompiler.targets.chip("host").spec)
    assert peak == pytest.approx(76.8e9) and bw == pytest.approx(25.6e9)


def test_plot_paths():
    assert plot.plot_paths("r.png", ["atom"]) == [plot.Path("r.png")]
    assert [p.name for p in plot.plot_paths("out/r.png", ["npu", "atom+aim"])] == ["r-npu.png", "r-atom+aim.png"]


def test_plot_report(tmp_path):
    pytest.importorskip("matplotlib")
    cm = kcompiler.compile("squeezenet", target="atom", mode="timing")
    rep = cm.simulate()
    out = plot.plot_report(rep, cm.system, tmp_path / "sq.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000
    # one timeline row per engine the report lists, plus the two PCIe directions
    names = [n for n, _ in plot._tracks(rep)]
    assert {e for e, s in rep.engine_busy_s.items() if s > 0} <= set(names)
    assert "link host->atom" in names


def test_bench_plot_several_targets(tmp_path):
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, "-m", "kcompiler", "bench", "squeezenet", "--target", "npu", "--target",
                        "host", "--quiet", "--plot", str(tmp_path / "b.png")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("b-npu.png", "b-host.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_missing_matplotlib_is_a_kcerror(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(KCError) as info:
        plot._matplotlib()
    assert "kcompiler[plot]" in info.value.hint
