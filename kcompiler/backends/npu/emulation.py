"""Which array dtype a GEMM runs at, and in how many passes: the one rule placement and timing share.

A chip's systolic array lists the operand dtypes it multiplies (``npu.array.dtypes``). A GEMM whose
operands it lists runs once at that dtype. One whose operands it does not list (float32 anywhere,
float16 on rngd, any float on warboy) can only run as an *emulation*: its operands are split into
terms of a dtype the array lists, and the products of the terms that matter are accumulated, each
product one pass of the array over the whole GEMM. The program is charged for every pass (cycles
and MAC energy); DMA and scratchpad bytes stay those of the real operands (the split happens as
tiles are fed to the array).

Two families, from the literature:

- **float splits** on a floating-point array (fp16, bf16, tf32): x = hi + lo (+ lo2), products of
  the terms with the smallest ones dropped. float32 on fp16 or tf32: two terms, three products
  hi*hi + hi*lo + lo*hi (Ootomo & Yokota, "Recovering single precision accuracy from Tensor Cores
  while surpassing the FP32 theoretical peak performance", IJHPCA 2022, arXiv:2203.03341; and
  SGEMM-cube, arXiv:2507.23387, whose abstract says each FP32 operand is decomposed "into two FP16
  values" and keeps "up to 22 bits of mantissa"). float32 on bf16: bf16 has "8 significant bits of
  precision" (Henry, Tang, Heinecke, ARITH 2019, arXiv:1904.06376, abstract), so a two-term split
  holds 16 of float32's 24 bits and cannot be the float32 program the simulator computes; three
  terms (AMD's AI Engine guide, UG1603, emulates "an fp32 value ... using the sum of 3 bfloat16
  values"; Henry et al.'s abstract: FP32 numbers decomposed "in several BF16 numbers") with the
  six products of i + j <= 4 kept: 6 passes (the paper's "bf16x6" by our reading of it; "bf16x3",
  two terms and three products, is the cheaper variant XNNPACK uses, which keeps ~16 bits).
  float16 on bf16 (rngd): fp16's 11 significant bits need two bf16 terms, and both operands need
  both: 3 passes (hi*hi + hi*lo + lo*hi; a 2-pass form would leave one operand at bf16 precision).
  bfloat16 on fp16 (atom): the 8-bit significand fits fp16's 11, one pass with a per-row
  power-of-two scaling for fp16's narrower exponent range (our assumption: elements far below
  their row's largest are flushed).
- **the Ozaki scheme on an integer array** (warboy, INT8 only): per-row (A) and per-column (B)
  power-of-two scaling, each operand split into s int8 slices of 7 bits, exact int32 products of
  the slices with i + j <= s + 1 kept: s(s+1)/2 passes (Ootomo, Ozaki, Yokota, "DGEMM on integer
  matrix multiplication unit", IJHPCA 2024, arXiv:2306.11975; Uchino, Ozaki, Imamura, SC'25,
  arXiv:2508.03984, emulate SGEMM and DGEMM on INT8 engines, by a third-party summary of it with the
  CRT-based Ozaki scheme II, arXiv:2504.08009, which splits no input and has another pass
  structure; we model scheme I). float32's 24-bit significand needs s = 4: 10 passes; float16 (11
  bits) and bfloat16 (8 bits) s = 2: 3 passes. The pass counts follow our reading of these
  papers: the text we could retrieve (their abstracts) states no pass count, so they are derived
  from the slice widths, not quoted.

When the array lists a float format, the float split is used even where int8 passes would be
cheaper (atom: float32 as 3 fp16 passes at a quarter of the int8 rate): the float terms keep each
element's own exponent, while the Ozaki slices share one exponent per row or column, so their
accuracy depends on the rows' dynamic range.

The simulator keeps computing an emulated GEMM in float32, the emulation's accuracy target: a
modelling simplification (the emulation's own rounding is not modelled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

#: significand bits (with the implicit one) of the float formats an operand may have
SIGNIFICAND_BITS = {"fp32": 24, "tf32": 11, "fp16": 11, "bf16": 8}
#: float formats an array may list, in the order preferred when several could emulate
_FLOAT_ARRAYS = ("tf32", "fp16", "bf16")
#: (operand, float array format) -> (passes, source) of the float splits (module docstring)
FLOAT_SPLITS: dict[tuple[str, str], tuple[int, str]] = {
    ("fp32", "fp16"): (3, "Ootomo & Yokota, IJHPCA 2022 (arXiv:2203.03341); SGEMM-cube, arXiv:2507.23387"),
    ("fp32", "tf32"): (3, "Ootomo & Yokota, IJHPCA 2022 (arXiv:2203.03341)"),
    ("fp32", "bf16"): (6, "Henry, Tang, Heinecke, ARITH 2019 (arXiv:1904.06376): bf16x6"),
    ("fp16", "bf16"): (3, "two-term bf16 split of fp16's 11 bits (as Henry et al., ARITH 2019)"),
    ("bf16", "fp16"): (1, "bf16's 8-bit significand fits fp16's 11; per-row scaling for the range (assumption)"),
    ("bf16", "tf32"): (1, "bf16's 8-bit significand and range fit tf32"),
    ("fp16", "tf32"): (1, "fp16 values are exact in tf32"),
}
#: magnitude bits of one int8 slice of the Ozaki scheme (the sign is the slice's own)
OZAKI_SLICE_BITS = 7
OZAKI_SOURCE = "Ozaki scheme on int8: Ootomo, Ozaki, Yokota, IJHPCA 2024 (arXiv:2306.11975)"


@dataclass(frozen=True)
class Charge:
    """How a GEMM with `operand` operands runs on an array: `passes` passes at array dtype `dtype`."""

    operand: str  # chip-table name of the operands ("fp32", "fp16", "int8", ...)
    dtype: str  # the array dtype every pass runs (and is charged) at
    passes: int = 1
    source: str = ""

    @property
    def emulated(self) -> bool:
        return self.dtype != self.operand or self.passes > 1

    @property
    def label(self) -> str:
        """What the op computed at, for reports: "int8", or "fp32 as 10 int8 passes"."""
        if not self.emulated:
            return self.dtype
        return f"{self.operand} as {self.passes} {self.dtype} pass{'es' if self.passes > 1 else ''}"


def ozaki_passes(operand: str) -> int:
    """s(s+1)/2 for s = ceil(significand bits / 7) int8 slices (10 for float32)."""
    s = math.ceil(SIGNIFICAND_BITS[operand] / OZAKI_SLICE_BITS)
    return s * (s + 1) // 2


def charge(array_dtypes: Mapping[str, float], operand: str, fallback: str) -> Charge:
    """The one rule: how a GEMM whose operands are chip dtype `operand` runs on an array listing
    `array_dtypes` (dtype -> MACs per PE per cycle). Natively when listed; else a float split on a
    float format the array lists (the fewest cycles among them), else the Ozaki scheme on int8;
    an operand no rule covers (e.g. fp8 on a chip without it) is charged once at `fallback`, the
    chip's own dtype, and says so."""
    if operand in array_dtypes:
        return Charge(operand, operand)
    best = None
    for fmt in _FLOAT_ARRAYS:
        rule = FLOAT_SPLITS.get((operand, fmt))
        if rule is not None and fmt in array_dtypes:
            passes, src = rule
            cost = passes / array_dtypes[fmt]
            if best is None or cost < best[0]:
                best = (cost, Charge(operand, fmt, passes, src))
    if best is not None:
        return best[1]
    if operand in SIGNIFICAND_BITS and "int8" in array_dtypes:
        return Charge(operand, "int8", ozaki_passes(operand), OZAKI_SOURCE)
    return Charge(operand, fallback, 1, f"no emulation rule for {operand}: charged once at {fallback} (assumption)")
