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
from shapes: ``model_info(name, **options)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from kcompiler.errors import KCError
from kcompiler.zoo import ZooEntry, register

OPSET = 18
IR_VERSION = 8
#: models with at least this many parameters keep their weights as sparse external data
EXTERNAL_PARAMS = 100_000_000
#: bump when the graphs change so cached files are rebuilt
FORMAT_VERSION = 1
#: offsets of external tensors are aligned like onnx's own writer does for mmap
ALIGN = 4096

DTYPES = {"fp32": (np.dtype(np.float32), TensorProto.FLOAT),
          "fp16": (np.dtype(np.float16), TensorProto.FLOAT16)}
try:
    import ml_dtypes

    DTYPES["bf16"] = (np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16)
except ImportError:  # pragma: no cover
    pass

PHASES = ("prefill", "decode")
OPTIONS = ("batch", "seq", "kv", "phase", "dtype", "layers", "seed")
ENCODER_OPTIONS = ("batch", "seq", "dtype", "layers", "seed")


# ---- configurations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    family: str  # "bert" | "llama" | "gpt2"
    vocab: int
    d: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    max_pos: int = 0  # learned position table size (bert, gpt2); 0 for rotary
    eps: float = 1e-5
    rope_theta: float = 10000.0
    tied: bool = False
    type_vocab: int = 0
    default_seq: int = 128
    default_kv: int = 128
    published: str = ""

    @property
    def head_dim(self) -> int:
        return self.d // self.heads


PRESETS: dict[str, Config] = {
    "bert-tiny": Config("bert", 30522, 128, 2, 2, 2, 512, max_pos=512, eps=1e-12, type_vocab=2,
                        default_seq=16, published="google/bert_uncased_L-2_H-128_A-2, 4.4M"),
    "bert-base": Config("bert", 30522, 768, 12, 12, 12, 3072, max_pos=512, eps=1e-12, type_vocab=2,
                        published="bert-base-uncased, 110M"),
    "bert-large": Config("bert", 30522, 1024, 24, 16, 16, 4096, max_pos=512, eps=1e-12, type_vocab=2,
                         published="bert-large-uncased, 335M"),
    "gpt2-tiny": Config("gpt2", 512, 64, 2, 4, 4, 256, max_pos=128, tied=True, default_seq=8, default_kv=8,
                        published="toy GPT-2 for tests"),
    "gpt2": Config("gpt2", 50257, 768, 12, 12, 12, 3072, max_pos=1024, tied=True, published="gpt2, 124M"),
    "llama-tiny": Config("llama", 512, 64, 2, 4, 2, 128, eps=1e-6, default_seq=8, default_kv=8,
                         published="toy LLaMA (GQA 4:2) for tests"),
    "llama-1b": Config("llama", 32000, 2048, 22, 32, 4, 5632, published="TinyLlama-1.1B shape, 1.1B"),
    "llama-7b": Config("llama", 32000, 4096, 32, 32, 32, 11008, eps=1e-6, published="LLaMA-2 7B, 6.7B"),
    "llama-13b": Config("llama", 32000, 5120, 40, 40, 40, 13824, eps=1e-6, published="LLaMA-2 13B, 13.0B"),
}


@dataclass(frozen=True)
class Options:
    batch: int
    seq: int
    kv: int  # past length L (0 in prefill)
    phase: str
    dtype: str
    layers: int
    seed: int


def _positive(name: str, model: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise KCError(f"zoo model '{model}': option {name}={value!r} must be a "
                      f"{'non-negative' if allow_zero else 'positive'} integer")
    return int(value)


def resolve_options(name: str, batch=None, seq=None, kv=None, phase=None, dtype=None, layers=None,
                    seed=None) -> tuple[Config, Options]:
    cfg = PRESETS[name]
    enc = cfg.family == "bert"
    if enc and (phase not in (None, "prefill") or kv is not None):
        raise KCError(f"zoo model '{name}' is an encoder: it has no decode phase or KV cache",
                      hint="drop --phase/--kv for BERT-style models")
    phase = phase or "prefill"
    if phase not in PHASES:
        raise KCError(f"zoo model '{name}': phase '{phase}' is not one of {list(PHASES)}")
    if phase == "prefill" and kv is not None:
        raise KCError(f"zoo model '{name}': --kv applies to the decode phase only",
                      hint="add --phase decode, or drop --kv")
    dtype = dtype or "fp32"
    if dtype not in DTYPES:
        raise KCError(f"zoo model '{name}': dtype '{dtype}' is not one of {sorted(DTYPES)}")
    batch = _positive("batch", name, 1 if batch is None else batch)
    seq = _positive("seq", name, (cfg.default_seq if phase == "prefill" else 1) if seq is None else seq)
    kv = 0 if phase == "prefill" else _positive("kv", name, cfg.default_kv if kv is None else kv)
    layers = _positive("layers", name, cfg.layers if layers is None else layers)
    seed = _positive("seed", name, 0 if seed is None else seed, allow_zero=True)
    if cfg.max_pos and seq + kv > cfg.max_pos:
        raise KCError(f"zoo model '{name}': {seq + kv} positions (seq {seq} + kv {kv}) exceed its "
                      f"position table of {cfg.max_pos}", hint=f"keep seq + kv <= {cfg.max_pos}")
    return replace(cfg, layers=layers), Options(batch, seq, kv, phase, dtype, layers, seed)


# ---- graph writer --------------------------------------------------------------------------------

class Writer:
    """Collects nodes, constants and weights. mode: "random" | "external" | "meta"."""

    def __init__(self, name: str, dtype: str, mode: str, seed: int = 0):
        self.name = name
        self.np_dtype, self.onnx_dtype = DTYPES[dtype]
        self.mode = mode
        self.seed = seed
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weights: list[tuple[str, tuple[int, ...]]] = []  # every parameter, in order
        self.params = 0
        self.macs = 0  # multiply-accumulates of one inference
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.offset = 0  # bytes used in the external file

    # names
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    # tensors
    def _tensor(self, name: str, arr: np.ndarray, onnx_dtype: int) -> onnx.TensorProto:
        t = TensorProto(name=name, data_type=onnx_dtype, dims=list(arr.shape))
        t.raw_data = np.ascontiguousarray(arr).tobytes()
        return t

    def const(self, arr, dtype: str = "model", hint: str = "const") -> str:
        """A small constant embedded in the model (shapes, scalars, masks, rotary tables)."""
        if dtype == "int64":
            arr = np.asarray(arr, dtype=np.int64)
            odt = TensorProto.INT64
        else:
            arr = np.asarray(arr, dtype=np.float64).astype(self.np_dtype)
            odt = self.onnx_dtype
        key = (odt, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        if self.mode != "meta":
            self.initializers.append(self._tensor(name, arr, odt))
        if key is not None:
            self._consts[key] = name
        return name

    def weight(self, name: str, shape: tuple[int, ...], init: str = "normal") -> str:
        """A parameter. init: "normal" (std 0.02), "ones" (1 + noise), "bias" (noise)."""
        shape = tuple(int(s) for s in shape)
        self.weights.append((name, shape))
        n = math.prod(shape)
        self.params += n
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            if init == "normal":
                arr = rng.standard_normal(shape, dtype=np.float32) * 0.02
            elif init == "ones":
                arr = 1.0 + rng.standard_normal(shape, dtype=np.float32) * 0.02
            else:  # "bias": small random rather than zero, so tests see every term
                arr = rng.standard_normal(shape, dtype=np.float32) * 0.02
            self.initializers.append(self._tensor(name, arr.astype(self.np_dtype), self.onnx_dtype))
        elif self.mode == "external":
            nbytes = n * self.np_dtype.itemsize
            t = TensorProto(name=name, data_type=self.onnx_dtype, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", WEIGHTS_FILE), ("offset", str(self.offset)), ("length", str(nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.initializers.append(t)
            self.offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
        return name

    # nodes
    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1,
           **attrs) -> Any:
        base = hint or op_type
        if isinstance(outputs, int):
            outs = [self.fresh(base) for _ in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"/{base}/{op_type}"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    # patterns
    def matmul(self, x: str, w: str, tokens: int, k: int, n: int, hint: str, bias: str | None = None) -> str:
        self.macs += tokens * k * n
        y = self.op("MatMul", [x, w], hint)
        return self.op("Add", [y, bias], hint) if bias else y

    def linear(self, x: str, prefix: str, tokens: int, k: int, n: int, bias: bool) -> str:
        w = self.weight(f"{prefix}.weight", (k, n))
        b = self.weight(f"{prefix}.bias", (n,), "bias") if bias else None
        return self.matmul(x, w, tokens, k, n, prefix, b)

    def layer_norm(self, x: str, prefix: str, d: int, eps: float) -> str:
        """PyTorch's decomposed LayerNorm: ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add."""
        axes = self.const([-1], "int64", "axes")
        mean = self.op("ReduceMean", [x, axes], prefix, keepdims=1)
        dev = self.op("Sub", [x, mean], prefix)
        sq = self.op("Pow", [dev, self.const(2.0, hint="two")], prefix)
        var = self.op("ReduceMean", [sq, axes], prefix, keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(eps, hint="eps")], prefix)], prefix)
        y = self.op("Div", [dev, std], prefix)
        y = self.op("Mul", [y, self.weight(f"{prefix}.weight", (d,), "ones")], prefix)
        return self.op("Add", [y, self.weight(f"{prefix}.bias", (d,), "bias")], prefix)

    def rms_norm(self, x: str, prefix: str, d: int, eps: float) -> str:
        """RMSNorm as exported: Pow/ReduceMean/Add/Sqrt/Div/Mul."""
        axes = self.const([-1], "int64", "axes")
        sq = self.op("Pow", [x, self.const(2.0, hint="two")], prefix)
        ms = self.op("ReduceMean", [sq, axes], prefix, keepdims=1)
        rms = self.op("Sqrt", [self.op("Add", [ms, self.const(eps, hint="eps")], prefix)], prefix)
        y = self.op("Div", [x, rms], prefix)
        return self.op("Mul", [y, self.weight(f"{prefix}.weight", (d,), "ones")], prefix)

    def gelu_erf(self, x: str, hint: str) -> str:
        e = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2.0), hint="sqrt2")], hint)], hint)
        y = self.op("Mul", [x, self.op("Add", [e, self.const(1.0, hint="one")], hint)], hint)
        return self.op("Mul", [y, self.const(0.5, hint="half")], hint)

    def gelu_tanh(self, x: str, hint: str) -> str:
        cube = self.op("Pow", [x, self.const(3.0, hint="three")], hint)
        inner = self.op("Add", [x, self.op("Mul", [cube, self.const(0.044715, hint="c")], hint)], hint)
        t = self.op("Tanh", [self.op("Mul", [inner, self.const(math.sqrt(2 / math.pi), hint="c")], hint)], hint)
        y = self.op("Mul", [self.op("Mul", [x, self.const(0.5, hint="half")], hint),
                            self.op("Add", [t, self.const(1.0, hint="one")], hint)], hint)
        return y

    def finish(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=IR_VERSION, producer_name="kcompiler.zoo",
                                  doc_string=doc)
        # the KV cache is device-resident state: present.N.* <- past_key_values.N.* (kcompiler.frontend.state)
        ins = {v.name for v in inputs}
        state = {o.name: o.name.replace("present.", "past_key_values.", 1) if o.name.replace(
            "present.", "past_key_values.", 1) in ins else "" for o in outputs if o.name.startswith("present.")}
        if state:
            helper.set_model_props(model, {"kcompiler.state": json.dumps(state, sort_keys=True)})
        return model


WEIGHTS_FILE = "weights.bin"


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


def build_decoder(name: str, cfg: Config, o: Options, mode: str) -> Writer:
    """LLaMA-style (RMSNorm, rotary, GQA, SwiGLU) or GPT-2-style (LayerNorm, learned positions,
    fused c_attn + Split, tanh GELU, tied LM head) decoder, in prefill or decode phase."""
    w = Writer(f"{name}_{o.phase}", o.dtype, mode, o.seed)
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
        head = w.weight("lm_head.weight", (d, cfg.vocab))
        w.macs += bs * d * cfg.vocab
        w.op("MatMul", [x, head], "lm_head", outputs=["logits"])
    w.inputs, w.outputs = inputs, outputs
    return w


def build_encoder(name: str, cfg: Config, o: Options, mode: str) -> Writer:
    """BERT-style post-LN encoder with Erf GELU and a pooler, as HF BertModel exports."""
    w = Writer(name, o.dtype, mode, o.seed)
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


def _write(name: str, cfg: Config, o: Options, mode: str) -> Writer:
    fn = build_encoder if cfg.family == "bert" else build_decoder
    return fn(name, cfg, o, mode)


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
            "options": asdict(o), "config": asdict(cfg), "external": w.params >= EXTERNAL_PARAMS}


def parameter_count(name: str, **options) -> int:
    return model_info(name, **options)["params"]


def cache_root() -> Path:
    """Where large presets' models are kept: the zoo's cache folder (zoo.cache_dir), under zoo/."""
    from kcompiler.zoo import cache_dir

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
        w = _write(name, cfg, o, "random")
        return w.finish(w.inputs, w.outputs, doc)
    # the builder's own source is part of the key: any change to the graphs rebuilds the cache
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    key = json.dumps({"v": FORMAT_VERSION, "src": source, "cfg": asdict(cfg), "opt": asdict(o)}, sort_keys=True)
    folder = cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    path = folder / "model.onnx"
    data = folder / WEIGHTS_FILE
    if path.is_file() and data.is_file():
        return path
    w = _write(name, cfg, o, "external")
    proto = w.finish(w.inputs, w.outputs, doc + "; weights are a sparse external file (all zero)")
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
    return ZooEntry(name, "transformer" if cfg.family == "bert" else "llm", desc,
                    lambda name=name, **kw: build(name, **kw), opts + ("weights",), **extra)


for _name in PRESETS:
    register(_entry(_name))
