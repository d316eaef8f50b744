"""Numbers of the zoo's quantised transformers: weights quantised the way onnxruntime.quantization
writes them, activation scales from a calibration run (random weights) or synthetic (timing mode),
and 4-bit blocks packed as ORT's MatMulNBits reads them.

The zoo writes the quantised forms itself rather than calling ORT's quantiser on a float model so
that large presets (llama-7b) can be built in timing mode without a single weight in memory; the
tests compare the op patterns, dtypes, axes and packing with what ORT's own tools write.
"""

from __future__ import annotations

import zlib

import numpy as np

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

#: the quantised dtypes a zoo transformer builds itself -> the default float dtype of the rest of
#: the graph (LayerNorm, Softmax, residual adds, attention's activation products, the KV cache):
#: float32 for int8/fp8 (W8A8: only the weight GEMMs are quantised), 16-bit for 4-bit weights (w4a16)
QUANT_DTYPES = {"int8": "fp32", "fp8": "fp32", "int4": "fp16"}
#: largest finite float8e4m3fn
FP8_MAX = 448.0
#: MatMulNBits as ORT's matmul_nbits_quantizer writes it by default
NBITS, BLOCK = 4, 32
#: activation range assumed when no calibration runs (timing mode: weights are never read)
SYNTHETIC_RANGE = (-6.0, 6.0)
#: std of the zoo's random weights (graph_writer.Writer.weight, init "normal")
WEIGHT_STD = 0.02


def fp8_dtype():
    if ml_dtypes is None:  # pragma: no cover
        raise ImportError("ml_dtypes is needed for float8 models")
    return np.dtype(ml_dtypes.float8_e4m3fn)


def weight_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 of a MatMul weight [K, N] (axis 1), as ORT's QDQ quantiser:
    scale = max|w| / 127, q = round half to even (w / scale) in [-127, 127]."""
    amax = np.abs(w.astype(np.float32)).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def weight_fp8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel float8e4m3fn of a weight [K, N]: scale = max|w| / 448 (the channel's
    largest weight lands on the largest finite E4M3 value; ModelOpt's convention)."""
    amax = np.abs(w.astype(np.float32)).max(axis=0)
    scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
    q = np.clip(w / scale, -FP8_MAX, FP8_MAX).astype(fp8_dtype())
    return q, scale


def act_uint8(lo: float, hi: float) -> tuple[float, int]:
    """ORT MinMax calibration of an asymmetric uint8 activation: the range widened to hold 0,
    scale = (hi - lo) / 255, zero point = round(-lo / scale)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def act_fp8(lo: float, hi: float) -> float:
    """Per-tensor E4M3 activation scale (zero point 0): max|x| / 448."""
    amax = max(abs(float(lo)), abs(float(hi)))
    return amax / FP8_MAX if amax > 0 else 1.0


def synthetic_weight_scale(name: str, n: int, seed: int, qmax: float) -> np.ndarray:
    """Plausible per-channel scales of a weight nobody reads (timing mode): the largest of K
    draws of N(0, 0.02) is about 4.5 std, spread +-10% per channel (seeded by name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
    return (WEIGHT_STD * 4.5 / qmax * rng.uniform(0.9, 1.1, n)).astype(np.float32)


def pack_nbits(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A weight [K, N] as symmetric 4-bit blocks along K, as ORT's matmul_nbits_quantizer writes
    them (no zero-point input, so the zero point is 8; K padded to whole blocks with zero bytes): per
    block the value of largest magnitude v gives scale = v / -8, q = clip(round(w / scale) + 8, 0, 15),
    two values a byte, the first in the low nibble. Returns B uint8 [N, n_blocks, block/2] and
    scales float32 [N, n_blocks]."""
    k, n = w.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), np.float32)
    wt[:, :k] = w.T
    blocks = wt.reshape(n, nb, block)
    idx = np.abs(blocks).argmax(axis=2)
    vmax = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    scale = np.where(vmax != 0, vmax / -8.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]) + 8, 0, 15).astype(np.uint8).reshape(n, nb * block)
    q[:, k:] = 0  # (ORT leaves the padding of the last block zero)
    q = q.reshape(n, nb, block)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale


def unpack_nbits(b: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The weight [K, N] a MatMulNBits (bits 4, zero point 8) computes with: the inverse of pack_nbits."""
    n, nb, half = b.shape
    q = np.empty((n, nb, half * 2), np.float32)
    q[..., 0::2] = b & 0x0F
    q[..., 1::2] = b >> 4
    w = (q - 8) * scales.reshape(n, nb, 1).astype(np.float32)
    return w.reshape(n, -1)[:, :k].T


def calibrate(proto, linear_io: dict[str, tuple[str, str]], vocab: int, seed: int,
              samples: int = 8) -> dict[str, dict[str, tuple[float, float]]]:
    """Min and max of every weight GEMM's input ("x") and output ("y") over `samples` runs of the
    float model in ONNX Runtime on seeded random inputs (token ids in [0, vocab), a KV cache of
    N(0, 1)): {linear prefix: {"x": (lo, hi), "y": (lo, hi)}}."""
    import onnx
    import onnxruntime as ort  # (loaded only to build a random-weight quantised model)
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    have = {o.name for o in probe.graph.output}
    wanted = sorted({t for pair in linear_io.values() for t in pair} - have)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in wanted)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng([seed, 0x5CA1E])
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for _ in range(samples):
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            if i.type == "tensor(int64)":
                feeds[i.name] = rng.integers(0, vocab, shape, dtype=np.int64)
            else:
                feeds[i.name] = rng.standard_normal(shape).astype(_np_of(i.type))
        for name, arr in zip(names, sess.run(None, feeds)):
            a = np.asarray(arr, np.float32)
            lo[name] = min(lo.get(name, np.inf), float(a.min()))
            hi[name] = max(hi.get(name, -np.inf), float(a.max()))
    return {p: {"x": (lo[x], hi[x]), "y": (lo[y], hi[y])} for p, (x, y) in linear_io.items()}


def _np_of(ort_type: str):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(ort_type, np.float32)
