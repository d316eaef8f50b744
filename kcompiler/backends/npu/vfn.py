"""The vector unit's arithmetic: what each VECTOR function computes on float32 operands.

Operands arrive widened to float32 (the unit computes in float32 whatever the stored dtype);
the simulator rounds the result to the destination's dtype. Nothing here knows which op of
which model it runs for.
"""

from __future__ import annotations

import math

import numpy as np

from kcompiler.backends.numerics import sigmoid

F32 = np.float32


def erf(x: np.ndarray) -> np.ndarray:
    """erf to ~6e-7 absolute (Abramowitz & Stegun 7.1.26, 1.5e-7, evaluated in float32 in
    place: 3x faster than in float64)."""
    x = np.asarray(x, F32)
    if x.ndim == 0:
        return erf(x.reshape(1)).reshape(())
    a = np.abs(x)
    t = a * F32(0.3275911)
    t += F32(1)
    np.reciprocal(t, out=t)
    y = t * F32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        y += F32(c)
        y *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    y *= a
    np.subtract(F32(1), y, out=y)
    return np.copysign(y, x, out=y)


def gelu(x):
    return (0.5 * x * (1 + erf(x / F32(math.sqrt(2))))).astype(F32)


_TANH_C = F32(math.sqrt(2 / math.pi))


def gelu_tanh(x):
    return (0.5 * x * (1 + np.tanh(_TANH_C * (x + F32(0.044715) * x ** 3)))).astype(F32)


def silu(x):
    return (x * sigmoid(x)).astype(F32)


def hardswish(x):
    return (x * np.clip(x / F32(6) + F32(0.5), 0, 1)).astype(F32)


def _imm(ins_imm: float) -> np.float32:
    return F32(ins_imm)


#: function name -> f(operands, imm0, imm1, imm2) for the elementwise functions
ELEMENTWISE = {
    "copy": lambda a, i0, i1, i2: a[0],
    "add": lambda a, i0, i1, i2: np.add(a[0], a[1]),
    "sub": lambda a, i0, i1, i2: np.subtract(a[0], a[1]),
    "mul": lambda a, i0, i1, i2: np.multiply(a[0], a[1]),
    "div": lambda a, i0, i1, i2: np.divide(a[0], a[1]),
    "pow": lambda a, i0, i1, i2: np.power(a[0], a[1]),
    "max": lambda a, i0, i1, i2: np.maximum(a[0], a[1]),
    "min": lambda a, i0, i1, i2: np.minimum(a[0], a[1]),
    "fma": lambda a, i0, i1, i2: a[0] * a[1] + a[2],
    "axpy": lambda a, i0, i1, i2: a[0] + _imm(i0) * a[1],
    "scale": lambda a, i0, i1, i2: a[0] * _imm(i0) + _imm(i1),
    "relu": lambda a, i0, i1, i2: np.maximum(a[0], F32(0)),
    "leakyrelu": lambda a, i0, i1, i2: np.where(a[0] >= 0, a[0], a[0] * _imm(i0)),
    "clip": lambda a, i0, i1, i2: np.minimum(np.maximum(a[0], _imm(i0)), _imm(i1)),
    "sigmoid": lambda a, i0, i1, i2: sigmoid(a[0]),
    "tanh": lambda a, i0, i1, i2: np.tanh(a[0]),
    "exp": lambda a, i0, i1, i2: np.exp(a[0]),
    "log": lambda a, i0, i1, i2: np.log(a[0]),
    "erf": lambda a, i0, i1, i2: erf(a[0]),
    "gelu": lambda a, i0, i1, i2: gelu(a[0]),
    "gelu_tanh": lambda a, i0, i1, i2: gelu_tanh(a[0]),
    "silu": lambda a, i0, i1, i2: silu(a[0]),
    "sqrt": lambda a, i0, i1, i2: np.sqrt(a[0]),
    "neg": lambda a, i0, i1, i2: np.negative(a[0]),
    "abs": lambda a, i0, i1, i2: np.abs(a[0]),
    "reciprocal": lambda a, i0, i1, i2: F32(1) / a[0],
    "sign": lambda a, i0, i1, i2: np.sign(a[0]),
    "floor": lambda a, i0, i1, i2: np.floor(a[0]),
    "ceil": lambda a, i0, i1, i2: np.ceil(a[0]),
    "softplus": lambda a, i0, i1, i2: np.logaddexp(a[0], F32(0)),
    "elu": lambda a, i0, i1, i2: np.where(a[0] > 0, a[0], _imm(i0) * np.expm1(a[0])),
    "hardsigmoid": lambda a, i0, i1, i2: np.clip(_imm(i0) * a[0] + _imm(i1), 0, 1),
    "hardswish": lambda a, i0, i1, i2: hardswish(a[0]),
    "sin": lambda a, i0, i1, i2: np.sin(a[0]), "cos": lambda a, i0, i1, i2: np.cos(a[0]),
    "tan": lambda a, i0, i1, i2: np.tan(a[0]), "asin": lambda a, i0, i1, i2: np.arcsin(a[0]),
    "acos": lambda a, i0, i1, i2: np.arccos(a[0]), "atan": lambda a, i0, i1, i2: np.arctan(a[0]),
    "sinh": lambda a, i0, i1, i2: np.sinh(a[0]), "cosh": lambda a, i0, i1, i2: np.cosh(a[0]),
    "asinh": lambda a, i0, i1, i2: np.arcsinh(a[0]), "acosh": lambda a, i0, i1, i2: np.arccosh(a[0]),
    "atanh": lambda a, i0, i1, i2: np.arctanh(a[0]),
    "softsign": lambda a, i0, i1, i2: a[0] / (F32(1) + np.abs(a[0])),
    "mish": lambda a, i0, i1, i2: a[0] * np.tanh(np.logaddexp(a[0], F32(0))),
    "round": lambda a, i0, i1, i2: np.round(a[0]),  # halves to even, as ONNX's Round
    "selu": lambda a, i0, i1, i2: _imm(i1) * np.where(a[0] > 0, a[0], _imm(i0) * np.expm1(a[0])),
    "celu": lambda a, i0, i1, i2: np.maximum(a[0], F32(0)) + np.minimum(
        F32(0), _imm(i0) * np.expm1(a[0] / _imm(i0))),
    "thresholdedrelu": lambda a, i0, i1, i2: np.where(a[0] > _imm(i0), a[0], F32(0)),
    "shrink": lambda a, i0, i1, i2: np.where(a[0] < -_imm(i1), a[0] + _imm(i0),
                                             np.where(a[0] > _imm(i1), a[0] - _imm(i0), F32(0))),
    "swish": lambda a, i0, i1, i2: a[0] * sigmoid(_imm(i0) * a[0]),
    "prelu": lambda a, i0, i1, i2: np.where(a[0] < 0, a[0] * a[1], a[0]),
}


#: elementwise functions that one numpy ufunc computes: written straight into the destination
#: (float32 operands and destination of the broadcast shape); the same ufunc as ELEMENTWISE's, so
#: the same bits
INTO = {
    "copy": lambda a, out: np.copyto(out, a[0]),
    "add": lambda a, out: np.add(a[0], a[1], out=out),
    "sub": lambda a, out: np.subtract(a[0], a[1], out=out),
    "mul": lambda a, out: np.multiply(a[0], a[1], out=out),
    "div": lambda a, out: np.divide(a[0], a[1], out=out),
    "max": lambda a, out: np.maximum(a[0], a[1], out=out),
    "min": lambda a, out: np.minimum(a[0], a[1], out=out),
    "relu": lambda a, out: np.maximum(a[0], F32(0), out=out),
}


def softmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    e /= e.sum(axis=axes, keepdims=True)
    return e


def logsoftmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    s = x - x.max(axis=axes, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axes, keepdims=True))


def hardmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """1 at the first maximum along the (one) axis, 0 elsewhere."""
    (axis,) = axes
    first = np.argmax(x, axis=axis)
    return (np.arange(x.shape[axis]).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
            == np.expand_dims(first, axis)).astype(F32)


def logsumexp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """log(sum(exp(x))) over `axes`, shifted by the max so large values do not overflow (a row of
    -inf gives -inf, one holding +inf gives +inf)."""
    m = x.max(axis=axes, keepdims=True)
    shift = np.where(np.isfinite(m), m, F32(0))
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(x - shift).sum(axis=axes, keepdims=True)) + shift).astype(F32)


#: the reductions beyond sum/mean/max/min: name -> f(x, axes), the reduced dims kept as size 1
REDUCE_MORE = {
    "reduce_l1": lambda x, axes: np.abs(x).sum(axis=axes, keepdims=True),
    "reduce_l2": lambda x, axes: np.sqrt((x * x).sum(axis=axes, keepdims=True)),
    "reduce_sumsquare": lambda x, axes: (x * x).sum(axis=axes, keepdims=True),
    "reduce_logsum": lambda x, axes: np.log(x.sum(axis=axes, keepdims=True)),
    "reduce_logsumexp": logsumexp,
    "reduce_prod": lambda x, axes: np.prod(x, axis=axes, keepdims=True),
}


def lp_normalize(x: np.ndarray, axes: tuple[int, ...], p: float) -> np.ndarray:
    """x divided by its L1 (p = 1) or L2 (p = 2) norm over `axes`; 0 where the norm is 0, as ONNX's
    reference says. Any other p is not a function of the unit (an error, never a silent L2)."""
    if p == 1:
        norm = np.abs(x).sum(axis=axes, keepdims=True)
    elif p == 2:
        norm = np.sqrt((x * x).sum(axis=axes, keepdims=True))
    else:
        raise ValueError(f"lp_normalize takes p = 1 or 2, not {p}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, F32(0), x / norm).astype(F32)


def nll(x: np.ndarray, t: np.ndarray, w: np.ndarray | None, axes: tuple[int, ...], ignore: float | None,
        mean: bool) -> np.ndarray:
    """Negative log-likelihood of 4-D tiles with the classes along dim 2: -x[t] * w[t] per element
    (0 where t == ignore), summed over `axes` (dim 2 among them), divided by the sum of w[t] if `mean`.
    The target picks its class by comparison with each class index (a one-hot along dim 2)."""
    cls = np.arange(x.shape[2], dtype=F32).reshape(1, 1, -1, 1)
    hit = t == cls
    picked = np.where(hit, x, F32(0)).sum(axis=2, keepdims=True)
    wt = np.where(hit, w, F32(0)).sum(axis=2, keepdims=True) if w is not None else np.ones_like(picked)
    if ignore is not None:
        keep = t != F32(ignore)
        wt = np.where(keep, wt, F32(0))
    loss = -picked * wt
    loss = loss.sum(axis=axes, keepdims=True)
    if mean:
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = loss / wt.sum(axis=axes, keepdims=True)
    return loss.astype(F32)


def rstd(x, axes, eps):
    """1 / sqrt(var + eps) over `axes` (LayerNormalization's InvStdDev), kept as size-1 dims."""
    d = x - x.mean(axis=axes, keepdims=True)
    return F32(1) / np.sqrt((d * d).mean(axis=axes, keepdims=True) + F32(eps))


def layernorm(x, axes, eps, gamma, beta):
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    y = d / np.sqrt(var + F32(eps))
    y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def rmsnorm(x, axes, eps, gamma):
    ms = (x * x).mean(axis=axes, keepdims=True)
    return x / np.sqrt(ms + F32(eps)) * gamma


def lrn(x: np.ndarray, axis: int, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """Local response normalisation across `axis` (channels): x / (bias + alpha/size * sum x^2)^beta."""
    sq = np.moveaxis(x.astype(np.float64) ** 2, axis, 0)
    c = sq.shape[0]
    cs = np.concatenate([np.zeros_like(sq[:1]), np.cumsum(sq, axis=0)], axis=0)
    lo, hi = (size - 1) // 2, int(math.ceil((size - 1) / 2))
    idx = np.arange(c)
    ssum = cs[np.minimum(c, idx + hi + 1)] - cs[np.maximum(0, idx - lo)]
    ssum = np.moveaxis(ssum, 0, axis)
    return (x / (bias + alpha / size * ssum) ** beta).astype(F32)
