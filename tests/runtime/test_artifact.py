"""Artifacts (.kcm): save/load round trips, memory-mapped weights, tamper checks, determinism."""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import kcompiler
from kcompiler.errors import ArtifactError, InputError, KCError
from kcompiler.artifact import container as artifact
from kcompiler.zoo import BUNDLED, bundled_path

SLOW = {"vgg19", "zfnet512", "densenet121", "bvlc_alexnet"}


def _same_outputs(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def _round_trip(cm, path):
    cm.save(path)
    lm = kcompiler.load(path)
    feeds = cm.random_inputs()
    _same_outputs(cm.run(feeds), lm.run(feeds))
    assert lm.report.latency_s == cm.report.latency_s
    assert lm.report.energy_j == cm.report.energy_j
    assert [o.name for o in lm.report.ops] == [o.name for o in cm.report.ops]
    assert lm.placement == cm.placement
    assert lm.inputs == cm.inputs and lm.outputs == cm.outputs
    return lm


@pytest.mark.parametrize("target", ["host", "npu"])
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in BUNDLED])
def test_round_trip_bundled(model, target, tmp_path, random_cnn):
    # random weights: with the bundled constant fills, weights read back from the wrong place
    # or in the wrong layout would give the same outputs
    cm = kcompiler.compile(random_cnn(model), target=target)
    lm = _round_trip(cm, tmp_path / f"{model}.kcm")
    assert lm.artifact is not None and lm.artifact.manifest["model"] == model
    if target == "npu":
        # the instruction streams come back bit for bit, not re-generated
        assert [p.to_bytes() for p in lm.programs] == [p.to_bytes() for p in cm.programs]
        assert [p.asm() for p in lm.programs] == [p.asm() for p in cm.programs]


@pytest.fixture(scope="module")
def squeezenet_weights(random_cnn):
    return random_cnn("squeezenet")


def _mapped(arr: np.ndarray) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return False


@pytest.mark.parametrize("target", ["host", "npu", "atom"])
def test_real_weights_are_mapped_not_copied(squeezenet_weights, target, tmp_path):
    cm = kcompiler.compile(squeezenet_weights, target=target)
    path = tmp_path / "sq.kcm"
    lm = _round_trip(cm, path)
    weights = [s for s in lm.artifact.sections if s["name"] == "weights"][0]
    assert weights["offset"] % artifact.WEIGHT_ALIGN == 0
    assert weights["length"] > 4_000_000  # squeezenet's 1.2 M parameters
    inits = [v.const_value for v in lm.model.graph.initializers.values() if v.const_value.nbytes >= 4096]
    assert inits and all(isinstance(t, ir.ExternalTensor) for t in inits)
    for t in inits:
        assert os.path.samefile(t.path, path)
        assert t.offset % artifact.WEIGHT_ALIGN == 0
        assert _mapped(t.numpy())


def test_double_compile_is_byte_identical(squeezenet_weights, tmp_path):
    for target in ("npu", "host"):
        a, b = tmp_path / f"a-{target}.kcm", tmp_path / f"b-{target}.kcm"
        kcompiler.compile(squeezenet_weights, target=target).save(a)
        kcompiler.compile(squeezenet_weights, target=target).save(b)
        assert a.read_bytes() == b.read_bytes()
    a, b = tmp_path / "r1.kcm", tmp_path / "r2.kcm"
    kcompiler.compile("resnet50", target="atom").save(a)
    kcompiler.compile("resnet50", target="atom").save(b)
    assert a.read_bytes() == b.read_bytes()


# ---- tampering -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_artifact(squeezenet_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "sq.kcm"
    kcompiler.compile(squeezenet_weights, target="npu").save(path)
    return path


def _flipped(src, dst, offset: int):
    raw = bytearray(src.read_bytes())
    raw[offset] ^= 0x01
    dst.write_bytes(bytes(raw))
    return dst


def _load_error(path) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        kcompiler.load(path)
    assert isinstance(info.value, KCError)
    assert str(path) in info.value.message
    return info.value


def test_flip_one_byte_in_every_section(good_artifact, tmp_path):
    manifest = artifact.read_manifest(good_artifact)
    size = good_artifact.stat().st_size
    moff = size - len(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    places = {"header:version": 8, "header:reserved": 12, "header:manifest offset": 16, "header:digest": 40,
              "manifest": moff + 10, "manifest end": size - 1}
    for s in manifest["sections"]:
        places[s["name"]] = s["offset"] + s["length"] // 2
        places[s["name"] + " first byte"] = s["offset"]
        places[s["name"] + " last byte"] = s["offset"] + s["length"] - 1
    # padding between two sections is checked to be zero too
    graph = [s for s in manifest["sections"] if s["name"] == "graph"][0]
    nxt = min(s["offset"] for s in manifest["sections"] if s["offset"] > graph["offset"])
    if nxt > graph["offset"] + graph["length"]:
        places["padding"] = graph["offset"] + graph["length"]
    assert {"graph", "program.0", "weights", "manifest"} <= set(places)
    for what, off in places.items():
        err = _load_error(_flipped(good_artifact, tmp_path / f"flip-{what.replace(' ', '_')}.kcm", off))
        assert any(w in err.message for w in ("SHA-256", "corrupt", "padding", "truncated", "newer",
                                              "not a kcompiler")), (what, err.message)
    # the magic
    err = _load_error(_flipped(good_artifact, tmp_path / "flip-magic.kcm", 0))
    assert "not a kcompiler artifact" in err.message


def test_truncated(good_artifact, tmp_path):
    raw = good_artifact.read_bytes()
    for n in (0, 10, 64, 100, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"trunc{n}.kcm"
        p.write_bytes(raw[:n])
        _load_error(p)


def test_newer_format_version(good_artifact, tmp_path):
    raw = bytearray(good_artifact.read_bytes())
    struct.pack_into("<I", raw, 8, artifact.FORMAT_VERSION + 1)
    p = tmp_path / "future.kcm"
    p.write_bytes(bytes(raw))
    err = _load_error(p)
    assert "newer" in err.message and "upgrade kcompiler" in err.hint


def test_not_an_artifact(tmp_path):
    _load_error(tmp_path / "missing.kcm")
    p = tmp_path / "model.kcm"
    p.write_bytes(onnx.load(bundled_path("squeezenet")).SerializeToString())
    _load_error(p)


def test_no_pickle_in_the_format(good_artifact):
    manifest = artifact.read_manifest(good_artifact)
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    assert manifest["compiler_version"] == kcompiler.__version__
    assert {"graph", "program.0", "weights"} <= {s["name"] for s in manifest["sections"]}
    assert b"\x80\x04\x95" not in good_artifact.read_bytes()[:64]  # a pickle protocol 4 header
    assert "pickle" not in open(artifact.__file__).read().replace("No pickle", "").replace("no pickle", "")


# ---- writing is atomic ------------------------------------------------------------------
def test_save_is_atomic(good_artifact, tmp_path, monkeypatch):
    target = tmp_path / "m.kcm"
    target.write_bytes(good_artifact.read_bytes())
    cm = kcompiler.compile("squeezenet", target="npu")
    from kcompiler.backends.npu.backend import NpuBackend

    def broken(self, program, subgraph):
        raise OSError("disk full")

    monkeypatch.setattr(NpuBackend, "save_program", broken)
    with pytest.raises(ArtifactError):
        cm.save(target)
    assert target.read_bytes() == good_artifact.read_bytes()  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["m.kcm"]  # and no temporary file is left
    # the model is unchanged by a failed save: its weights are its own again
    assert all(not isinstance(v.const_value, ir.ExternalTensor) or "@kcm" not in str(v.const_value.location)
               for v in cm.model.graph.initializers.values())
    cm.run(cm.random_inputs())


# ---- modes and systems ----------------------------------------------------------------------
def test_timing_only_artifact(squeezenet_weights, tmp_path):
    cm = kcompiler.compile(squeezenet_weights, target="npu", mode="timing")
    path = tmp_path / "t.kcm"
    cm.save(path)
    # weights above TIMING_MAX_INLINE_BYTES are not carried
    assert path.stat().st_size < 1_000_000
    lm = kcompiler.load(path)
    assert lm.simulate().latency_s == cm.simulate().latency_s
    with pytest.raises(InputError):
        lm.run(lm.random_inputs())


def test_pim_system_round_trip(tmp_path):
    """PIM programs load from their stored command streams (tests/runtime/test_artifact_native.py)."""
    cm = kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16)
    lm = _round_trip(cm, tmp_path / "llama.kcm")
    assert lm.placement == cm.placement
    assert [p.to_bytes() for p in lm.programs] == [p.to_bytes() for p in cm.programs]


def test_system_description_travels_with_the_artifact(good_artifact):
    lm = kcompiler.load(good_artifact)
    fresh = kcompiler.targets.resolve("npu")
    assert [d.name for d in lm.system.devices] == [d.name for d in fresh.devices]
    assert lm.system.devices[1].chip.spec == fresh.devices[1].chip.spec


# ---- command line ---------------------------------------------------------------------------
def _kc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kcompiler", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_compile_run_inspect(tmp_path, squeezenet_weights):
    out = tmp_path / "sq.kcm"
    r = _kc("compile", squeezenet_weights, "--target", "npu", "-o", str(out))
    assert r.returncode == 0, r.stderr
    cm = kcompiler.compile(squeezenet_weights, target="npu")
    feeds = cm.random_inputs(seed=3)
    np.savez(tmp_path / "in.npz", **feeds)
    r = _kc("run", str(out), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz"),
            "--check")
    assert r.returncode == 0, r.stderr
    assert "match" in r.stdout
    with np.load(tmp_path / "out.npz") as got:
        _same_outputs(cm.run(feeds), {k: got[k] for k in got.files})
    r = _kc("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "artifact" in r.stdout and "sha256" in r.stdout.lower()
    bad = tmp_path / "bad.kcm"
    bad.write_bytes(out.read_bytes()[:-5])
    r = _kc("run", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad artifact" in (r.stderr + r.stdout)
