"""Cycle models of the engines: systolic array, vector unit, DMA.

The matrix formula is SCALE-Sim's analytical model (Samajdar et al., "A Systematic
Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim",
ISPASS 2020). A GEMM  C[M,N] = A[M,K] @ B[K,N]  is mapped onto an R x C array by
the dataflow, which chooses the two *spatial* dimensions (S_R on rows, S_C on columns)
and the *temporal* dimension T streamed through:

    ws (weight stationary): S_R = K, S_C = N, T = M
    os (output stationary): S_R = M, S_C = N, T = K
    is (input stationary):  S_R = K, S_C = M, T = N

Each fold fills the array (R cycles of skew in), streams T rows and drains (C cycles
of skew out), so

    cycles = (2*R + C + T - 2) * ceil(S_R / R) * ceil(S_C / C)

with the full R and C charged even for a partial last fold (the array does not
shrink). A dtype with r MACs per PE per cycle divides the streaming part T by r.
"""

from __future__ import annotations

import math

#: vector op classes; the TOML gives a latency and a cycles-per-element for each
VECTOR_CLASSES = ("alu", "mul", "div", "transcendental", "reduce", "pool", "move")


def gemm_dims(dataflow: str, m: int, k: int, n: int) -> tuple[int, int, int]:
    """(S_R, S_C, T) of a GEMM under a dataflow."""
    if dataflow == "ws":
        return k, n, m
    if dataflow == "os":
        return m, n, k
    if dataflow == "is":
        return k, m, n
    raise ValueError(f"unknown dataflow {dataflow!r}")


def systolic_cycles(rows: int, cols: int, dataflow: str, m: int, k: int, n: int, rate: float = 1.0) -> int:
    """Cycles of one GEMM tile on the array (the formula in the module docstring)."""
    if m <= 0 or k <= 0 or n <= 0:
        return 0
    s_r, s_c, t = gemm_dims(dataflow, m, k, n)
    folds = math.ceil(s_r / rows) * math.ceil(s_c / cols)
    t_eff = math.ceil(t / rate) if rate != 1 else t
    return (2 * rows + cols + t_eff - 2) * folds


def vector_cycles(lanes: int, latency: int, cycles_per_elem: float, elems: int) -> int:
    """A vector instruction over `elems` elements: pipeline latency + one lane-group per step."""
    if elems <= 0:
        return 0
    return int(latency + math.ceil(math.ceil(elems / lanes) * cycles_per_elem))


def dma_cycles(nbytes: float, bytes_per_cycle: float, latency_cycles: int) -> int:
    if nbytes <= 0:
        return 0
    return int(latency_cycles + math.ceil(nbytes / bytes_per_cycle))
