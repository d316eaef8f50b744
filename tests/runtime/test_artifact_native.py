"""Artifacts of PIM systems and parallel plans: loaded natively (no lowering again), with the
device-resident KV-cache state and the parallel plan summary restored, and the original model
carried for `kc run --check`."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.backends.pim.backend import PimBackend, PimProgram
from kcompiler.errors import ArtifactError
from kcompiler.artifact import container as artifact, writer as artifact_writer
from kcompiler.driver import loading as artifact_reader

PIM_MODELS = {
    "llama-decode": ("llama-tiny", {"phase": "decode", "kv": 16}),
    "llama-prefill": ("llama-tiny", {"phase": "prefill"}),
    "gpt2-decode": ("gpt2-tiny", {"phase": "decode", "kv": 16}),
    "squeezenet": ("squeezenet", {}),  # with random weights (the random_cnn fixture)
}


def _no_lowering(monkeypatch, *classes):
    def refuse(self, *a, **k):
        raise AssertionError(f"{type(self).__name__}.lower called while loading an artifact")

    for cls in classes:
        monkeypatch.setattr(cls, "lower", refuse)


def _same_report(a, b):
    assert a.latency_s == b.latency_s and a.energy_j == b.energy_j and a.cycles == b.cycles
    assert [(o.name, o.device, o.start_s, o.end_s, o.cycles, o.macs, o.dram_bytes) for o in a.ops] == \
           [(o.name, o.device, o.start_s, o.end_s, o.cycles, o.macs, o.dram_bytes) for o in b.ops]
    assert a.devices == b.devices


def _round_trip(cm, path, monkeypatch, *no_lower):
    cm.save(path)
    with monkeypatch.context() as m:
        _no_lowering(m, *no_lower)
        lm = kcompiler.load(path)
    feeds = cm.random_inputs()
    a, b = cm.run(feeds), lm.run(feeds)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    _same_report(cm.report, lm.report)
    assert lm.placement == cm.placement
    return lm


@pytest.mark.parametrize("target", ["aim", "hbm-pim", "atom+aim"])
@pytest.mark.parametrize("case", list(PIM_MODELS))
def test_pim_round_trip_without_lowering(case, target, tmp_path, monkeypatch, random_cnn):
    model, opts = PIM_MODELS[case]
    if case == "squeezenet":
        model = random_cnn(model)
    cm = kcompiler.compile(model, target=target, **opts)
    pim = [p for p in cm.programs if isinstance(p, PimProgram)]
    if (case, target) != ("squeezenet", "atom+aim"):  # (there the NPU runs every convolution and ReLU)
        assert pim, f"{case} put nothing on the PIM of {target}"
    lm = _round_trip(cm, tmp_path / f"{case}-{target}.kcm", monkeypatch, PimBackend)
    # the command streams come back bit for bit, and their simulated time with them
    assert [p.to_bytes() for p in lm.programs] == [p.to_bytes() for p in cm.programs]
    assert [p.asm() for p in lm.programs] == [p.asm() for p in cm.programs]
    for p, q in zip(cm.programs, lm.programs):
        if isinstance(p, PimProgram):
            assert [(n.name, k.rows_used, k.counts(p.spec), k.time(p.spec)) for n, k in p.steps] == \
                   [(n.name, k.rows_used, k.counts(q.spec), k.time(q.spec)) for n, k in q.steps]
            # the bank image comes back from the weight section bit for bit
            assert np.array_equal(p.image, q.image) and np.array_equal(p.code.image_valid, q.code.image_valid)


def test_pim_weights_come_from_the_mapped_section(tmp_path, monkeypatch):
    """Loading rebuilds each PIM program from the artifact alone: its bank image comes from the weight
    section (no graph tensor is read while loading), and runs to the same outputs."""
    from kcompiler import opinfo

    cm = kcompiler.compile("llama-tiny", target="aim", phase="decode", kv=16, weights="random")
    path = tmp_path / "w.kcm"
    cm.save(path)
    real = opinfo.const_value

    def guarded(v):
        import traceback

        if any("backends/pim" in f.filename for f in traceback.extract_stack()[:-1]):
            raise AssertionError("the PIM loader read a graph value")
        return real(v)

    with monkeypatch.context() as m:
        m.setattr(opinfo, "const_value", guarded)
        lm = kcompiler.load(path)
    pim = [p for p in lm.programs if isinstance(p, PimProgram)]
    assert pim and all(p.image is not None for p in pim) and any(p.image.any() for p in pim)
    feeds = cm.random_inputs()
    a, b = cm.run(feeds), lm.run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_pim_timing_only_artifact(tmp_path, monkeypatch):
    cm = kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16, mode="timing")
    cm.save(tmp_path / "t.kcm")
    with monkeypatch.context() as m:
        _no_lowering(m, PimBackend)
        lm = kcompiler.load(tmp_path / "t.kcm")
    _same_report(cm.simulate(), lm.simulate())


def test_pim_program_tampered_table(tmp_path):
    """A step table or command blob that does not fit is an ArtifactError, not a crash."""
    cm = kcompiler.compile("llama-tiny", target="aim", phase="decode", kv=16)
    cm.save(tmp_path / "m.kcm")
    lm = kcompiler.load(tmp_path / "m.kcm")
    i = next(i for i, p in enumerate(lm.programs) if isinstance(p, PimProgram) and p.to_bytes())
    backend = lm.backends[lm.parts[i].device]
    meta = lm.artifact.manifest["parts"][i]["meta"]
    blob = lm.programs[i].to_bytes()
    wsec = next(x for x in lm.artifact.sections if x["name"] == "weights")
    weights = artifact.ArtifactWeights(lm.artifact.path, int(wsec["offset"]), int(wsec["length"]))
    with pytest.raises(ArtifactError):
        backend.load_program(lm.parts[i], blob[:-1], meta, weights)
    with pytest.raises(ArtifactError):
        backend.load_program(lm.parts[i], blob, dict(meta, ops=meta["ops"][:-1]), weights)
    with pytest.raises(ArtifactError):
        backend.load_program(lm.parts[i], blob, dict(meta, encoding=99), weights)
    with pytest.raises(ArtifactError):
        backend.load_program(lm.parts[i], blob, dict(meta, image=[[10 ** 6, 0, 0]]), weights)
    garbled = bytearray(blob)
    garbled[0] = 0xEE  # no such opcode
    with pytest.raises(ArtifactError):
        backend.load_program(lm.parts[i], bytes(garbled), meta, weights)


# ---- device-resident state ------------------------------------------------------------------
def test_state_tags_survive_and_the_cache_stays_resident(tmp_path, monkeypatch):
    from kcompiler.frontend import state

    cm = kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16)
    cm.simulate()
    lm = _round_trip(cm, tmp_path / "dec.kcm", monkeypatch, PimBackend)
    assert state.pairs(lm.model) == state.pairs(cm.model) and state.pairs(cm.model)[0]
    tags = lambda m: {v.name: v.metadata_props.get(state.STATE_KEY)  # noqa: E731
                      for v in list(m.graph.inputs) + list(m.graph.outputs)}
    assert tags(lm.model) == tags(cm.model)
    assert lm.artifact.manifest["state"] == state.pairs(cm.model)[1]
    # the PIM's in-place KV append is still claimed, and the cache is not moved: same latency as
    # before saving, lower than without resident state
    appends = lambda m: sum(1 for p in m.programs if isinstance(p, PimProgram)  # noqa: E731
                            for n, _ in p.steps if n.op_type == "Concat")
    assert appends(lm) == appends(cm) > 0
    assert lm.simulate().latency_s == cm.simulate().latency_s
    moved = kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16, state=False)
    assert moved.simulate().latency_s > lm.report.latency_s
    assert any("device-resident state" in n for n in lm.report.notes)


def test_state_comes_from_the_manifest(tmp_path):
    """The manifest's state table is authoritative: tags are put back even if the stored graph lost them."""
    cm = kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16)
    path = tmp_path / "s.kcm"
    cm.save(path)
    manifest = artifact.read_manifest(path)
    import onnx_ir as ir

    x, y = ir.Value(name="x"), ir.Value(name="y")
    model = ir.Model(ir.Graph([x], [y], nodes=[]), ir_version=10)
    with pytest.raises(ArtifactError):
        artifact_reader._restore_state(model, manifest["state"], path)  # names values this graph lacks
    artifact_reader._restore_state(model, {"y": "x"}, path)
    assert x.metadata_props["kcompiler.state"] == "y" and y.metadata_props["kcompiler.state"] == "x"
    lm = kcompiler.load(path)
    assert {v.name: v.metadata_props.get("kcompiler.state") for v in lm.model.graph.inputs
            if "kcompiler.state" in v.metadata_props} == {i: o for o, i in manifest["state"].items() if i}


# ---- parallel plans -------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["bert-tiny tensor", "resnet50 data", "bert-tiny pipeline"])
def test_parallel_round_trip(case, tmp_path, monkeypatch, random_cnn):
    from kcompiler.backends.npu.backend import NpuBackend
    from kcompiler.backends.comm.collectives import CommProgram

    if case.startswith("bert-tiny"):
        cm = kcompiler.compile("bert-tiny", target="atom", devices=2, parallel=case.split()[1])
    else:
        cm = kcompiler.compile(random_cnn("resnet50", batch=2), target="atom", devices=2, parallel="data")
    assert any(isinstance(p, CommProgram) for p in cm.programs)
    lm = _round_trip(cm, tmp_path / "par.kcm", monkeypatch, NpuBackend, PimBackend)
    assert [type(p).__name__ for p in lm.programs] == [type(p).__name__ for p in cm.programs]
    assert [p.asm() for p in lm.programs] == [p.asm() for p in cm.programs]
    assert lm.parallel is not None and lm.parallel.summary() == cm.parallel.summary()
    assert lm.report.parallel == cm.report.parallel and lm.report.parallel
    assert lm.report.interval_s == cm.report.interval_s
    assert lm.report.throughput_per_s == cm.report.throughput_per_s
    assert [(t.src, t.dst, t.nbytes, t.start_s, t.end_s) for t in lm.report.transfers] == \
           [(t.src, t.dst, t.nbytes, t.start_s, t.end_s) for t in cm.report.transfers]
    assert lm.system.interconnect == cm.system.interconnect


def test_parallel_double_compile_is_byte_identical(tmp_path):
    a, b = tmp_path / "a.kcm", tmp_path / "b.kcm"
    kcompiler.compile("bert-tiny", target="atom", devices=2, parallel="tensor").save(a)
    kcompiler.compile("bert-tiny", target="atom", devices=2, parallel="tensor").save(b)
    assert a.read_bytes() == b.read_bytes()
    a, b = tmp_path / "c.kcm", tmp_path / "d.kcm"
    kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16).save(a)
    kcompiler.compile("llama-tiny", target="atom+aim", phase="decode", kv=16).save(b)
    assert a.read_bytes() == b.read_bytes()


# ---- the original model, for --check ------------------------------------------------------------
def test_original_model_travels_for_check(tmp_path):
    from kcompiler.check import compare_with_ort, reference_description, reference_outputs

    cm = kcompiler.compile("bert-tiny", target="atom")
    with_src = tmp_path / "src.kcm"
    cm.save(with_src)
    old = (artifact_writer.SOURCE_MAX_EXTRA, artifact_writer.SOURCE_MIN_EXTRA)
    try:
        artifact_writer.SOURCE_MAX_EXTRA, artifact_writer.SOURCE_MIN_EXTRA = -1, -1
        bare = tmp_path / "bare.kcm"
        cm.save(bare)
    finally:
        artifact_writer.SOURCE_MAX_EXTRA, artifact_writer.SOURCE_MIN_EXTRA = old
    # the original's weights are the compiled graph's where they are equal: a small cost
    extra = with_src.stat().st_size - bare.stat().st_size
    assert 0 < extra < 0.05 * bare.stat().st_size, extra
    lm = kcompiler.load(with_src)
    assert lm.artifact.manifest["source"]["section"] == "source"
    assert lm.original is not None and "original model" in reference_description(lm)
    # ONNX Runtime on the original (its node names, not the fused graph's)
    assert {n.name for n in lm.original.graph.node} == {n.name for n in cm.original.graph.node}
    feeds = cm.random_inputs()
    ref_c, ref_l = reference_outputs(cm, feeds), reference_outputs(lm, feeds)
    for k in ref_c:
        assert np.array_equal(ref_c[k], ref_l[k])
    assert compare_with_ort(lm, feeds, lm.run(feeds), rtol=1e-2, atol=1e-3).ok
    lb = kcompiler.load(bare)
    assert lb.original is None and lb.artifact.manifest["source"]["section"] is None
    assert "compiled graph" in reference_description(lb)


def test_cli_check_says_what_it_compares_against(tmp_path, random_cnn):
    import subprocess
    import sys

    out = tmp_path / "sq.kcm"
    r = subprocess.run([sys.executable, "-m", "kcompiler", "compile", random_cnn("squeezenet"), "--target", "aim",
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "kcompiler", "run", str(out), "--check", "--rtol", "0.05",
                        "--atol", "0.01"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "on the original model (stored in the artifact)" in r.stdout


def test_original_too_big_to_carry_is_referenced(tmp_path, monkeypatch, random_cnn):
    """When the original's weights would not be shared (e.g. folded), the artifact refers to the
    file it was compiled from (path + SHA-256); --check uses it while it is unchanged. (Random
    weights: with the bundled constant fills, ONNX Runtime on any other graph, such as the
    compiled one, would give the same reference outputs.)"""
    import shutil

    from kcompiler.check import reference_description, reference_outputs

    given = random_cnn("squeezenet")
    src = tmp_path / "squeezenet.onnx"
    shutil.copy(given, src)
    shutil.copy(given + ".data", tmp_path / "squeezenet.onnx.data")
    cm = kcompiler.compile(str(src), target="aim")
    with monkeypatch.context() as m:
        m.setattr(artifact_writer, "_source_bytes", lambda cm, weights: None)  # as if its weights were too big
        cm.save(tmp_path / "ref.kcm")
    lm = kcompiler.load(tmp_path / "ref.kcm")
    assert lm.original is None and lm.artifact.manifest["source"]["path"] == str(src.resolve())
    assert "referenced by the artifact" in reference_description(lm)
    feeds = cm.random_inputs()
    ref_c, ref_l = reference_outputs(cm, feeds), reference_outputs(lm, feeds)
    assert all(np.array_equal(ref_c[k], ref_l[k]) for k in ref_c)
    src.write_bytes(src.read_bytes() + b"\0")  # changed since: not trusted any more
    assert "compiled graph" in reference_description(lm)


# ---- a saved PIM program is what runs ---------------------------------------------------------
def _resign(path, section: str, mutate) -> None:
    """Rewrite bytes of one section of a .kcm in place (mutate(bytearray) -> None) and fix its SHA-256
    in the manifest and the manifest's hash in the header, as a deliberate editor would."""
    import hashlib
    import json

    raw = bytearray(path.read_bytes())
    magic, version, reserved, moff, mlen, _h = artifact.HEADER.unpack_from(raw)
    manifest = json.loads(bytes(raw[moff:moff + mlen]))
    entry = next(s for s in manifest["sections"] if s["name"] == section)
    body = bytearray(raw[entry["offset"]:entry["offset"] + entry["length"]])
    mutate(body)
    assert len(body) == entry["length"]
    raw[entry["offset"]:entry["offset"] + entry["length"]] = body
    entry["sha256"] = hashlib.sha256(body).hexdigest()
    for key in ("weights_sha256",):  # (kept in step with any copy the manifest holds)
        if key in manifest:
            manifest[key] = entry["sha256"]
    mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()
    assert len(mbytes) == mlen  # hex digests keep their length
    raw[moff:moff + mlen] = mbytes
    artifact.HEADER.pack_into(raw, 0, magic, version, reserved, moff, mlen, hashlib.sha256(mbytes).digest())
    path.write_bytes(bytes(raw))


def _pim_gemv_artifact(tmp_path, target, monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    from kcompiler.backends.base import Cost
    from kcompiler.backends.host import HostBackend

    # a host that looks slow, so that this small product goes to the PIM device on every target
    monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 96)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 96])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    cm = kcompiler.compile(m, target=target)
    assert isinstance(cm.programs[0], PimProgram)
    path = tmp_path / f"g-{target}.kcm"
    cm.save(path)
    x = {"x": rng.standard_normal((2, 256)).astype(np.float32)}
    return cm, path, x


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_resigned_command_mutation_changes_the_outputs(target, tmp_path, monkeypatch):
    """Pointing channel 0's buffer load for the second input vector at the first vector's staging
    address, inside the saved program section (hashes fixed up), makes the loaded model compute the
    first row's products into the second row: the artifact's commands are what runs."""
    from kcompiler.backends.pim.isa import ENCODED_SIZE, Command

    cm, path, x = _pim_gemv_artifact(tmp_path, target, monkeypatch)
    want = kcompiler.load(path).run(x)["y"]
    assert np.array_equal(want, cm.run(x)["y"])
    loads = [(i, c) for i, c in enumerate(cm.programs[0].commands) if c.op == "WR_GB" and c.channel == 0]
    first = loads[0][1].addr
    i = next(i for i, c in loads if c.addr != first)

    def reload_first_vector(body):
        c = Command.decode(bytes(body[i * ENCODED_SIZE:(i + 1) * ENCODED_SIZE]))
        body[i * ENCODED_SIZE:(i + 1) * ENCODED_SIZE] = _replace(c, addr=first).encode()

    _resign(path, "program.0", reload_first_vector)
    got = kcompiler.load(path).run(x)["y"]
    assert np.array_equal(got[0], want[0]) and not np.array_equal(got[1], want[1])


def _replace(c, **kw):
    import dataclasses

    return dataclasses.replace(c, **kw)


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_resigned_image_mutation_changes_the_outputs(target, tmp_path, monkeypatch):
    """Flipping one byte of the stored bank image (hashes fixed up) changes the loaded model's outputs:
    the weights that run are the image's, not the graph's."""
    cm, path, x = _pim_gemv_artifact(tmp_path, target, monkeypatch)
    want = cm.run(x)["y"]
    meta = kcompiler.load(path).artifact.manifest["parts"][0]["meta"]
    row, off, _voff = meta["image"][0]

    def flip(body):
        body[off + 1] ^= 0x40  # the exponent byte of the first element of channel 0, bank 0

    _resign(path, "weights", flip)
    got = kcompiler.load(path).run(x)["y"]
    assert not np.array_equal(got, want)
    # and the graph's copy of the weight was not touched: only the image's bytes changed
    assert np.array_equal(kcompiler.load(path).run(x)["y"], got)


def test_pim_image_rows_are_stored_once(tmp_path, monkeypatch):
    """Two products of one weight lay out identical bank rows: the weight section holds those bytes
    once (the writer deduplicates by content), and rows holding no data are not stored."""
    from onnx import TensorProto, helper, numpy_helper

    from kcompiler.backends.base import Cost
    from kcompiler.backends.host import HostBackend

    monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))
    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 512])  # noqa: E731
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y1"]), helper.make_node("MatMul", ["y1", "w"], ["y2"])],
                          "g", [vi("x")], [vi("y2")], [numpy_helper.from_array(w, "w")])
    cm = kcompiler.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), target="aim")
    p = cm.programs[0]
    assert isinstance(p, PimProgram) and p.code.rows == 2  # one row per bank for each product
    assert np.array_equal(p.image[:, :, 0], p.image[:, :, 1])
    path = tmp_path / "twice.kcm"
    cm.save(path)
    lm = kcompiler.load(path)
    meta = lm.artifact.manifest["parts"][0]["meta"]
    assert [r for r, _o, _v in meta["image"]] == [0, 1] and meta["image"][0][1:] == meta["image"][1][1:]
    wsec = next(s for s in lm.artifact.sections if s["name"] == "weights")
    row_bytes = p.image[:, :, 0].nbytes
    assert wsec["length"] < w.nbytes + 2 * row_bytes  # the fp32 tensor plus one image row, not two
    x = {"x": np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)}
    assert np.array_equal(lm.run(x)["y2"], cm.run(x)["y2"])
