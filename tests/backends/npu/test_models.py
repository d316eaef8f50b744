"""The nine bundled CNNs on the NPU chips, with seeded random weights (the bundled files carry
constant fills, whose outputs ignore the input): values match ONNX Runtime, >= 99% of MACs on the
NPU, and a timing-only compile lays out no weight."""

from __future__ import annotations

import pytest

import kcompiler
from kcompiler.check import compare_with_ort
from kcompiler.zoo import BUNDLED

FAST = {"squeezenet", "shufflenet", "inception_v1", "bvlc_alexnet"}


def _check(path: str, target: str):
    cm = kcompiler.compile(path, target=target)
    feeds = cm.random_inputs()
    outs = cm.run(feeds)
    c = compare_with_ort(cm, feeds, outs, rtol=1e-4, atol=0, atol_scale=1e-5)
    assert c.ok, c.describe()
    rep = cm.report
    npu = sum(v["macs"] for d, v in rep.devices.items() if d != "host")
    assert npu >= 0.99 * rep.macs
    assert rep.latency_s > 0 and rep.energy_j > 0


@pytest.mark.parametrize("model", sorted(FAST))
def test_bundled_on_npu_fast(model, random_cnn):
    _check(random_cnn(model), "npu")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["warboy", "atom", "rngd"])
@pytest.mark.parametrize("model", BUNDLED)
def test_bundled_matrix(model, target, random_cnn):
    _check(random_cnn(model), target)


def test_timing_mode_reads_no_weights(monkeypatch):
    """A timing-only compile lays out buffers but writes no weight byte into the image."""
    from kcompiler.backends.npu.kernels import codegen

    def boom(*a, **k):
        raise AssertionError("timing mode laid out a weight")

    monkeypatch.setattr(codegen, "_as_bytes", boom)
    cm = kcompiler.compile("resnet50", target="npu", mode="timing")
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    assert prog.data.init == [] and any(b.role == "const" for b in prog.data.buffers)
    rep = cm.simulate()
    assert rep.latency_s > 0
    assert any("INT8" in n for n in rep.notes)
