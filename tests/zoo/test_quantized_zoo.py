"""The zoo's quantised transformers: the same op patterns, dtypes, axes and packing as ONNX Runtime's
own quantisers write for the float twin, ONNX Runtime and the host target run them, int8/int4 keep
bert-tiny's argmax, and llama-7b-shaped decoders build in timing mode without weights in memory."""

from __future__ import annotations

import os
import tracemalloc
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import kcompiler
from kcompiler import zoo
from kcompiler.errors import KCError
from kcompiler.zoo import quant, transformers as T


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path / "cache"))


def _session(proto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ids(batch, seq, seed, vocab=30522):
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int64)


def _signatures(m: onnx.ModelProto) -> Counter:
    """For each weight GEMM (a MatMul whose B is a DequantizeLinear of an initializer): how its
    inputs and output are quantised, by op, dtype, shape rank and axis — everything but names."""
    inits = {t.name: t for t in m.graph.initializer}
    made = {o: n for n in m.graph.node for o in n.output}
    users = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    axis = lambda n: next((a.i for a in n.attribute if a.name == "axis"), None)  # noqa: E731
    sigs = Counter()
    for n in m.graph.node:
        w = made.get(n.input[1]) if n.op_type == "MatMul" else None
        if w is None or w.op_type != "DequantizeLinear" or w.input[0] not in inits:
            continue
        x = made[n.input[0]]
        q = made[x.input[0]]
        wq, ws, wz = (inits[k] for k in w.input)
        out = users[n.output[0]]
        sigs[(x.op_type, q.op_type, inits[q.input[2]].data_type, len(inits[q.input[1]].dims),
              wq.data_type, axis(w), len(ws.dims), wz.data_type, tuple(wz.dims) == (wq.dims[1],),
              tuple(o.op_type for o in out), tuple(u.op_type for u in users[out[0].output[0]]))] += 1
    return sigs


def _ort_qdq(float_model: onnx.ModelProto, tmp_path, fp8: bool) -> onnx.ModelProto:
    """ORT's quantize_static of the float twin: QDQ, per channel, weight MatMuls only (the
    attention products on activations excluded, as the zoo leaves them float)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    inits = {t.name for t in float_model.graph.initializer}
    act_mm = [n.name for n in float_model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(float_model, src)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input_ids": _ids(1, 16, s)} for s in range(2)])

        def get_next(self):
            return next(self.it, None)

    kind = QuantType.QFLOAT8E4M3FN if fp8 else None
    extra = {"calibrate_method": CalibrationMethod.Distribution} if fp8 else {}
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=kind or QuantType.QUInt8, weight_type=kind or QuantType.QInt8,
                    op_types_to_quantize=["MatMul"], nodes_to_exclude=act_mm, **extra)
    return onnx.load(dst)


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_qdq_form_is_what_onnxruntime_writes(dtype, tmp_path):
    ours = T.build("bert-tiny", dtype=dtype, layers=1)
    onnx.checker.check_model(ours, full_check=True)
    theirs = _ort_qdq(T.build("bert-tiny", layers=1), tmp_path, fp8=dtype == "fp8")
    mine = _signatures(ours)
    assert sum(mine.values()) == 7  # q, k, v, attention output, intermediate, output, pooler
    assert mine == _signatures(theirs)
    want = TensorProto.FLOAT8E4M3FN if dtype == "fp8" else TensorProto.INT8
    assert {sig[4] for sig in mine} == {want}
    assert {sig[2] for sig in mine} == {TensorProto.FLOAT8E4M3FN if dtype == "fp8" else TensorProto.UINT8}
    # the attention products, LayerNorm and Softmax stay float32
    inits = {t.name for t in ours.graph.initializer}
    made = {o: n.op_type for n in ours.graph.node for o in n.output}
    act = [n for n in ours.graph.node if n.op_type == "MatMul" and made.get(n.input[1]) != "DequantizeLinear"]
    assert len(act) == 2 and all(i not in inits and made.get(i) != "DequantizeLinear" for n in act for i in n.input)
    assert "synthetic" not in ours.doc_string and "calibrated" in ours.doc_string


def test_int4_is_what_matmul_nbits_quantizer_writes():
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ours = T.build("llama-tiny", dtype="int4", act_dtype="fp32")
    q = MatMulNBitsQuantizer(T.build("llama-tiny"), block_size=32, is_symmetric=True)
    q.process()
    theirs = q.model.model
    pick = lambda m: {n.input[1]: n for n in m.graph.node if n.op_type == "MatMulNBits"}  # noqa: E731
    a, b = pick(ours), pick(theirs)
    assert len(a) == 15  # 7 per layer and the LM head
    assert len(b) == len(a)
    ta = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    for na, nb in zip(sorted(a.values(), key=lambda n: n.input[1]), sorted(b.values(), key=lambda n: n.input[1])):
        assert na.domain == nb.domain == "com.microsoft"
        assert {x.name: onnx.helper.get_attribute_value(x) for x in na.attribute} == \
            {x.name: onnx.helper.get_attribute_value(x) for x in nb.attribute}
        assert len(na.input) == len(nb.input) == 3  # symmetric: no zero points
        for i in (1, 2):
            assert ta[na.input[i]].shape == tb[nb.input[i]].shape and ta[na.input[i]].dtype == tb[nb.input[i]].dtype
        np.testing.assert_array_equal(ta[na.input[1]], tb[nb.input[1]])  # the same nibbles, bit for bit
        np.testing.assert_allclose(ta[na.input[2]], tb[nb.input[2]], rtol=1e-6)
    assert ("com.microsoft", 1) in {(o.domain, o.version) for o in ours.opset_import}


def test_pack_nbits_round_trip_and_padding():
    w = np.random.default_rng(2).standard_normal((80, 6)).astype(np.float32)  # K not a multiple of 32
    b, s = quant.pack_nbits(w)
    assert b.shape == (6, 3, 16) and s.shape == (6, 3)
    back = quant.unpack_nbits(b, s, 80)
    assert back.shape == w.shape
    # within half a step of each block's scale, but for values of the sign opposite to the block's
    # extreme that round past +7 steps (ORT's signed range -8..7): those lose up to one step
    step = np.repeat(np.abs(s), 32, axis=1)[:, :80].T
    err = np.abs(back - w)
    assert (err <= step + 1e-6).all() and (err <= step / 2 + 1e-6).mean() > 0.95
    assert (b[:, 2, 8:] == 0).all()  # the padding of the last block, as ORT writes it
    with pytest.raises(AssertionError):  # a flipped nibble changes the weight
        b2 = b.copy()
        b2[0, 0, 0] ^= 0x01
        np.testing.assert_array_equal(quant.unpack_nbits(b2, s, 80), back)


def test_int8_weight_and_activation_scales():
    w = np.random.default_rng(4).standard_normal((64, 5)).astype(np.float32)
    q, s = quant.weight_int8(w)
    assert q.dtype == np.int8 and s.shape == (5,)
    assert (np.abs(q).max(axis=0) == 127).all()
    assert np.abs(q * s - w).max() <= s.max() / 2 + 1e-7
    scale, zp = quant.act_uint8(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zp == 64
    assert quant.act_uint8(0.5, 2.0) == (pytest.approx(2 / 255), 0)  # the range holds zero


@pytest.mark.parametrize("name,opts", [("bert-tiny", {"dtype": "int8", "layers": 1}),
                                       ("llama-tiny", {"dtype": "int8", "phase": "decode", "kv": 6}),
                                       ("llama-tiny", {"dtype": "int4", "phase": "decode", "kv": 6}),
                                       ("gpt2-tiny", {"dtype": "fp8"})],
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_host_target_runs_them_as_onnxruntime(name, opts):
    proto = T.build(name, **opts)
    cm = kcompiler.compile(name, target="host", **opts)
    feeds = cm.random_inputs(seed=5)
    outs = cm.run(feeds)
    ref = dict(zip([o.name for o in _session(proto).get_outputs()], _session(proto).run(None, feeds)))
    assert set(outs) == set(ref)
    for k in ref:
        got = outs[k].astype(np.float32)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref[k].astype(np.float32), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_bert_tiny_keeps_fp32_argmax(dtype):
    """>= 95% of tokens keep their argmax; and the quantised model is not the float one in
    disguise: its outputs differ, a little."""
    ref = _session(T.build("bert-tiny", batch=4))
    got = _session(T.build("bert-tiny", batch=4, dtype=dtype))
    agree, total, err = 0, 0, 0.0
    for seed in (21, 22, 23):  # 3 x 4 x 16 = 192 tokens, none of them the calibration inputs
        ids = {"input_ids": _ids(4, 16, seed)}
        a = ref.run(["last_hidden_state"], ids)[0]
        b = np.asarray(got.run(["last_hidden_state"], ids)[0], np.float32)
        agree, total = agree + int((a.argmax(-1) == b.argmax(-1)).sum()), total + a.shape[0] * a.shape[1]
        err = max(err, float(np.abs(a - b).max()))
    assert agree / total >= 0.95, f"{dtype}: argmax agreement {agree}/{total}"
    assert 1e-4 < err < 0.5, err


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp8"])
def test_llama_7b_decode_builds_in_timing_mode_without_weights(dtype):
    tracemalloc.start()
    path = T.build("llama-7b", dtype=dtype, phase="decode", kv=2048, layers=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 150 << 20, f"peak {peak >> 20} MiB"
    assert isinstance(path, os.PathLike) and path.stat().st_size < 20 << 20
    data = path.parent / "weights.bin"
    info = T.model_info("llama-7b", dtype=dtype, phase="decode", kv=2048, layers=2)
    st = data.stat()
    assert st.st_size >= info["weight_bytes"] - (50 << 20) and st.st_blocks * 512 < 1 << 20  # sparse
    m = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    if dtype == "int4":
        assert ops["MatMulNBits"] == 2 * 7 + 1
        assert "synthetic" not in m.doc_string
    else:
        assert ops["DequantizeLinear"] >= 15 and "synthetic quantisation scales" in m.doc_string
        scales = [numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith(".weight_scale")]
        assert len(scales) == 15 and all((s > 0).all() for s in scales)  # plausible, never zero
    assert info["params"] == T.model_info("llama-7b", phase="decode", kv=2048, layers=2)["params"]


def test_weight_bytes_of_the_forms():
    b = lambda dt: T.model_info("llama-7b", dtype=dt, phase="decode", kv=2048)["weight_bytes"]  # noqa: E731
    bf16, int8, int4 = b("bf16"), b("int8"), b("int4")
    assert 13.0e9 < bf16 < 13.8e9
    # the embedding (and norms) keep their float dtype; the GEMMs move 4.5 bits per weight in int4
    assert int4 / bf16 <= 0.30 and int8 < bf16 * 0.75


def test_builds_dtype_and_bad_options():
    assert zoo.builds_dtype("llama-7b", "int4") and zoo.builds_dtype("bert-tiny", "fp8")
    assert zoo.builds_dtype("bert-tiny", "bf16")
    assert not zoo.builds_dtype("resnet50", "int8") and zoo.builds_dtype("resnet50", "fp32")
    assert not zoo.builds_dtype("no-such-model", "int8")
    with pytest.raises(KCError, match="int3"):
        T.build("bert-tiny", dtype="int3")
    with pytest.raises(KCError, match="act_dtype"):
        T.build("bert-tiny", dtype="fp16", act_dtype="fp32")
    with pytest.raises(KCError, match="act_dtype 'int8'"):
        T.build("bert-tiny", dtype="int4", act_dtype="int8")
