"""Transformer presets (the shapes of published models) and the options a build takes
(batch, seq, KV length, phase, dtype, activation dtype, layers, seed), checked into ``Options``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from onnx import TensorProto

from kcompiler.errors import KCError
from kcompiler.zoo.quant import QUANT_DTYPES

DTYPES = {"fp32": (np.dtype(np.float32), TensorProto.FLOAT),
          "fp16": (np.dtype(np.float16), TensorProto.FLOAT16)}
try:
    import ml_dtypes

    DTYPES["bf16"] = (np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16)
except ImportError:  # pragma: no cover
    pass

PHASES = ("prefill", "decode")
OPTIONS = ("batch", "seq", "kv", "phase", "dtype", "act_dtype", "layers", "seed")
ENCODER_OPTIONS = ("batch", "seq", "dtype", "act_dtype", "layers", "seed")
#: bytes a weight takes at each dtype a zoo transformer builds (int4: 4 bits; the block scales,
#: one 16-bit number per 32 weights, are counted by model_info's "weight_bytes", not here)
WEIGHT_ITEMSIZE = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5}



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
    dtype: str  # fp32 | fp16 | bf16, or a quantised form: int8 | fp8 (QDQ weight GEMMs) | int4 (MatMulNBits)
    act_dtype: str  # the float dtype of everything not quantised (= dtype for the float forms)
    layers: int
    seed: int


def _positive(name: str, model: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise KCError(f"zoo model '{model}': option {name}={value!r} must be a "
                      f"{'non-negative' if allow_zero else 'positive'} integer")
    return int(value)


def _dtypes(name: str, dtype, act_dtype) -> tuple[str, str]:
    """(dtype, act_dtype) checked: a float dtype is its own activation dtype; a quantised one keeps
    the rest of the graph at act_dtype (default QUANT_DTYPES[dtype])."""
    dtype = dtype or "fp32"
    if dtype not in DTYPES and dtype not in QUANT_DTYPES:
        raise KCError(f"zoo model '{name}': dtype '{dtype}' is not one of {sorted(DTYPES) + sorted(QUANT_DTYPES)}")
    if dtype in DTYPES:
        if act_dtype not in (None, dtype):
            raise KCError(f"zoo model '{name}': act_dtype '{act_dtype}' applies to the quantised dtypes "
                          f"{sorted(QUANT_DTYPES)}, not to dtype '{dtype}'", hint="drop act_dtype")
        return dtype, dtype
    act_dtype = act_dtype or QUANT_DTYPES[dtype]
    if act_dtype not in DTYPES:
        raise KCError(f"zoo model '{name}': act_dtype '{act_dtype}' is not one of {sorted(DTYPES)}")
    return dtype, act_dtype


def resolve_options(name: str, batch=None, seq=None, kv=None, phase=None, dtype=None, layers=None,
                    seed=None, act_dtype=None) -> tuple[Config, Options]:
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
    dtype, act_dtype = _dtypes(name, dtype, act_dtype)
    batch = _positive("batch", name, 1 if batch is None else batch)
    seq = _positive("seq", name, (cfg.default_seq if phase == "prefill" else 1) if seq is None else seq)
    kv = 0 if phase == "prefill" else _positive("kv", name, cfg.default_kv if kv is None else kv)
    layers = _positive("layers", name, cfg.layers if layers is None else layers)
    seed = _positive("seed", name, 0 if seed is None else seed, allow_zero=True)
    if cfg.max_pos and seq + kv > cfg.max_pos:
        raise KCError(f"zoo model '{name}': {seq + kv} positions (seq {seq} + kv {kv}) exceed its "
                      f"position table of {cfg.max_pos}", hint=f"keep seq + kv <= {cfg.max_pos}")
    return replace(cfg, layers=layers), Options(batch, seq, kv, phase, dtype, act_dtype, layers, seed)
