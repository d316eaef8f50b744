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
quantise made an output, `select_tensors_to_calibrate`), with a collector that keeps each tensor's exact
min/max and a seeded uniform subsample of its values (an unbiased estimate of the MSE at bounded memory);
the chosen ranges are ORT's TensorsData, which quantize_static reads through its calibration cache, so the
scales and zero points are computed by ORT exactly as for its own calibrators.

What it clips: at int8 a lone outlier of magnitude R costs about R^2 clipped and saves about
N R^2 / (12 * 255^2) of rounding error over N values, so it is clipped only where it is rarer than about one
value in 10^6 (a CNN activation over a calibration set), and kept in a small tensor; min/max is always a
candidate, so the chosen range never has a larger error on the (subsampled) data than minmax's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization.calibrate import (CalibrationDataCollector, CalibrationDataReader, CalibrationMethod,
                                                HistogramCalibrater, TensorData, TensorsData, save_tensors_data)

from kcompiler.errors import KCError

#: values of each tensor kept for the search (a uniform subsample over the calibration samples)
SAMPLE_BUDGET = 1 << 16
#: candidate clipping fractions per sweep (of the tensor's max, and of its min, in turn)
SWEEP = 64
#: samples the augmented model runs per collect call (its outputs are every calibrated tensor: bounded memory)
CHUNK = 4
#: the integer grids ORT uses for activations: (qmin, qmax)
GRIDS = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass
class TensorValues:
    """What the search needs of one tensor: its exact min and max and a uniform subsample of its values."""

    lo: float
    hi: float
    values: np.ndarray


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
    (round half to even, saturation), as ONNX Runtime computes them."""
    scale, zp = grid_params(lo, hi, qmin, qmax)
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def mse_range(t: TensorValues, qmin: int, qmax: int, sweep: int = SWEEP) -> tuple[float, float]:
    """The [lo, hi] (each a fraction of the tensor's own min and max) minimising quant_mse on its values:
    one sweep clipping both ends by the same fraction, then each end alone with the other fixed (twice:
    the error is nearly separable in the two ends). Min/max is a candidate, so the result never has a
    larger error on the data than minmax's range."""
    lo0, hi0 = min(t.lo, 0.0), max(t.hi, 0.0)
    x = t.values.astype(np.float64)
    if x.size == 0 or hi0 - lo0 <= 0.0:
        return lo0, hi0
    fracs = np.linspace(1.0 / sweep, 1.0, sweep)

    def best(cands: list[tuple[float, float]]) -> tuple[float, tuple[float, float]]:
        errs = [quant_mse(x, lo, hi, qmin, qmax) for lo, hi in cands]
        i = int(np.argmin(errs))
        return errs[i], cands[i]

    err, (lo, hi) = best([(lo0, hi0)] + [(lo0 * f, hi0 * f) for f in fracs])
    for _ in range(2):
        if hi0 > 0.0:
            e, (lo, hi) = best([(lo, hi)] + [(lo, hi0 * f) for f in fracs])
        if lo0 < 0.0:
            e, (lo, hi) = best([(lo, hi)] + [(lo0 * f, hi) for f in fracs])
        if e >= err:
            break
        err = e
    return lo, hi


class SampleCollector(CalibrationDataCollector):
    """ORT's collector interface: each tensor's exact min/max and `per_sample` values drawn (seeded,
    uniformly, with replacement) from every calibration sample's tensor."""

    def __init__(self, per_sample: int, seed: int = 0):
        self.per_sample = max(1, per_sample)
        self.rng = np.random.default_rng(seed)
        self.parts: dict[str, list[np.ndarray]] = {}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}

    def collect(self, name_to_arr: dict) -> None:
        for name, arrays in name_to_arr.items():
            for a in arrays if isinstance(arrays, list) else [arrays]:
                flat = np.asarray(a, np.float32).ravel()
                flat = flat[np.isfinite(flat)]
                if flat.size == 0:
                    continue
                self.lo[name] = min(self.lo.get(name, np.inf), float(flat.min()))
                self.hi[name] = max(self.hi.get(name, -np.inf), float(flat.max()))
                pick = flat if flat.size <= self.per_sample else flat[self.rng.integers(0, flat.size, self.per_sample)]
                self.parts.setdefault(name, []).append(pick.copy())

    def tensors(self) -> dict[str, TensorValues]:
        return {n: TensorValues(self.lo[n], self.hi[n], np.concatenate(p)) for n, p in self.parts.items()}

    def compute_collection_result(self) -> dict[str, TensorValues]:
        return self.tensors()


class SearchCalibrater(HistogramCalibrater):
    """ORT's HistogramCalibrater (its augmented model, its session, its collect loop) with a
    SampleCollector in place of the histogram; compute_data gives the MSE-optimal ranges as TensorsData."""

    def __init__(self, model_path: str | Path, op_types_to_calibrate: Sequence[str] | None,
                 augmented_model_path: str, per_sample: int, activations: str = "int8",
                 use_external_data_format: bool = False):
        super().__init__(model_path, op_types_to_calibrate, augmented_model_path,
                         use_external_data_format=use_external_data_format, method="percentile")
        self.collector = SampleCollector(per_sample)
        self.grid = GRIDS[activations]

    def compute_data(self) -> TensorsData:
        ranges = {}
        for name, t in self.collector.tensors().items():
            lo, hi = mse_range(t, *self.grid)
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
                           per_sample=-(-SAMPLE_BUDGET // len(samples)), activations=activations,
                           use_external_data_format=big)
    cal.augment_graph()
    cal.create_inference_session()
    for i in range(0, len(samples), CHUNK):
        cal.collect_data(_Chunk(samples[i:i + CHUNK]))
    return cal.compute_data()


def write_cache(ranges: TensorsData, path: Path) -> Path:
    """`ranges` as the calibration cache quantize_static reads (calibration_cache_path, method MinMax)."""
    save_tensors_data(ranges, path)
    return path


__all__ = ["SearchCalibrater", "TensorValues", "grid_params", "mse_range", "mse_ranges", "quant_mse", "write_cache"]
