"""Tile-size selection by the cost model.

For a GEMM the tiler enumerates tile sizes (tm, tk, tn) and a loop order, keeps the
candidates whose double-buffered working set fits the core's scratchpad, estimates each
with the engine cycle models (the same ones the timing simulator charges) and keeps the
fastest. Vector ops are tiled along one axis the same way. Conv is an implicit GEMM:
M = N*OH*OW output positions, K = C/g*KH*KW, N = C_out/g; its A operand is the input
patch a tile needs (im2col happens on the fly in the array's feeder), not the K x M
expanded matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import functools

from kcompiler.backends.npu.cost import dma_cycles, systolic_cycles, vector_cycles
from kcompiler.backends.npu.spec import NpuSpec


@dataclass(frozen=True)
class ConvGeom:
    """What the A operand of an implicit-GEMM conv needs: input patches, not im2col rows."""

    n_img: int
    cin_g: int
    kh: int
    kw: int
    sh: int
    dh: int
    oh: int
    ow: int
    hp: int  # padded input height
    wp: int  # padded input width

    def a_elems(self, tm: int, tk: int) -> int:
        """Input elements a (tm output positions) x (tk reduction) tile reads."""
        chans = max(1, math.ceil(tk / (self.kh * self.kw)))
        rows_out = min(self.oh, math.ceil(tm / self.ow) + 1) if tm < self.oh * self.ow else self.oh
        rows_in = min(self.hp, (rows_out - 1) * self.sh + (self.kh - 1) * self.dh + 1)
        imgs = max(1, math.ceil(tm / (self.oh * self.ow)))
        return min(chans, self.cin_g) * rows_in * self.wp * imgs


@dataclass(frozen=True)
class GemmTiling:
    tm: int
    tk: int
    tn: int
    order: str  # "mnk" (weights re-streamed per row block) or "nmk" (weights outer)
    cycles: int  # the cost model's estimate for one core's share
    fits: bool = True  # False: nothing fits the scratchpad (the smallest tile is returned)


def _candidates(dim: int, unit: int, limit: int = 8) -> list[int]:
    """The full dimension and power-of-two multiples of the array side below it."""
    out = {dim}
    t = unit
    while t < dim and len(out) < limit:
        out.add(t)
        t *= 2
    return sorted(out)


def pipeline_cycles(stage_totals: list[int], n_iters: int) -> int:
    """Stages overlapped by double buffering: the slowest stage dominates, plus one
    iteration of each other stage to fill and drain the pipeline."""
    if n_iters <= 0:
        return 0
    longest = max(stage_totals)
    fill = sum(stage_totals) / n_iters - longest / n_iters
    return int(longest + fill)


def spec_cache(fn):
    """Memoise on (spec identity, args): specs hold dicts, so they are not hashable, but each
    loaded chip is one long-lived object."""
    cache: dict = {}

    @functools.wraps(fn)
    def wrapper(spec, *args):
        key = (id(spec), args)
        hit = cache.get(key)
        if hit is None or hit[0] is not spec:
            hit = cache[key] = (spec, fn(spec, *args))
        return hit[1]

    wrapper.cache = cache
    return wrapper


@spec_cache
def tile_gemm(spec: NpuSpec, g: int, m: int, k: int, n: int, conv: ConvGeom | None, b_reused: bool = True,
              epilogue_inputs: int = 0, epilogue_work: float = 1.0, out_bytes: float | None = None) -> GemmTiling:
    """The fastest fitting tiling of one core's GEMM share (g groups of m x k x n); a fused
    epilogue streams `epilogue_inputs` output-sized operand tiles (double-buffered) and
    makes `epilogue_work` vector passes over each output tile. `out_bytes`: bytes per output
    element when they differ from the operands' (an integer GEMM's int32 output)."""
    a = spec.array
    passes = spec.mac_passes  # an emulated GEMM (emulation.py) runs the array once per pass
    eb = spec.elem_bytes
    bpc = spec.dram_bytes_per_cycle / max(1, spec.cores)  # a core's share of DRAM
    lat = int(spec.dram.latency_s * spec.clock_hz)
    issue = spec.issue_cycles
    vec = spec.vector
    # the array side each GEMM dimension is mapped to (see cost.gemm_dims)
    unit_m = a.cols if a.dataflow == "is" else (a.rows if a.dataflow == "os" else a.rows)
    unit_n = a.cols
    unit_k = a.rows
    if conv is not None:
        per_c = conv.kh * conv.kw
        k_cands = sorted({min(k, per_c * c) for c in _candidates(conv.cin_g, max(1, math.ceil(unit_k / per_c)))})
    else:
        k_cands = _candidates(k, unit_k)
    best: GemmTiling | None = None
    best_iters = 0  # the chosen tiling's iteration count: the tie-break between equal cycle totals
    for tm in _candidates(m, unit_m):
        nm = math.ceil(m / tm)
        for tn in _candidates(n, unit_n):
            nn = math.ceil(n / tn)
            acc_bytes = 2 * tm * tn * 4 + 2 * epilogue_inputs * tm * tn * eb  # fp32 accumulator, operands
            for tk in k_cands:
                nk = math.ceil(k / tk)
                a_tile = (conv.a_elems(tm, tk) if conv is not None else tm * tk) * eb
                b_tile = tk * tn * eb
                if 2 * (a_tile + b_tile) + acc_bytes > spec.sram_bytes:
                    continue
                mm = passes * systolic_cycles(a.rows, a.cols, a.dataflow, tm, tk, tn, a.rate) + issue
                vcyc = vector_cycles(vec.lanes, vec.latency["alu"], vec.cycles_per_elem["alu"],
                                     int(tm * tn * epilogue_work)) + issue
                opl = epilogue_inputs * (dma_cycles(tm * tn * eb, bpc, lat) + issue) if epilogue_inputs else 0
                st = dma_cycles(tm * tn * (out_bytes or eb), bpc, lat) + issue
                iters = g * nm * nn * nk
                outs = g * nm * nn
                for order in ("mnk", "nmk"):
                    if order == "mnk":
                        a_loads = g * (nm if nk == 1 else nm * nn * nk)
                        b_loads = g * (1 if (nk == 1 and nn == 1) else nm * nn * nk)
                    else:
                        b_loads = g * (nn if nk == 1 else nm * nn * nk)
                        a_loads = g * (1 if (nk == 1 and nm == 1) else nm * nn * nk)
                    ld = (a_loads * (dma_cycles(a_tile, bpc, lat) + issue)
                          + b_loads * (dma_cycles(b_tile, bpc, lat) + issue) + outs * opl)
                    total = pipeline_cycles([ld, iters * mm, outs * vcyc, outs * st], iters)
                    if best is None or total < best.cycles or (total == best.cycles and iters < best_iters):
                        best, best_iters = GemmTiling(tm, tk, tn, order, total), iters
    if best is None:  # cannot happen for a validated spec: the smallest tile fits
        best = GemmTiling(min(m, unit_m), min(k, unit_k), min(n, unit_n), "mnk", 0, fits=False)
    return best


@spec_cache
def tile_vector(spec: NpuSpec, extent: int, inner_elems: int, n_in: int, fn_class: str,
                work_per_elem: float = 1.0) -> tuple[int, int]:
    """(rows per tile, estimated cycles) for a vector op over `extent` rows of `inner_elems`
    elements with `n_in` streamed inputs, double-buffered."""
    eb = spec.elem_bytes
    bpc = spec.dram_bytes_per_cycle / max(1, spec.cores)
    lat = int(spec.dram.latency_s * spec.clock_hz)
    vec = spec.vector
    issue = spec.issue_cycles
    best = None
    rows = extent
    while True:
        tile_bytes = rows * inner_elems * eb
        if 2 * tile_bytes * (n_in + 1) <= spec.sram_bytes or rows == 1:
            n = math.ceil(extent / rows)
            ld = n * (n_in * (dma_cycles(tile_bytes, bpc, lat) + issue))
            vc = n * (vector_cycles(vec.lanes, vec.latency[fn_class], vec.cycles_per_elem[fn_class],
                                    int(rows * inner_elems * work_per_elem)) + issue)
            st = n * (dma_cycles(tile_bytes, bpc, lat) + issue)
            total = pipeline_cycles([ld, vc, st], n)
            if best is None or total < best[1]:
                best = (rows, total)
        if rows == 1 or n_tiles_exceeds(extent, rows):
            break
        rows = math.ceil(rows / 2)
    return best


def n_tiles_exceeds(extent: int, rows: int, limit: int = 64) -> bool:
    return math.ceil(extent / rows) >= limit


@dataclass(frozen=True)
class AttentionTiling:
    tq: int  # query rows per tile
    tk: int  # key/value rows per tile
    cycles: int  # the cost model's estimate for `bh` heads on one core


@spec_cache
def tile_attention(spec: NpuSpec, bh: int, s: int, t: int, hd: int, hdv: int, mask: bool
                   ) -> AttentionTiling | None:
    """Flash-attention tiling of `bh` (batch x head) problems softmax(q k^T) v on one core: a
    tq-row Q tile stays in SRAM while K/V tiles of tk rows stream past it; the tq x tk score
    tile, the running max/sum and the fp32 output accumulator never leave SRAM. None if no
    tiling fits the scratchpad."""
    a = spec.array
    eb = spec.elem_bytes
    bpc = spec.dram_bytes_per_cycle / max(1, spec.cores)
    lat = int(spec.dram.latency_s * spec.clock_hz)
    issue = spec.issue_cycles
    vec = spec.vector
    best = None
    for tq in _candidates(s, a.cols):
        nq = math.ceil(s / tq)
        for tk in _candidates(t, a.rows):
            nk = math.ceil(t / tk)
            need = (2 * (tq * hd + tk * (hd + hdv) + (tq * tk if mask else 0)) * eb
                    + tq * tk * 4 + tq * hdv * 4 + tq * 8)
            if need > spec.sram_bytes:
                continue
            iters = bh * nq * nk
            ld = iters * (dma_cycles(tk * (hd + hdv) * eb, bpc, lat) + 2 * issue) + bh * nq * (
                dma_cycles(tq * hd * eb, bpc, lat) + issue)
            if mask:
                ld += iters * (dma_cycles(tq * tk * eb, bpc, lat) + issue)
            mm = iters * (spec.mac_passes * (systolic_cycles(a.rows, a.cols, a.dataflow, tq, hd, tk, a.rate)
                                             + systolic_cycles(a.rows, a.cols, a.dataflow, tq, tk, hdv, a.rate))
                          + 2 * issue)
            vx = iters * (vector_cycles(vec.lanes, vec.latency["transcendental"],
                                        vec.cycles_per_elem["transcendental"], 3 * tq * tk) + issue)
            st = bh * nq * (dma_cycles(tq * hdv * eb, bpc, lat) + issue)
            total = pipeline_cycles([ld, mm, vx, st], iters)
            if best is None or total < best.cycles:
                best = AttentionTiling(tq, tk, total)
    return best
