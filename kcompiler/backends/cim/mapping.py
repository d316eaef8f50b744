"""Weights -> crossbar images: quantise, slice, encode, tile.

A GEMM's constant weight matrix W [K, N] (K inputs, N outputs) is quantised per output column to
``weight_bits`` signed integers q (scale s_n = max|W[:, n]| / (2^(b-1) - 1), kept by the digital
periphery), encoded as a differential pair (+ device holds max(q, 0), - device max(-q, 0)) or offset
(one device holds q + 2^(b-1)), and its magnitude sliced into ``cell_bits`` digits, least significant
first, one physical column per digit: output n's slice k sits in physical column n * slices + k.
The matrix is tiled into ``rows`` x ``outputs_per_crossbar`` blocks, one image per block.

An image is what the chip programs into one crossbar: the level of every device (uint8/uint16
``codes[plane, row, col]``) and the periphery's tables (each physical column's output and slice,
each output's scale, each column's ADC full scale in level units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kcompiler.backends.cim.spec import CimSpec


@dataclass
class Image:
    """One crossbar's contents."""

    codes: np.ndarray  # [planes, rows, cols] device levels
    col_out: np.ndarray  # [cols] int32: the output a physical column adds to (-1: unused)
    col_slice: np.ndarray  # [cols] int32: which weight digit the column holds
    out_scale: np.ndarray  # [outputs_per_crossbar] float32: the weight scale of each output
    adc_fs: np.ndarray  # [cols] float32: ADC full scale, in level x input-digit units
    col_flip: np.ndarray  # [cols] uint8: 1 where the column stores (levels - 1 - digit) (ISAAC's flip)


@dataclass(frozen=True)
class Tile:
    """Where one block of W went: rows k0.. of the input, outputs n0.., in image `image`."""

    image: int
    k0: int
    rows: int
    n0: int
    outs: int


def quantise(spec: CimSpec, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int64 [K, N], scale float32 [N]): per-column symmetric quantisation to weight_bits."""
    qmax = (1 << (spec.weight_bits - 1)) - 1
    amax = np.abs(w).max(axis=0).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int64)
    return q, scale.astype(np.float32)


def digits(spec: CimSpec, m: np.ndarray) -> list[np.ndarray]:
    """The cell_bits digits of non-negative integers m, least significant first (spec.slices of them)."""
    base = spec.levels
    return [(m >> (spec.cell_bits * k)) & (base - 1) for k in range(spec.slices)]


def max_digit(spec: CimSpec) -> int:
    """The largest input digit a read applies (a signed PWM input: its largest magnitude)."""
    if spec.input_slices == 1:
        return (1 << (spec.input_bits - 1)) - 1
    return (1 << spec.dac_bits) - 1


def adc_full_scale(spec: CimSpec, planes: np.ndarray) -> np.ndarray:
    """Each physical column's ADC full scale, in (device level x input digit) units.

    full: the largest current the column can carry (no input saturates it); calibrated:
    adc_headroom standard deviations of the column's output for inputs spread over the DAC range
    (std about max_digit / 3), i.e. headroom x ||column|| x max_digit / 3, capped at the full scale."""
    if spec.encoding == "differential":
        net = planes[0].astype(np.float64) - planes[1]
        full = np.maximum(planes[0].sum(axis=0), planes[1].sum(axis=0)).astype(np.float64)
    else:
        net = planes[0].astype(np.float64)
        full = planes[0].sum(axis=0).astype(np.float64)
    d = max_digit(spec)
    full = full * d
    if spec.adc_range == "calibrated":
        full = np.minimum(full, spec.adc_headroom * np.sqrt((net * net).sum(axis=0)) * d / 3.0)
    return np.maximum(full, 1.0).astype(np.float32)


def flip_columns(spec: CimSpec, codes: np.ndarray, rows: int) -> np.ndarray:
    """ISAAC's encoding (Shafiee et al., ISCA 2016, Sec. IV-B): a single-device column whose digits
    sum to more than half its maximum stores their complements (levels - 1 - digit) instead, and the
    periphery recovers sum(x * digit) as (levels - 1) * sum(x) - sum(x * complement). A column's worst
    case then halves, which saves the ADC one bit. Flips `codes` in place (used rows only)."""
    flip = np.zeros(spec.cols, np.uint8)
    if spec.encoding != "offset":
        return flip
    top = spec.levels - 1
    block = codes[0, :rows]
    flip[:] = block.sum(axis=0, dtype=np.int64) * 2 > top * rows
    block[:, flip.astype(bool)] = top - block[:, flip.astype(bool)]
    return flip


def tiles_of(spec: CimSpec, k_dim: int, n_dim: int, first_image: int) -> list[Tile]:
    """Where the blocks of a K x N matrix go (no weights needed: what a timing-only program uses)."""
    per = spec.outputs_per_crossbar
    return [Tile(first_image + i, k0, min(spec.rows, k_dim - k0), n0, min(per, n_dim - n0))
            for i, (k0, n0) in enumerate((k0, n0) for k0 in range(0, k_dim, spec.rows)
                                         for n0 in range(0, n_dim, per))]


def map_matrix(spec: CimSpec, w: np.ndarray, first_image: int) -> tuple[list[Tile], list[Image]]:
    """Tile W [K, N] onto crossbars; images are numbered from first_image."""
    k_dim, n_dim = w.shape
    q, scale = quantise(spec, w)
    if spec.encoding == "differential":
        mags = [np.maximum(q, 0), np.maximum(-q, 0)]
    else:
        mags = [q + (1 << (spec.weight_bits - 1))]
    dtype = np.uint8 if spec.cell_bits <= 8 else np.uint16
    per = spec.outputs_per_crossbar
    tiles = tiles_of(spec, k_dim, n_dim, first_image)
    images = []
    for t in tiles:
        codes = np.zeros((spec.planes, spec.rows, spec.cols), dtype)
        col_out = np.full(spec.cols, -1, np.int32)
        col_slice = np.zeros(spec.cols, np.int32)
        span = slice(0, t.outs * spec.slices)
        for p, m in enumerate(mags):
            for k, dig in enumerate(digits(spec, m[t.k0:t.k0 + t.rows, t.n0:t.n0 + t.outs])):
                codes[p, :t.rows, k:span.stop:spec.slices] = dig
        for k in range(spec.slices):
            col_out[k:span.stop:spec.slices] = np.arange(t.outs)
            col_slice[k:span.stop:spec.slices] = k
        out_scale = np.zeros(per, np.float32)
        out_scale[:t.outs] = scale[t.n0:t.n0 + t.outs]
        flip = flip_columns(spec, codes, t.rows)
        images.append(Image(codes, col_out, col_slice, out_scale, adc_full_scale(spec, codes), flip))
    return tiles, images


def crossbars_needed(spec: CimSpec, k_dim: int, n_dim: int) -> int:
    return math.ceil(k_dim / spec.rows) * math.ceil(n_dim / spec.outputs_per_crossbar)
