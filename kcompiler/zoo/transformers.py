"""Parametric transformer builders: BERT-style encoders, LLaMA- and GPT-2-style decoders.

The graphs are written with ``onnx.helper`` in the op patterns PyTorch's exporter emits
(decomposed LayerNorm / RMSNorm, Erf- or Tanh-form GELU, MatMul + Add projections,
Reshape/Transpose heads, MatMul/Div/Add/Softmax/MatMul attention, rotary embedding with
Slice/Neg/Concat, grouped-query attention with Unsqueeze/Expand/Reshape), so fusion rules
written for exported models fire on these too. Canonical opset 18.

Weights:
- small models (< ``EXTERNAL_PARAMS`` parameters): random, seeded per tensor name (the same
  name gets the same values whatever the phase or sequence length), embedded in the proto;
- large models: ONNX external data in one *sparse* file (``os.truncate``, never written), in a
  cache folder ``$KC_CACHE_DIR`` or ``~/.cache/kcompiler/zoo/<name>-<hash of options>/``.
  Nothing reads the file unless values are computed (then every weight is zero).

Every builder also runs in "meta" mode (no tensors at all) to count parameters and FLOPs
from shapes: ``model_info(name, **options)``. The presets and their options are in zoo.presets,
the graph writer in zoo.graph_writer.

Quantised forms (dtype int8 | fp8 | int4, the rest of the graph at act_dtype): the weight GEMMs as
onnxruntime.quantization writes them (QDQ with uint8/float8 activations and per-channel weights, or
4-bit MatMulNBits); see zoo.quant. Random-weight int8/fp8 models get activation scales from a
calibration run of their float twin in ONNX Runtime; external (timing) ones synthetic scales, and
their doc_string says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from kcompiler.errors import KCError
from kcompiler.zoo import ZooEntry, cache_dir, graph_writer, presets, quant, register
from kcompiler.zoo.graph_writer import WEIGHTS_FILE, Writer
from kcompiler.zoo.presets import ENCODER_OPTIONS, OPTIONS, PRESETS, Config, Options, resolve_options
from kcompiler.zoo.presets import DTYPES, WEIGHT_ITEMSIZE  # noqa: F401  (kc cluster sizes weights by them)
from kcompiler.zoo.quant import QUANT_DTYPES

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

#: models with at least this many parameters keep their weights as sparse external data
EXTERNAL_PARAMS = 100_000_000
#: bump when the graphs change so cached files are rebuilt
FORMAT_VERSION = 1
#: the source files that decide the graphs (with FORMAT_VERSION, the key of cached files)
_SOURCES = (__file__, graph_writer.__file__, presets.__file__, quant.__file__)



# ---- the families --------------------------------------------------------------------------------

def _heads(w: Writer, x: str, b: int, s: int, h: int, hd: int, hint: str) -> str:
    """[B,S,H*hd] -> [B,H,S,hd]"""
    r = w.op("Reshape", [x, w.const([b, s, h, hd], "int64", "shape")], hint)
    return w.op("Transpose", [r], hint, perm=[0, 2, 1, 3])


def _merge_heads(w: Writer, x: str, b: int, s: int, h: int, hd: int, hint: str) -> str:
    t = w.op("Transpose", [x], hint, perm=[0, 2, 1, 3])
    return w.op("Reshape", [t, w.const([b, s, h * hd], "int64", "shape")], hint)


def _attention(w: Writer, q: str, k: str, v: str, b: int, s: int, t: int, h: int, hd: int,
               mask: str | None, hint: str) -> str:
    """softmax(q k^T / sqrt(hd) + mask) v, all [B,H,*,hd]."""
    kt = w.op("Transpose", [k], hint, perm=[0, 1, 3, 2])
    w.macs += b * h * s * t * hd * 2
    scores = w.op("MatMul", [q, kt], hint)
    scores = w.op("Div", [scores, w.const(math.sqrt(hd), hint="scale")], hint)
    if mask is not None:
        scores = w.op("Add", [scores, mask], hint)
    probs = w.op("Softmax", [scores], hint, axis=-1)
    return w.op("MatMul", [probs, v], hint)


def _causal_mask(w: Writer, s: int, past: int) -> str | None:
    """Additive mask [S, past+S]: query i sees keys j <= past + i (HF uses finfo.min)."""
    if s == 1:
        return None
    t = past + s
    allowed = np.arange(t)[None, :] <= (past + np.arange(s))[:, None]
    lowest = float(ml_dtypes.finfo(w.np_dtype).min) if w.np_dtype.name == "bfloat16" else float(
        np.finfo(w.np_dtype).min)
    mask = np.where(allowed, 0.0, lowest)
    return w.const(mask, hint="causal_mask")


def _rope_tables(w: Writer, cfg: Config, positions: np.ndarray) -> tuple[str, str]:
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = positions[:, None].astype(np.float64) * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [S, hd]
    return w.const(np.cos(emb), hint="rope_cos"), w.const(np.sin(emb), hint="rope_sin")


def _rotary(w: Writer, x: str, cos: str, sin: str, hd: int, hint: str) -> str:
    """HF apply_rotary_pos_emb: x*cos + rotate_half(x)*sin, rotate_half = cat(-x2, x1)."""
    half = hd // 2
    axes = w.const([3], "int64", "axes")
    x1 = w.op("Slice", [x, w.const([0], "int64", "start"), w.const([half], "int64", "end"), axes], hint)
    x2 = w.op("Slice", [x, w.const([half], "int64", "start"), w.const([hd], "int64", "end"), axes], hint)
    rot = w.op("Concat", [w.op("Neg", [x2], hint), x1], hint, axis=-1)
    return w.op("Add", [w.op("Mul", [x, cos], hint), w.op("Mul", [rot, sin], hint)], hint)


def _repeat_kv(w: Writer, x: str, b: int, nkv: int, rep: int, t: int, hd: int, hint: str) -> str:
    """HF repeat_kv: [B,nkv,T,hd] -> [B,nkv*rep,T,hd] via Unsqueeze/Expand/Reshape."""
    if rep == 1:
        return x
    u = w.op("Unsqueeze", [x, w.const([2], "int64", "axes")], hint)
    e = w.op("Expand", [u, w.const([b, nkv, rep, t, hd], "int64", "shape")], hint)
    return w.op("Reshape", [e, w.const([b, nkv * rep, t, hd], "int64", "shape")], hint)


def _writer(name: str, o: Options, mode: str, ranges: dict | None) -> Writer:
    return Writer(name, o.act_dtype, mode, o.seed, quant=o.dtype if o.dtype in QUANT_DTYPES else None,
                  ranges=ranges)


def build_decoder(name: str, cfg: Config, o: Options, mode: str, ranges: dict | None = None) -> Writer:
    """LLaMA-style (RMSNorm, rotary, GQA, SwiGLU) or GPT-2-style (LayerNorm, learned positions,
    fused c_attn + Split, tanh GELU, tied LM head) decoder, in prefill or decode phase. A tied
    head (GPT-2) stays a float MatMul in the quantised forms: its weight is the embedding's."""
    w = _writer(f"{name}_{o.phase}", o, mode, ranges)
    llama = cfg.family == "llama"
    b, s, past, d = o.batch, o.seq, o.kv, cfg.d
    h, nkv, hd = cfg.heads, cfg.kv_heads, cfg.head_dim
    t = past + s
    bs = b * s
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s])]
    outputs = [helper.make_tensor_value_info("logits", w.onnx_dtype, [b, s, cfg.vocab])]
    positions = np.arange(past, past + s)
    embed = w.weight("model.embed_tokens.weight" if llama else "transformer.wte.weight", (cfg.vocab, d))
    x = w.op("Gather", [embed, "input_ids"], "embed", axis=0)
    if llama:
        cos, sin = _rope_tables(w, cfg, positions)
    else:
        wpe = w.weight("transformer.wpe.weight", (cfg.max_pos, d))
        pe = w.op("Gather", [wpe, w.const(positions, "int64", "position_ids")], "wpe", axis=0)
        x = w.op("Add", [x, pe], "embed")
    mask = _causal_mask(w, s, past)
    norm = w.rms_norm if llama else w.layer_norm
    for i in range(cfg.layers):
        p = f"model.layers.{i}" if llama else f"transformer.h.{i}"
        hn = norm(x, f"{p}.input_layernorm" if llama else f"{p}.ln_1", d, cfg.eps)
        if llama:
            q = w.linear(hn, f"{p}.self_attn.q_proj", bs, d, h * hd, False)
            k = w.linear(hn, f"{p}.self_attn.k_proj", bs, d, nkv * hd, False)
            v = w.linear(hn, f"{p}.self_attn.v_proj", bs, d, nkv * hd, False)
        else:
            qkv = w.linear(hn, f"{p}.attn.c_attn", bs, d, 3 * d, True)
            q, k, v = w.op("Split", [qkv, w.const([d, d, d], "int64", "split")], f"{p}.attn", outputs=3, axis=2)
        attn = f"{p}.self_attn" if llama else f"{p}.attn"
        q = _heads(w, q, b, s, h, hd, attn)
        k = _heads(w, k, b, s, nkv, hd, attn)
        v = _heads(w, v, b, s, nkv, hd, attn)
        if llama:
            q = _rotary(w, q, cos, sin, hd, f"{attn}.rotary")
            k = _rotary(w, k, cos, sin, hd, f"{attn}.rotary")
        pk, pv = f"present.{i}.key", f"present.{i}.value"
        if past:
            for nm in (f"past_key_values.{i}.key", f"past_key_values.{i}.value"):
                inputs.append(helper.make_tensor_value_info(nm, w.onnx_dtype, [b, nkv, past, hd]))
            k = w.op("Concat", [f"past_key_values.{i}.key", k], attn, outputs=[pk], axis=2)
            v = w.op("Concat", [f"past_key_values.{i}.value", v], attn, outputs=[pv], axis=2)
        else:
            k = w.op("Identity", [k], attn, outputs=[pk])
            v = w.op("Identity", [v], attn, outputs=[pv])
        for nm in (pk, pv):
            outputs.append(helper.make_tensor_value_info(nm, w.onnx_dtype, [b, nkv, t, hd]))
        k = _repeat_kv(w, k, b, nkv, h // nkv, t, hd, attn)
        v = _repeat_kv(w, v, b, nkv, h // nkv, t, hd, attn)
        ctx = _attention(w, q, k, v, b, s, t, h, hd, mask, attn)
        ctx = _merge_heads(w, ctx, b, s, h, hd, attn)
        o_ = w.linear(ctx, f"{attn}.o_proj" if llama else f"{attn}.c_proj", bs, h * hd, d, not llama)
        x = w.op("Add", [x, o_], f"{p}.residual")
        hn = norm(x, f"{p}.post_attention_layernorm" if llama else f"{p}.ln_2", d, cfg.eps)
        if llama:
            g = w.linear(hn, f"{p}.mlp.gate_proj", bs, d, cfg.ffn, False)
            u = w.linear(hn, f"{p}.mlp.up_proj", bs, d, cfg.ffn, False)
            act = w.op("Mul", [g, w.op("Sigmoid", [g], f"{p}.mlp.act")], f"{p}.mlp.act")
            m = w.op("Mul", [act, u], f"{p}.mlp")
            m = w.linear(m, f"{p}.mlp.down_proj", bs, cfg.ffn, d, False)
        else:
            m = w.linear(hn, f"{p}.mlp.c_fc", bs, d, cfg.ffn, True)
            m = w.gelu_tanh(m, f"{p}.mlp.act")
            m = w.linear(m, f"{p}.mlp.c_proj", bs, cfg.ffn, d, True)
        x = w.op("Add", [x, m], f"{p}.residual")
    x = norm(x, "model.norm" if llama else "transformer.ln_f", d, cfg.eps)
    if cfg.tied:
        head = w.op("Transpose", [embed], "lm_head", perm=[1, 0])
        w.macs += bs * d * cfg.vocab
        w.op("MatMul", [x, head], "lm_head", outputs=["logits"])
    else:
        w.linear(x, "lm_head", bs, d, cfg.vocab, False, out="logits")
    w.inputs, w.outputs = inputs, outputs
    return w


def build_encoder(name: str, cfg: Config, o: Options, mode: str, ranges: dict | None = None) -> Writer:
    """BERT-style post-LN encoder with Erf GELU and a pooler, as HF BertModel exports."""
    w = _writer(name, o, mode, ranges)
    b, s, d, h, hd = o.batch, o.seq, cfg.d, cfg.heads, cfg.head_dim
    bs = b * s
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s])]
    outputs = [helper.make_tensor_value_info("last_hidden_state", w.onnx_dtype, [b, s, d]),
               helper.make_tensor_value_info("pooler_output", w.onnx_dtype, [b, d])]
    we = w.weight("embeddings.word_embeddings.weight", (cfg.vocab, d))
    pe = w.weight("embeddings.position_embeddings.weight", (cfg.max_pos, d))
    te = w.weight("embeddings.token_type_embeddings.weight", (cfg.type_vocab, d))
    x = w.op("Gather", [we, "input_ids"], "embeddings", axis=0)
    x = w.op("Add", [x, w.op("Gather", [te, w.const(np.zeros((b, s)), "int64", "token_type_ids")],
                                    "embeddings", axis=0)], "embeddings")
    x = w.op("Add", [x, w.op("Gather", [pe, w.const(np.arange(s)[None, :], "int64", "position_ids")],
                                    "embeddings", axis=0)], "embeddings")
    x = w.layer_norm(x, "embeddings.LayerNorm", d, cfg.eps)
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}"
        q = _heads(w, w.linear(x, f"{p}.attention.self.query", bs, d, d, True), b, s, h, hd, f"{p}.attention")
        k = _heads(w, w.linear(x, f"{p}.attention.self.key", bs, d, d, True), b, s, h, hd, f"{p}.attention")
        v = _heads(w, w.linear(x, f"{p}.attention.self.value", bs, d, d, True), b, s, h, hd, f"{p}.attention")
        ctx = _merge_heads(w, _attention(w, q, k, v, b, s, s, h, hd, None, f"{p}.attention"), b, s, h, hd,
                           f"{p}.attention")
        a = w.linear(ctx, f"{p}.attention.output.dense", bs, d, d, True)
        x = w.layer_norm(w.op("Add", [a, x], f"{p}.attention.output"), f"{p}.attention.output.LayerNorm", d,
                         cfg.eps)
        m = w.gelu_erf(w.linear(x, f"{p}.intermediate.dense", bs, d, cfg.ffn, True), f"{p}.intermediate")
        m = w.linear(m, f"{p}.output.dense", bs, cfg.ffn, d, True)
        x = w.layer_norm(w.op("Add", [m, x], f"{p}.output"), f"{p}.output.LayerNorm", d, cfg.eps)
    w.op("Identity", [x], "encoder", outputs=["last_hidden_state"])
    first = w.op("Gather", [x, w.const(0, "int64", "cls_index")], "pooler", axis=1)
    pooled = w.linear(first, "pooler.dense", b, d, d, True)
    w.op("Tanh", [pooled], "pooler", outputs=["pooler_output"])
    w.inputs, w.outputs = inputs, outputs
    return w


def _write(name: str, cfg: Config, o: Options, mode: str, ranges: dict | None = None) -> Writer:
    fn = build_encoder if cfg.family == "bert" else build_decoder
    return fn(name, cfg, o, mode, ranges)


def _calibrated(name: str, cfg: Config, o: Options) -> dict:
    """Activation ranges of the weight GEMMs of a random-weight int8/fp8 model: its float twin
    (same weights, dtype act_dtype) run in ONNX Runtime on seeded random inputs (quant.calibrate)."""
    twin = _write(name, cfg, replace(o, dtype=o.act_dtype), "random")
    proto = twin.finish(twin.inputs, twin.outputs, "calibration twin")
    return quant.calibrate(proto, twin.linear_io, cfg.vocab, o.seed)


def _quant_doc(o: Options, calibrated: bool) -> str:
    """What the model's doc_string says about its quantisation (reports quote it)."""
    if o.dtype not in QUANT_DTYPES:
        return ""
    if o.dtype == "int4":
        return (f"; weight GEMMs are com.microsoft MatMulNBits (4-bit symmetric, block {quant.BLOCK}), the rest "
                f"{o.act_dtype}")
    form = "uint8 activations, int8" if o.dtype == "int8" else "float8e4m3fn activations and"
    scales = ("activation scales calibrated on random inputs (ONNX Runtime, MinMax)" if calibrated else
              "synthetic quantisation scales (timing mode: no weight or activation was read)")
    return (f"; QDQ weight GEMMs ({form} per-channel weights), {scales}; LayerNorm, Softmax, residual adds "
            f"and attention's activation products stay {o.act_dtype}")


# ---- public entry points -------------------------------------------------------------------------

def model_info(name: str, **options) -> dict[str, Any]:
    """Parameters and MACs/FLOPs from shapes alone (no tensor is created)."""
    cfg, o = resolve_options(name, **options)
    w = _write(name, cfg, o, "meta")
    tokens = o.batch * o.seq
    per = "inference" if cfg.family == "bert" else "token"
    flops = 2 * w.macs
    return {"name": name, "params": w.params, "macs": w.macs, "flops": flops,
            "flops_per_unit": flops / (o.batch if per == "inference" else tokens), "unit": per, "weights": w.weights,
            "options": asdict(o), "config": asdict(cfg), "external": w.params >= EXTERNAL_PARAMS,
            "weight_bytes": w.weight_bytes}


def parameter_count(name: str, **options) -> int:
    return model_info(name, **options)["params"]


def cache_root() -> Path:
    """Where large presets' models are kept: the zoo's cache folder (zoo.cache_dir), under zoo/."""
    return cache_dir() / "zoo"


def build(name: str, weights: str | None = None, **options) -> Any:
    """The ONNX model for a preset: a ModelProto with random weights (small presets), or the
    path of a cached .onnx whose weights are sparse external data (large presets).

    weights: "random" | "external" to force one or the other (Python only).
    """
    cfg, o = resolve_options(name, **options)
    if weights is None:
        weights = "external" if _write(name, cfg, o, "meta").params >= EXTERNAL_PARAMS else "random"
    if weights not in ("random", "external"):
        raise KCError(f"zoo model '{name}': weights='{weights}' is not 'random' or 'external'")
    doc = f"{name} ({cfg.published}); options {asdict(o)}; built by kcompiler.zoo.transformers"
    if weights == "random":
        ranges = _calibrated(name, cfg, o) if o.dtype in ("int8", "fp8") else None
        w = _write(name, cfg, o, "random", ranges)
        return w.finish(w.inputs, w.outputs, doc + _quant_doc(o, ranges is not None))
    # the builder's own source is part of the key: any change to the graphs rebuilds the cache
    source = hashlib.sha256(b"".join(Path(f).read_bytes() for f in _SOURCES)).hexdigest()[:16]
    key = json.dumps({"v": FORMAT_VERSION, "src": source, "cfg": asdict(cfg), "opt": asdict(o)}, sort_keys=True)
    folder = cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    path = folder / "model.onnx"
    data = folder / WEIGHTS_FILE
    if path.is_file() and data.is_file():
        return path
    w = _write(name, cfg, o, "external")
    proto = w.finish(w.inputs, w.outputs,
                     doc + "; weights are a sparse external file (all zero)" + _quant_doc(o, False))
    folder.mkdir(parents=True, exist_ok=True)
    tmp_data = folder / f".{WEIGHTS_FILE}.{os.getpid()}"
    with open(tmp_data, "wb") as f:
        f.truncate(max(w.offset, 1))  # sparse: no block is written
    tmp_model = folder / f".model.onnx.{os.getpid()}"
    tmp_model.write_bytes(proto.SerializeToString())
    os.replace(tmp_data, data)
    os.replace(tmp_model, path)
    (folder / "options.json").write_text(key)
    return path


def _entry(name: str) -> ZooEntry:
    cfg = PRESETS[name]
    kind = {"bert": "BERT-style encoder", "llama": "LLaMA-style decoder (RMSNorm, rotary, GQA, SwiGLU)",
            "gpt2": "GPT-2-style decoder"}[cfg.family]
    desc = (f"{kind}: {cfg.layers} layers, d={cfg.d}, {cfg.heads} heads"
            + (f" ({cfg.kv_heads} KV)" if cfg.kv_heads != cfg.heads else "") + f", ffn {cfg.ffn}, "
            f"vocab {cfg.vocab}; like {cfg.published}")
    opts = ENCODER_OPTIONS if cfg.family == "bert" else OPTIONS
    fields = {f for f in ZooEntry.__dataclass_fields__}
    extra = {"info": (lambda name=name, **kw: model_info(name, **kw))} if "info" in fields else {}
    if "dtypes" in fields:
        extra["dtypes"] = tuple(DTYPES) + tuple(QUANT_DTYPES)
    return ZooEntry(name, "transformer" if cfg.family == "bert" else "llm", desc,
                    lambda name=name, **kw: build(name, **kw), opts + ("weights",), **extra)


for _name in PRESETS:
    register(_entry(_name))
