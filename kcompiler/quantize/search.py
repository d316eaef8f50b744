"""The `mse` calibration method: per activation tensor, the clipping range that minimises the tensor's
quantisation error on the calibration data, for the int8/uint8 grid ONNX Runtime will build from it.

Why it exists: ONNX Runtime's calibrators pick a range by a rule (min/max, a percentile of |x|, the KL
divergence of a histogram), none by the error the chosen grid actually makes. MinMax spends the grid on
rare outliers (coarse steps for every other value); Percentile cuts a fixed fraction whatever the
distribution; and Entropy, as quantize_static runs it, *is* MinMax: quantize_static passes no bin count
to ORT's EntropyCalibrater, whose defaults (128 histogram bins, 128 quantised bins) leave one candidate
threshold, the whole histogram (so kcompiler's entropy figures equal minmax's). Vendor SDKs (Furiosa's
MSE/SQNR calibrators, TensorRT's and pytorch-quantization's "mse") add this search; so does kcompiler.

Built on ORT: an ORT HistogramCalibrater subclass runs ORT's own augmented model (every tensor ORT will
quantise made an output, `select_tensors_to_calibrate`), and ORT's HistogramCollector histograms every value
of every tensor (4096 bins to start, a sixteenth of a min/max step each; zeros counted apart), from which the
error of every candidate range follows in closed form (prefix sums): deterministic, and over all the data.
(A first version searched a seeded subsample of 65536 values per tensor: resnet50's top-1 agreement then
moved between 97.0% and 99.0% with the subsample, i.e. with Python's hash seed, which orders ORT's tensors.)
The chosen ranges are ORT's TensorsData, which quantize_static reads through its calibration cache, so the
scales and zero points are computed by ORT exactly as for its own calibrators.

What it clips: at int8 a lone outlier of magnitude R costs about R^2 clipped and saves about
N R^2 / (12 * 255^2) of rounding error over N values, so it is clipped only where it is rarer than about one
value in 10^6 (a CNN activation over a calibration set), and kept in a small tensor; min/max is always a
candidate, so the chosen range never has a larger estimated error than minmax's.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization.calibrate import (CalibrationDataReader, CalibrationMethod, HistogramCalibrater,
                                                HistogramCollector, TensorData, TensorsData, save_tensors_data)

from kcompiler.errors import KCError

#: histogram bins ORT's collector starts each tensor with, over [-max|x|, max|x|] of the first samples (it adds
#: bins of the same width as later samples widen the range): 16 bins per int8 step of a min/max grid
BINS = 4096
#: candidate clipping fractions of the tensor's max and of its min (every pair is evaluated)
CANDIDATES = 256
#: samples the augmented model runs per collect call (its outputs are every calibrated tensor: bounded memory)
CHUNK = 4
#: the integer grids ORT uses for activations: (qmin, qmax)
GRIDS = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass
class TensorHistogram:
    """One tensor's values over the calibration set: a histogram (counts, bin edges) of its non-zero values,
    its count of exact zeros (0 is on every grid: a zero costs no error) and its exact min and max."""

    counts: np.ndarray
    edges: np.ndarray
    zeros: int
    lo: float
    hi: float

    @classmethod
    def of(cls, x: np.ndarray, bins: int = BINS) -> "TensorHistogram":
        x = np.asarray(x, np.float64).ravel()
        nz = x[x != 0.0]
        top = float(np.abs(x).max()) if x.size else 0.0
        counts, edges = np.histogram(nz, bins, range=(-top, top) if top > 0 else (-1.0, 1.0))
        return cls(counts, edges, int(x.size - nz.size), float(x.min()) if x.size else 0.0,
                   float(x.max()) if x.size else 0.0)


def grid_params(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, float]:
    """(scale, zero point) of ORT's asymmetric grid for [lo, hi] (quant_utils.compute_scale_zp: the range
    widened to hold 0, the scale stored as float32, the zero point round(qmin - lo / scale))."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if np.float32(scale) < np.finfo(np.float32).tiny:
        return 1.0, 0.0
    return float(np.float32(scale)), float(np.round(qmin - lo / scale))


def quant_mse(x: np.ndarray, lo: float, hi: float, qmin: int, qmax: int) -> float:
    """The mean squared error of QuantizeLinear then DequantizeLinear of `x` on the grid for [lo, hi]
    (round half to even, saturation), as ONNX Runtime computes them: the exact error the search estimates."""
    scale, zp = grid_params(lo, hi, qmin, qmax)
    x = np.asarray(x, np.float64)
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def mse_range(h: TensorHistogram, qmin: int, qmax: int, candidates: int = CANDIDATES) -> tuple[float, float]:
    """The [lo, hi] (fractions of the tensor's min and max, every pair) of least estimated quantisation error
    over the histogram: the clipping error of the values beyond either end, exact to a bin (the bins are a
    sixteenth of a min/max step), plus the rounding error step^2 / 12 of every non-zero value inside (the
    usual estimate where the density is smooth on the scale of a step). Min/max is a candidate."""
    lo0, hi0 = min(h.lo, 0.0), max(h.hi, 0.0)
    n = h.counts.astype(np.float64)
    if hi0 - lo0 <= 0.0 or n.sum() == 0:
        return lo0, hi0
    c = 0.5 * (h.edges[:-1] + h.edges[1:])
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(n * c ** k)]) for k in range(3))
    fr = np.linspace(1.0 / candidates, 1.0, candidates)
    his, los = hi0 * fr if hi0 > 0 else np.zeros(1), lo0 * fr if lo0 < 0 else np.zeros(1)
    i = np.searchsorted(c, his, "right")  # bins above hi: i..end
    t0, t1, t2 = s0[-1] - s0[i], s1[-1] - s1[i], s2[-1] - s2[i]
    clip_hi, above = t2 - 2 * his * t1 + his ** 2 * t0, t0
    j = np.searchsorted(c, los, "left")  # bins below lo: 0..j-1
    clip_lo, below = s2[j] - 2 * los * s1[j] + los ** 2 * s0[j], s0[j]
    inside = s0[-1] - above[:, None] - below[None, :]
    step = (his[:, None] - los[None, :]) / (qmax - qmin)
    err = clip_hi[:, None] + clip_lo[None, :] + step ** 2 / 12.0 * inside
    a, b = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(los[b]), float(his[a])


class ZeroCountingCollector(HistogramCollector):
    """ORT's HistogramCollector (real-valued histograms, bins of fixed width added as the range grows) that
    also counts each tensor's exact zeros (ReLU outputs are mostly zeros, which no grid rounds)."""

    def __init__(self, bins: int = BINS):
        super().__init__(method="distribution", symmetric=False, num_bins=bins, num_quantized_bins=bins,
                         percentile=100.0, scenario="same")
        self.zeros: dict[str, int] = {}

    def collect(self, name_to_arr: dict) -> None:
        for name, arrays in name_to_arr.items():
            parts = arrays if isinstance(arrays, list) else [arrays]
            self.zeros[name] = self.zeros.get(name, 0) + sum(int(np.count_nonzero(np.asarray(a) == 0)) for a in parts)
        with contextlib.redirect_stdout(io.StringIO()):  # (ORT prints a progress line per call)
            self.collect_value(name_to_arr)

    def tensors(self) -> dict[str, TensorHistogram]:
        out = {}
        for name, (hist, edges, lo, hi, _) in self.histogram_dict.items():
            counts = hist.astype(np.int64)
            z = self.zeros.get(name, 0)
            if z:  # the zeros sit in the bin holding 0: out of the histogram, counted apart
                k = min(max(int(np.searchsorted(edges, 0.0, "right")) - 1, 0), counts.size - 1)
                counts[k] = max(counts[k] - z, 0)
            out[name] = TensorHistogram(counts, np.asarray(edges, np.float64), z, float(lo), float(hi))
        return out


class SearchCalibrater(HistogramCalibrater):
    """ORT's HistogramCalibrater (its augmented model, its session, its collect loop) with a
    ZeroCountingCollector; compute_data gives the MSE-optimal ranges as TensorsData (method MinMax: ranges)."""

    def __init__(self, model_path: str | Path, op_types_to_calibrate: Sequence[str] | None,
                 augmented_model_path: str, activations: str = "int8", use_external_data_format: bool = False):
        super().__init__(model_path, op_types_to_calibrate, augmented_model_path,
                         use_external_data_format=use_external_data_format, method="distribution")
        self.collector = ZeroCountingCollector()
        self.grid = GRIDS[activations]

    def compute_data(self) -> TensorsData:
        ranges = {}
        for name, h in self.collector.tensors().items():
            lo, hi = mse_range(h, *self.grid)
            ranges[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        return TensorsData(CalibrationMethod.MinMax, ranges)


class _Chunk(CalibrationDataReader):
    def __init__(self, samples: list[dict]):
        self._it = iter(samples)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def mse_ranges(model_path: Path, samples: list[dict], op_types: Sequence[str] | None, work: Path,
               activations: str = "int8", big: bool = False) -> TensorsData:
    """The MSE-optimal range of every tensor ORT will quantise in `model_path`, from `samples`."""
    if not samples:
        raise KCError("mse calibration: the calibration set is empty", hint="give at least one sample")
    if activations not in GRIDS:
        raise KCError(f"mse calibration: activations '{activations}' are not one of {', '.join(GRIDS)}")
    cal = SearchCalibrater(model_path, list(op_types) if op_types else None, str(work / "mse_augmented.onnx"),
                           activations=activations, use_external_data_format=big)
    cal.augment_graph()
    cal.create_inference_session()
    for i in range(0, len(samples), CHUNK):
        cal.collect_data(_Chunk(samples[i:i + CHUNK]))
    return cal.compute_data()


def write_cache(ranges: TensorsData, path: Path) -> Path:
    """`ranges` as the calibration cache quantize_static reads (calibration_cache_path, method MinMax)."""
    save_tensors_data(ranges, path)
    return path


__all__ = ["SearchCalibrater", "TensorHistogram", "grid_params", "mse_range", "mse_ranges", "quant_mse", "write_cache"]
