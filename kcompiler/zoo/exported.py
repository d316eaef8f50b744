"""Transformers as PyTorch's ONNX exporter writes them: symbolic inputs (batch, sequence) and the
run-time shape arithmetic and mask arithmetic that comes with them.

The zoo's other transformers (zoo.transformers) fix every shape at build time, so their graphs
carry no Shape/Gather/Concat chains and no attention-mask arithmetic. Exported models do: head
reshapes read the batch and sequence with Shape/Gather/Unsqueeze/Concat, an `attention_mask` int64
input becomes an additive float mask (Unsqueeze/Expand/Cast/Sub/Where, or Equal/Where on a causal
ConstantOfShape/Trilu or Range/Less mask), position ids come from CumSum or Range, and T5 buckets
relative positions with Log/Div/Cast/Min/Where on int64. Compiled with `--shape input_ids=1x16`,
all of it must fold to constants so that every MatMul, Gemm, Conv, LayerNormalization and Softmax
after it has a static shape and can be placed on a chip; these models are what tests that.

Small random weights (seeded per tensor name), opset 18 (17 for ViT), IR version 10.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from kcompiler.errors import KCError
from kcompiler.zoo import ZooEntry, register
from kcompiler.zoo.graph_writer import Writer

#: the sizes of every exported model: small so that tests compile them in a second
D, HEADS, FFN, VOCAB, LAYERS = 128, 4, 256, 100, 2
HD = D // HEADS
#: what HF fills masked scores with (torch.finfo(float32).min)
NEG = float(np.finfo(np.float32).min)
IR_VERSION = 10


class _Exp(Writer):
    """The zoo's graph writer plus the run-time shape reads an exported graph is made of."""

    def __init__(self, name: str):
        super().__init__(name, "fp32", "random")

    def i64(self, value, hint: str = "c") -> str:
        return self.const(value, "int64", hint)

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] as the exporter reads it: Shape -> Gather (a scalar)."""
        return self.op("Gather", [self.op("Shape", [x], "shape"), self.i64(axis)], "shape", axis=0)

    def vec(self, *parts) -> str:
        """A 1-D int64 shape made of run-time scalars (names) and fixed ints: Unsqueeze each, Concat."""
        items = [self.op("Unsqueeze", [p, self.i64([0])], "shape") if isinstance(p, str) else self.i64([p])
                 for p in parts]
        return self.op("Concat", items, "shape", axis=0)

    def fill(self, shape: str, value: float, dtype: int = TensorProto.FLOAT) -> str:
        return self.op("ConstantOfShape", [shape], "fill", value=helper.make_tensor("v", dtype, [1], [value]))

    def expand(self, x: str, shape: str) -> str:
        """torch's expand as exported: -1 entries of the target mean "keep", so the shape goes through
        Shape -> ConstantOfShape(1) -> Mul(-1) -> Equal -> Where before the Expand."""
        ones = self.fill(self.op("Shape", [shape], "expand"), 1, TensorProto.INT64)
        keep = self.op("Equal", [shape, self.op("Mul", [ones, self.i64(-1)], "expand")], "expand")
        return self.op("Expand", [x, self.op("Where", [keep, ones, shape], "expand")], "expand")

    def lin(self, x: str, prefix: str, k: int, n: int, bias: bool = True) -> str:
        w = self.weight(f"{prefix}.weight", (k, n))
        y = self.op("MatMul", [x, w], prefix)
        return self.op("Add", [y, self.weight(f"{prefix}.bias", (n,), "bias")], prefix) if bias else y

    def ln(self, x: str, prefix: str) -> str:
        """torch.nn.LayerNorm at opset >= 17: one LayerNormalization node."""
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.weight", (D,), "ones"),
                                              self.weight(f"{prefix}.bias", (D,), "bias")], prefix,
                       axis=-1, epsilon=1e-5)

    def gemm(self, x: str, prefix: str, k: int, n: int) -> str:
        """torch.nn.Linear on a 2-D input: Gemm with the weight [n, k] transposed."""
        return self.op("Gemm", [x, self.weight(f"{prefix}.weight", (n, k)), self.weight(f"{prefix}.bias", (n,),
                                                                                         "bias")], prefix, transB=1)

    def model(self, inputs: list, outputs: list, opset: int = 18) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, initializer=self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                                 producer_name="kcompiler.zoo.exported",
                                 doc_string=f"{self.name}: exporter-style graph with symbolic dims, random weights")


def _ids(name: str = "input_ids") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])


def _attention(w: _Exp, x: str, p: str, mask: str | None, kv_heads: int = HEADS,
               rope: tuple[str, str] | None = None, scale: bool = True) -> str:
    """Self-attention with run-time head reshapes; GQA repeats K/V heads with Unsqueeze/Expand/Reshape
    (HF repeat_kv), RoPE rotates q and k (HF apply_rotary_pos_emb). mask: additive, broadcast to scores."""
    b, s = w.dim(x, 0), w.dim(x, 1)

    def heads(t: str, n: int) -> str:
        return w.op("Transpose", [w.op("Reshape", [t, w.vec(b, s, n, HD)], p)], p, perm=[0, 2, 1, 3])

    q = heads(w.lin(x, f"{p}.q", D, D), HEADS)
    k = heads(w.lin(x, f"{p}.k", D, kv_heads * HD), kv_heads)
    v = heads(w.lin(x, f"{p}.v", D, kv_heads * HD), kv_heads)
    if rope is not None:
        q, k = (_rotate(w, t, *rope, p) for t in (q, k))
    if kv_heads != HEADS:
        rep = HEADS // kv_heads
        k, v = (w.op("Reshape", [w.expand(w.op("Unsqueeze", [t, w.i64([2])], p), w.vec(b, kv_heads, rep, s, HD)),
                                 w.vec(b, HEADS, s, HD)], p) for t in (k, v))
    scores = w.op("MatMul", [q, w.op("Transpose", [k], p, perm=[0, 1, 3, 2])], p)
    if scale:
        scores = w.op("Div", [scores, w.const(math.sqrt(HD), hint="scale")], p)
    if mask is not None:
        scores = w.op("Add", [scores, mask], p)
    ctx = w.op("MatMul", [w.op("Softmax", [scores], p, axis=-1), v], p)
    ctx = w.op("Reshape", [w.op("Transpose", [ctx], p, perm=[0, 2, 1, 3]), w.vec(b, s, D)], p)
    return w.lin(ctx, f"{p}.o", D, D, bias=scale)


def _rotate(w: _Exp, x: str, cos: str, sin: str, p: str) -> str:
    """x*cos + rotate_half(x)*sin with rotate_half = cat(-x2, x1) (Slice/Neg/Concat)."""
    half, axes = HD // 2, w.i64([3])
    x1 = w.op("Slice", [x, w.i64([0]), w.i64([half]), axes], p)
    x2 = w.op("Slice", [x, w.i64([half]), w.i64([HD]), axes], p)
    rot = w.op("Concat", [w.op("Neg", [x2], p), x1], p, axis=-1)
    return w.op("Add", [w.op("Mul", [x, cos], p), w.op("Mul", [rot, sin], p)], p)


def _residual_block(w: _Exp, x: str, p: str, mask: str | None, act: Callable[[str], str], post_norm: bool) -> str:
    """One encoder/decoder layer with LayerNormalization: post-norm (BERT) or pre-norm (GPT-2, ViT)."""
    if post_norm:
        x = w.ln(w.op("Add", [x, _attention(w, x, f"{p}.attn", mask)], p), f"{p}.ln1")
        return w.ln(w.op("Add", [x, w.lin(act(w.lin(x, f"{p}.fc1", D, FFN)), f"{p}.fc2", FFN, D)], p), f"{p}.ln2")
    x = w.op("Add", [x, _attention(w, w.ln(x, f"{p}.ln1"), f"{p}.attn", mask)], p)
    return w.op("Add", [x, w.lin(act(w.lin(w.ln(x, f"{p}.ln2"), f"{p}.fc1", D, FFN)), f"{p}.fc2", FFN, D)], p)


def bert(layers: int = LAYERS) -> onnx.ModelProto:
    """BERT: word + token-type + position embeddings (position ids Sliced from a buffer up to the run-time
    sequence), HF's expanded padding mask (Unsqueeze/Expand/Cast/Sub/Cast-to-bool/Where), post-norm layers,
    a Gemm/Tanh pooler."""
    w = _Exp("bert-exported")
    ids, am, tt = "input_ids", "attention_mask", "token_type_ids"
    b, s = w.dim(ids, 0), w.dim(ids, 1)
    pos = w.op("Slice", [w.i64(np.arange(64)[None, :], "position_ids"), w.i64([0]),
                         w.op("Unsqueeze", [s, w.i64([0])], "pos"), w.i64([1])], "pos")
    emb = w.op("Add", [w.op("Gather", [w.weight("word_embeddings", (VOCAB, D)), ids], "emb"),
                       w.op("Gather", [w.weight("token_type_embeddings", (2, D)), tt], "emb")], "emb")
    x = w.ln(w.op("Add", [emb, w.op("Gather", [w.weight("position_embeddings", (64, D)), pos], "emb")], "emb"),
             "emb.ln")
    expanded = w.expand(w.op("Unsqueeze", [am, w.i64([1, 2])], "mask"), w.vec(b, 1, s, s))
    inverted = w.op("Sub", [w.const(1.0, hint="one"), w.op("Cast", [expanded], "mask", to=TensorProto.FLOAT)], "mask")
    mask = w.op("Where", [w.op("Cast", [inverted], "mask", to=TensorProto.BOOL), w.const(NEG, hint="min"), inverted],
                "mask")
    for i in range(layers):
        x = _residual_block(w, x, f"layer{i}", mask, lambda t: w.gelu_erf(t, "gelu"), post_norm=True)
    w.op("Identity", [x], "out", outputs=["last_hidden_state"])
    first = w.op("Gather", [x, w.i64(0)], "pool", axis=1)
    w.op("Tanh", [w.gemm(first, "pooler", D, D)], "pool", outputs=["pooler_output"])
    return w.model([_ids(), _ids(am), _ids(tt)],
                   [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", D]),
                    helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", D])])


def gpt2(layers: int = LAYERS) -> onnx.ModelProto:
    """GPT-2: position ids from CumSum of the mask (HF: cumsum - 1, 1 where padded), a causal mask from
    ConstantOfShape/Trilu expanded to the batch and merged with the padding mask (Add/Equal/Where)."""
    w = _Exp("gpt2-exported")
    am = "attention_mask"
    b, s = w.dim("input_ids", 0), w.dim("input_ids", 1)
    ids = w.op("Reshape", ["input_ids", w.vec(-1, s)], "view")  # HF: input_ids.view(-1, input_shape[-1])
    pos = w.op("Sub", [w.op("CumSum", [am, w.i64(1)], "pos"), w.i64(1)], "pos")
    pos = w.op("Where", [w.op("Equal", [am, w.i64(0)], "pos"), w.i64(1), pos], "pos")
    x = w.op("Add", [w.op("Gather", [w.weight("wte", (VOCAB, D)), ids], "emb"),
                     w.op("Gather", [w.weight("wpe", (64, D)), pos], "emb")], "emb")
    causal = w.op("Trilu", [w.fill(w.vec(s, s), NEG), w.i64(1)], "mask", upper=1)
    causal = w.expand(w.op("Unsqueeze", [causal, w.i64([0, 1])], "mask"), w.vec(b, 1, s, s))
    padded = w.op("Add", [causal, w.op("Cast", [w.op("Unsqueeze", [am, w.i64([1, 2])], "mask")], "mask",
                                         to=TensorProto.FLOAT)], "mask")
    mask = w.op("Where", [w.op("Equal", [padded, w.const(0.0, hint="zero")], "mask"), w.const(NEG, hint="min"),
                          causal], "mask")
    for i in range(layers):
        x = _residual_block(w, x, f"h{i}", mask, lambda t: w.gelu_tanh(t, "gelu"), post_norm=False)
    x = w.ln(x, "ln_f")
    w.op("MatMul", [x, w.op("Transpose", ["wte"], "lm_head", perm=[1, 0])], "lm_head", outputs=["logits"])
    return w.model([_ids(), _ids(am)],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])])


def llama_gqa(layers: int = LAYERS) -> onnx.ModelProto:
    """LLaMA with grouped-query attention (2 KV heads for 4): position ids from Range, RoPE tables computed
    from them (Cast/Mul/Concat/Cos/Sin), a causal mask from Range/Less or'ed with the padding mask (Not/Or/
    Where), RMSNorm decomposed, SwiGLU."""
    w = _Exp("llama-gqa-exported")
    ids, am = "input_ids", "attention_mask"
    s = w.dim(ids, 1)
    r = w.op("Range", [w.i64(0), s, w.i64(1)], "pos")
    pos = w.op("Cast", [w.op("Unsqueeze", [r, w.i64([0, 2])], "rope")], "rope", to=TensorProto.FLOAT)  # [1,S,1]
    inv = w.const(1.0 / (10000.0 ** (np.arange(0, HD, 2) / HD)), hint="inv_freq")
    freqs = w.op("Mul", [pos, inv], "rope")
    emb = w.op("Unsqueeze", [w.op("Concat", [freqs, freqs], "rope", axis=-1), w.i64([1])], "rope")  # [1,1,S,HD]
    rope = (w.op("Cos", [emb], "rope"), w.op("Sin", [emb], "rope"))
    future = w.op("Less", [w.op("Unsqueeze", [r, w.i64([1])], "mask"), w.op("Unsqueeze", [r, w.i64([0])], "mask")],
                  "mask")  # [S,S]: key j after query i
    padded = w.op("Not", [w.op("Cast", [w.op("Unsqueeze", [am, w.i64([1, 2])], "mask")], "mask",
                                   to=TensorProto.BOOL)], "mask")
    blocked = w.op("Or", [w.op("Unsqueeze", [future, w.i64([0, 1])], "mask"), padded], "mask")
    mask = w.op("Where", [blocked, w.const(NEG, hint="min"), w.const(0.0, hint="zero")], "mask")
    x = w.op("Gather", [w.weight("embed_tokens", (VOCAB, D)), ids], "emb")
    for i in range(layers):
        p = f"layers{i}"
        x = w.op("Add", [x, _attention(w, w.rms_norm(x, f"{p}.in_norm", D, 1e-6), f"{p}.attn", mask,
                                       kv_heads=2, rope=rope)], p)
        h = w.rms_norm(x, f"{p}.post_norm", D, 1e-6)
        gate = w.lin(h, f"{p}.gate", D, FFN, bias=False)
        act = w.op("Mul", [gate, w.op("Sigmoid", [gate], p)], p)
        x = w.op("Add", [x, w.lin(w.op("Mul", [act, w.lin(h, f"{p}.up", D, FFN, bias=False)], p), f"{p}.down",
                                  FFN, D, bias=False)], p)
    w.op("MatMul", [w.rms_norm(x, "norm", D, 1e-6), w.weight("lm_head", (D, VOCAB))], "lm_head", outputs=["logits"])
    return w.model([_ids(), _ids(am)],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])])


def _t5_bias(w: _Exp, s: str, buckets: int = 32, max_distance: int = 128) -> str:
    """HF T5Attention._relative_position_bucket (bidirectional) on Range/Sub int64, Log/Div/Cast/Min/Where,
    then the bias table Gathered and Transposed to [1, H, S, S]."""
    r = w.op("Range", [w.i64(0), s, w.i64(1)], "rel")
    rel = w.op("Sub", [w.op("Unsqueeze", [r, w.i64([0])], "rel"), w.op("Unsqueeze", [r, w.i64([1])], "rel")], "rel")
    half, exact = buckets // 2, buckets // 4
    ret = w.op("Mul", [w.op("Cast", [w.op("Greater", [rel, w.i64(0)], "rel")], "rel", to=TensorProto.INT64),
                       w.i64(half)], "rel")
    n = w.op("Abs", [rel], "rel")
    ratio = w.op("Div", [w.op("Cast", [n], "rel", to=TensorProto.FLOAT), w.const(float(exact), hint="exact")], "rel")
    scaled = w.op("Mul", [w.op("Div", [w.op("Log", [ratio], "rel"), w.const(math.log(max_distance / exact),
                                                                            hint="logmax")], "rel"),
                          w.const(float(half - exact), hint="span")], "rel")
    large = w.op("Add", [w.i64(exact), w.op("Cast", [scaled], "rel", to=TensorProto.INT64)], "rel")
    large = w.op("Min", [large, w.i64(half - 1)], "rel")
    bucket = w.op("Add", [ret, w.op("Where", [w.op("Less", [n, w.i64(exact)], "rel"), n, large], "rel")], "rel")
    bias = w.op("Gather", [w.weight("relative_attention_bias", (buckets, HEADS)), bucket], "rel")  # [S,S,H]
    return w.op("Unsqueeze", [w.op("Transpose", [bias], "rel", perm=[2, 0, 1]), w.i64([0])], "rel")


def t5(layers: int = LAYERS) -> onnx.ModelProto:
    """T5 encoder: relative-position buckets (see _t5_bias) plus the padding mask ((1 - mask) * min), no
    score scaling, RMS layer norm, ReLU feed-forward."""
    w = _Exp("t5-exported")
    ids, am = "input_ids", "attention_mask"
    s = w.dim(ids, 1)
    pad = w.op("Cast", [w.op("Unsqueeze", [am, w.i64([1, 2])], "mask")], "mask", to=TensorProto.FLOAT)
    pad = w.op("Mul", [w.op("Sub", [w.const(1.0, hint="one"), pad], "mask"), w.const(NEG, hint="min")], "mask")
    bias = w.op("Add", [_t5_bias(w, s), pad], "mask")  # [B,H,S,S]
    x = w.op("Gather", [w.weight("shared", (VOCAB, D)), ids], "emb")
    for i in range(layers):
        p = f"block{i}"
        x = w.op("Add", [x, _attention(w, w.rms_norm(x, f"{p}.ln0", D, 1e-6), f"{p}.attn", bias, scale=False)], p)
        h = w.op("Relu", [w.lin(w.rms_norm(x, f"{p}.ln1", D, 1e-6), f"{p}.wi", D, FFN, bias=False)], p)
        x = w.op("Add", [x, w.lin(h, f"{p}.wo", FFN, D, bias=False)], p)
    w.rms_norm(x, "final_layer_norm", D, 1e-6)
    w.nodes[-1].output[0] = "last_hidden_state"
    return w.model([_ids(), _ids(am)],
                   [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", D])])


def vit(layers: int = LAYERS, image: int = 32, patch: int = 8, classes: int = 10) -> onnx.ModelProto:
    """ViT: Conv patch embedding flattened with a run-time Reshape, the class token Expanded to the batch
    and Concatenated, pre-norm layers, a Gemm head on the class token."""
    w = _Exp("vit-exported")
    px = "pixel_values"
    b = w.dim(px, 0)
    conv = w.op("Conv", [px, w.weight("patch.weight", (D, 3, patch, patch)), w.weight("patch.bias", (D,), "bias")],
                "patch", kernel_shape=[patch, patch], strides=[patch, patch])
    tokens = w.op("Transpose", [w.op("Reshape", [conv, w.vec(b, D, -1)], "patch")], "patch", perm=[0, 2, 1])
    cls = w.expand(w.weight("cls_token", (1, 1, D)), w.vec(b, -1, -1))
    n = (image // patch) ** 2 + 1
    x = w.op("Add", [w.op("Concat", [cls, tokens], "cls", axis=1), w.weight("position_embeddings", (1, n, D))],
             "emb")
    for i in range(layers):
        x = _residual_block(w, x, f"layer{i}", None, lambda t: w.gelu_erf(t, "gelu"), post_norm=False)
    first = w.op("Gather", [w.ln(x, "ln_f"), w.i64(0)], "head", axis=1)
    w.nodes.append(helper.make_node("Identity", [w.gemm(first, "classifier", D, classes)], ["logits"]))
    return w.model([helper.make_tensor_value_info(px, TensorProto.FLOAT, ["batch", 3, image, image])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], opset=17)


#: name -> (builder, description, the inputs a user binds with --shape)
MODELS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "bert-exported": (bert, "BERT as exported: expanded padding mask, token types, Gemm pooler"),
    "gpt2-exported": (gpt2, "GPT-2 as exported: CumSum position ids, Trilu causal + padding mask"),
    "llama-gqa-exported": (llama_gqa, "LLaMA (GQA 4/2) as exported: Range positions, RoPE, Range/Less causal mask"),
    "t5-exported": (t5, "T5 encoder as exported: relative-position buckets on int64, padding mask"),
    "vit-exported": (vit, "ViT as exported: Conv patches, class token Expand/Concat, Gemm head"),
}


def build(name: str, layers: int = LAYERS) -> onnx.ModelProto:
    if not isinstance(layers, int) or layers < 1:
        raise KCError(f"zoo model '{name}': --layers must be a positive integer, got {layers!r}")
    return MODELS[name][0](layers)


for _name, (_fn, _desc) in MODELS.items():
    register(ZooEntry(_name, "exported", f"{_desc}; {LAYERS} layers, d={D} (symbolic batch/sequence: bind them "
                      "with --shape)", lambda name=_name, **kw: build(name, **kw), options=("layers",)))
