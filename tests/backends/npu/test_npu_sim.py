"""The NPU simulator executes the generated program, and nothing else.

- The replay (the default: a precompiled walk with lazy DMA) and the instruction-by-instruction
  walk give the same bits on every zoo model, and whatever the host thread count.
- A changed field changes the result or raises an ExecutionError naming the instruction, its
  assembly text and its op: addresses, strides, K ranges, accumulate flags, dropped DMAs, the
  weight image, reserved fields.
- MACs and bytes in the report are counted from the executed instructions.
- The simulator runs a program in a process where onnx and onnx_ir cannot be imported.
- A loaded artifact executes the program it carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import helper

from conftest import assert_walk_equals_replay, make_model, npu_sims, ort_run, rand

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.check import compare_with_ort
from kcompiler.errors import ExecutionError
from kcompiler.zoo import BUNDLED


def _net():
    """Conv (padded, strided) -> Relu -> Conv 1x1 + residual Add -> MaxPool -> AveragePool -> Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 0, 2, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["p"], ["g"], kernel_shape=[8, 7]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, {"x": [1, 5, 31, 29]}, {"y": [1, 10]},
                      {"w1": rand(24, 5, 3, 3), "b1": rand(24, seed=2), "w2": rand(24, 24, 1, 1, seed=3),
                       "wf": rand(10, 24, seed=4), "bf": rand(10, seed=5)})


def _compiled(model=None, target="npu"):
    cm = kcompiler.compile(model if model is not None else _net(), target=target, place={"*": "npu"})
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    return cm, prog


# ---- the replay is the walk -----------------------------------------------------------------
ZOO = [(n, {}) for n in BUNDLED] + [("bert-tiny", {}), ("gpt2-tiny", {}), ("llama-tiny", {}),
                                     ("llama-tiny", {"phase": "decode", "kv": 16}),
                                     ("llama-tiny", {"phase": "decode", "kv": 16, "dtype": "fp16"}),
                                     ("bert-tiny", {"dtype": "bf16"})]


@pytest.mark.parametrize("name,opts", ZOO, ids=[n + "".join(f"-{v}" for v in o.values()) for n, o in ZOO])
def test_every_zoo_model_replay_equals_walk(name, opts, random_cnn):
    src = random_cnn(name) if name in BUNDLED else name
    cm = kcompiler.compile(src, target="npu", **opts)
    assert npu_sims(cm)
    feeds = cm.random_inputs(0)
    got = cm.run(feeds, simulate=False)
    assert_walk_equals_replay(cm, feeds, got)
    if "dtype" not in opts:
        c = compare_with_ort(cm, feeds, got, rtol=1e-4, atol=0, atol_scale=1e-5)
        assert c.ok, c.describe()


def test_host_threads_do_not_change_bits(monkeypatch, random_cnn):
    """Every BLAS call runs on one thread; host threads only run the chip's cores side by side."""
    cm = kcompiler.compile(random_cnn("squeezenet"), target="atom")
    feeds = cm.random_inputs(1)
    monkeypatch.setenv("KC_NPU_THREADS", "1")
    one = cm.run(feeds, simulate=False)
    monkeypatch.setenv("KC_NPU_THREADS", "2")
    two = cm.run(feeds, simulate=False)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_cores_run_side_by_side_only_when_independent():
    cm, prog = _compiled(target="atom")
    feeds = cm.random_inputs(0)
    cm.run(feeds, simulate=False)
    segs = prog.sim.replay().segments
    assert any(chains is not None and len(chains) > 1 for _, chains in segs)
    # make one core's store write where another core of the same op loads from: that op must then
    # run in program order (or the checker refuses the program)
    instrs, bufs = prog.data.instrs, prog.data.buffers
    pair = next((i, j) for i, s in enumerate(instrs) if s.opcode == isa.STORE
                for j, ld in enumerate(instrs) if ld.opcode == isa.LOAD and ld.op == s.op and ld.core != s.core
                and bufs[ld.arg("buf")].role == "temp")
    i, j = pair
    instrs[i] = instrs[i].replace(buf=instrs[j].arg("buf"), off=instrs[j].arg("off"))
    prog.invalidate()
    try:
        cm.run(feeds, simulate=False)
    except ExecutionError:
        return
    for steps, chains in prog.sim.replay().segments:
        if any(idx == i for idx, _ in steps):
            assert chains is None


# ---- a changed field changes the result or raises ---------------------------------------------
def _first(prog, opcode, pred=lambda ins: True):
    return next(i for i, ins in enumerate(prog.data.instrs) if ins.opcode == opcode and pred(ins))


def _run_changed(cm, prog, i, **fields):
    feeds = cm.random_inputs(0)
    before = cm.run(feeds, simulate=False)
    prog.data.instrs[i] = prog.data.instrs[i].replace(**fields)
    prog.invalidate()
    return before, feeds


def _raises_naming(cm, prog, i, feeds, what):
    text = prog.data.instrs[i].text()
    with pytest.raises(ExecutionError) as info:
        cm.run(feeds, simulate=False)
    msg = str(info.value)
    assert f"instruction {i} " in msg and text in msg, msg
    name, op_type = prog.data.ops[prog.data.instrs[i].op]
    assert name in msg and op_type in msg and what in msg, msg


def test_load_past_its_buffer_is_an_error():
    cm, prog = _compiled()
    i = _first(prog, isa.LOAD)
    size = prog.data.buffers[prog.data.instrs[i].arg("buf")].nbytes
    _, feeds = _run_changed(cm, prog, i, off=size)
    _raises_naming(cm, prog, i, feeds, "outside its buffer")


def test_reading_what_nothing_wrote_is_an_error():
    """Drop an op's first STORE: the next op's load reads bytes no instruction wrote."""
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    cm.run(feeds, simulate=False)
    instrs = prog.data.instrs
    s = _first(prog, isa.STORE)
    out_buf = instrs[s].arg("buf")
    del instrs[s]
    prog.invalidate()
    with pytest.raises(ExecutionError, match="which nothing wrote before it|not \\(entirely\\) written"):
        cm.run(feeds, simulate=False)
    assert any(x.opcode == isa.LOAD and x.arg("buf") == out_buf for x in instrs)


def test_dropped_load_reads_an_empty_scratchpad():
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    cm.run(feeds, simulate=False)
    i = _first(prog, isa.LOAD)
    del prog.data.instrs[i]
    prog.invalidate()
    with pytest.raises(ExecutionError, match="scratchpad byte .* which nothing wrote"):
        cm.run(feeds, simulate=False)


def test_store_over_a_weight_is_an_error():
    cm, prog = _compiled()
    weight = next(k for k, b in enumerate(prog.data.buffers) if b.role == "const")
    i = _first(prog, isa.STORE)
    _, feeds = _run_changed(cm, prog, i, buf=weight, off=0)
    text = prog.data.instrs[i].text()
    with pytest.raises(ExecutionError) as info:
        cm.run(feeds, simulate=False)
    assert f"instruction {i} " in str(info.value) and text in str(info.value)
    assert "writes over a weight" in str(info.value) or "outside its buffer" in str(info.value)


def test_reserved_fields_must_be_zero():
    cm, prog = _compiled()
    i = _first(prog, isa.VECTOR, lambda ins: isa.VFN_NAMES[ins.aux] == "relu")
    _, feeds = _run_changed(cm, prog, i, imm0=isa.f32_bits(0.5))
    _raises_naming(cm, prog, i, feeds, "takes no imm0")


def test_window_matmul_needs_its_config():
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    cm.run(feeds, simulate=False)
    c = _first(prog, isa.CONFIG)
    del prog.data.instrs[c]
    prog.invalidate()
    with pytest.raises(ExecutionError, match="before any CONFIG"):
        cm.run(feeds, simulate=False)


@pytest.mark.parametrize("field,change", [
    ("k", lambda v: v - 1),  # a K range one short
    ("acc", lambda v: v + 4),  # the accumulator one element on
    ("b", lambda v: v + 4),  # B read one element on
    ("b_sk", lambda v: v + 1),  # a B stride
])
def test_matmul_fields_change_the_result(field, change):
    m = make_model([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": [48, 300]}, {"y": [48, 130]},
                   {"w": rand(300, 130)})
    cm, prog = _compiled(m)
    i = _first(prog, isa.MATMUL)
    before, feeds = _run_changed(cm, prog, i, **{field: change(prog.data.instrs[i].arg(field))})
    try:
        after = cm.run(feeds, simulate=False)
    except ExecutionError:
        return
    assert not np.array_equal(before["y"], after["y"])


def test_k_tiles_accumulate():
    """A GEMM whose K is split into tiles: clearing an accumulate flag drops the earlier tiles."""
    m = make_model([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": [64, 4096]}, {"y": [64, 96]},
                   {"w": rand(4096, 96)})
    cm, prog = _compiled(m, target="atom")
    feeds = cm.random_inputs(0)
    want = ort_run(m, feeds)["y"]
    got = cm.run(feeds, simulate=False)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    acc = [i for i, x in enumerate(prog.data.instrs) if x.opcode == isa.MATMUL and x.aux & isa.ACCUMULATE]
    assert acc, "this GEMM was expected to be split along K"
    i = acc[0]
    prog.data.instrs[i] = prog.data.instrs[i].replace(aux=prog.data.instrs[i].aux & ~isa.ACCUMULATE)
    prog.invalidate()
    assert not np.allclose(cm.run(feeds, simulate=False)["y"], want, rtol=1e-3, atol=1e-3)


def test_a_flipped_weight_byte_changes_the_result():
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    before = cm.run(feeds, simulate=False)["y"]
    buf, off, data = prog.data.init[0]
    flipped = np.array(data, np.uint8)
    flipped[len(flipped) // 2 + 3] ^= 0x40  # an exponent bit of a float32 weight
    prog.data.init[0] = (buf, off, flipped)
    prog.invalidate()
    assert not np.array_equal(cm.run(feeds, simulate=False)["y"], before)


def test_gather_index_out_of_range_is_an_error():
    m = make_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)], {"ids": [3]}, {"y": [3, 8]},
                   {"table": rand(10, 8)})
    m.graph.input[0].type.tensor_type.elem_type = 7  # int64 indices
    cm, prog = _compiled(m)
    ids = np.array([1, 9, 2], np.int64)
    np.testing.assert_array_equal(cm.run({"ids": ids}, simulate=False)["y"], rand(10, 8)[ids])
    with pytest.raises(ExecutionError, match="index 12 is outside the 10 rows"):
        cm.run({"ids": np.array([0, 12, 1], np.int64)}, simulate=False)


# ---- counted from the instructions -------------------------------------------------------------
def test_macs_and_bytes_come_from_the_instructions():
    cm, prog = _compiled()
    rep = cm.simulate()
    mm = [x for x in prog.data.instrs if x.opcode == isa.MATMUL]
    assert rep.macs == sum(x.arg("m") * x.arg("n") * x.arg("k") * x.arg("g") for x in mm)
    # zero-sized MATMULs do no work, whatever the node they came from
    for k, x in enumerate(prog.data.instrs):
        if x.opcode == isa.MATMUL:
            prog.data.instrs[k] = x.replace(m=0)
    prog.invalidate()
    assert cm.simulate().macs == 0
    # DMA bytes are elements times their dtype's size
    ld = next(x for x in prog.data.instrs if x.opcode == isa.LOAD)
    (op,) = [o for o in cm.simulate().ops if o.name == prog.data.ops[ld.op][0]]
    assert op.dram_bytes == sum(
        x.arg("n0") * x.arg("n1") * x.arg("n2") * x.arg("n3") * isa.ESIZES[x.aux]
        for x in prog.data.instrs if x.opcode in (isa.LOAD, isa.STORE) and x.op == ld.op)


# ---- no model in the simulator -----------------------------------------------------------------
def test_a_program_runs_where_onnx_cannot_be_imported(tmp_path):
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    want = cm.run(feeds, simulate=False)["y"]

    class Sink:  # the artifact writer's interface: bytes in, offsets out
        def __init__(self):
            self.chunks = []

        def add(self, raw):
            self.chunks.append(raw)
            return sum(len(c) for c in self.chunks[:-1])

    sink = Sink()
    blob, meta = prog.save(sink)
    (tmp_path / "prog.bin").write_bytes(blob)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "weights.bin").write_bytes(b"".join(sink.chunks))
    np.save(tmp_path / "x.npy", feeds["x"])
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.modules["onnx"] = None  # an import of either now fails
        sys.modules["onnx_ir"] = None
        sys.modules["onnxruntime"] = None
        from kcompiler.backends.npu.program import NpuProgram
        from kcompiler.backends.npu.spec import NpuSpec
        from kcompiler.targets import schema

        class Weights:
            def map(self, off, n):
                return np.fromfile({str(tmp_path / "weights.bin")!r}, np.uint8)[off:off + n]

        spec = schema.from_table(NpuSpec, json.loads(sys.argv[1]), "test", "npu")
        meta = json.load(open({str(tmp_path / "meta.json")!r}))
        prog = NpuProgram.load("npu", spec, open({str(tmp_path / "prog.bin")!r}, "rb").read(), meta, Weights(), True)
        y = prog.run({{"x": np.load({str(tmp_path / "x.npy")!r})}})["y"]
        np.save({str(tmp_path / "y.npy")!r}, y)
        assert not any(m in sys.modules and sys.modules[m] is not None for m in ("onnx", "onnx_ir"))
        """)
    from kcompiler.targets import schema

    spec_json = json.dumps(schema.to_table(prog.spec))
    r = subprocess.run([sys.executable, "-c", script, spec_json], capture_output=True, text=True,
                       env={**os.environ, "KC_NPU_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


# ---- artifacts carry the program they run --------------------------------------------------------
def _resign(path):
    """Recompute every section's SHA-256 and the manifest's, as someone editing the file would."""
    from kcompiler.artifact import container as art

    raw = bytearray(path.read_bytes())
    magic, version, reserved, moff, mlen, mhash = art.HEADER.unpack_from(raw)
    manifest = json.loads(bytes(raw[moff:moff + mlen]))
    for s in manifest["sections"]:
        s["sha256"] = hashlib.sha256(bytes(raw[s["offset"]:s["offset"] + s["length"]])).hexdigest()
    mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    out = raw[:moff] + mbytes
    out[:art.HEADER.size] = art.HEADER.pack(magic, version, reserved, moff, len(mbytes),
                                            hashlib.sha256(mbytes).digest())
    path.write_bytes(bytes(out))


def test_a_loaded_artifact_executes_the_program_it_carries(tmp_path):
    cm, prog = _compiled()
    feeds = cm.random_inputs(0)
    want = cm.run(feeds, simulate=False)["y"]
    path = tmp_path / "net.kcm"
    cm.save(path)
    np.testing.assert_array_equal(kcompiler.load(path).run(feeds, simulate=False)["y"], want)
    # change the K of the first MATMUL inside the stored program, re-sign the file
    from kcompiler.artifact import container as art

    raw = path.read_bytes()
    _, _, _, moff, mlen, _ = art.HEADER.unpack_from(raw)
    manifest = json.loads(raw[moff:moff + mlen])
    sec = next(s for s in manifest["sections"] if s["name"] == "program.0")
    i = _first(prog, isa.MATMUL)
    at = sec["offset"] + 12 + i * isa.ENCODING.size
    ins = isa.Instr.decode(raw[at:at + isa.ENCODING.size])
    changed = ins.replace(k=ins.arg("k") - 1).encode()
    path.write_bytes(raw[:at] + changed + raw[at + len(changed):])
    _resign(path)
    loaded = kcompiler.load(path)
    try:
        got = loaded.run(feeds, simulate=False)["y"]
    except ExecutionError:
        return
    assert not np.array_equal(got, want)


def test_encoding_round_trips_and_rejects_garbage():
    from kcompiler.errors import ArtifactError

    cm, prog = _compiled()
    raw = prog.to_bytes()
    assert isa.decode_program(raw) == prog.data.instrs
    assert isa.assemble(prog.asm()) == prog.data.instrs  # the header lines are comments
    assert len(raw) == 12 + isa.ENCODING.size * len(prog.data.instrs)
    with pytest.raises(ArtifactError):
        isa.decode_program(b"nonsense")
    bad = bytearray(raw)
    bad[12] = 200  # an opcode that does not exist
    with pytest.raises(ArtifactError, match="unknown opcode"):
        isa.decode_program(bytes(bad))
    bad = bytearray(raw)
    n = len(isa.names_of(prog.data.instrs[-1].opcode))
    if n < isa.NFIELDS:  # a field past the opcode's last one must be zero
        struct.pack_into("<I", bad, 12 + (len(prog.data.instrs) - 1) * isa.ENCODING.size + 10 + 4 * n, 7)
        with pytest.raises(ArtifactError, match="non-zero unused fields"):
            isa.decode_program(bytes(bad))
