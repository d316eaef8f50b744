"""Fusion and graph-optimisation rules, one module per rule family.

Each module registers one pass (a table of named rules); ``FUSION_PASSES`` is their order
in the ``fusion`` pipeline: exact rewrites that shrink the graph first (BatchNorm and
constant Mul/Add folding), then raising decomposed forms to single ops, then the fusions
that read the target (attention), Transpose/Reshape cancellation, then epilogues and
elementwise chains. Every rule name is in ``RULES`` so ``--disable-pass RULE`` works;
``--disable-pass fusion`` turns all of them off.
"""

from kcompiler.passes.fusion import (activations, affine, attention, backend, batchnorm,  # noqa: F401
                                     conv1d, elementwise, epilogue, fp8, gelu, layout, norms)
from kcompiler.passes.fusion._base import RULES

#: each pass removes what it replaced and inserts fused nodes where the last node they absorb
#: stood, so the graph stays sorted and needs no dce/toposort afterwards
#: 1-D convolutions become 2-D ones of height 1 after BatchNorm/affine folding has used their weights;
#: layout cancellation runs after attention fusion, which needs K's head-split and Kᵀ
#: Transposes apart; elementwise chains after epilogues, so epilogues take their activations
#: first; the target's own patterns (Backend.patterns) last, over what the generic rules left
FUSION_PASSES = ["fold-batchnorm", "fold-affine", "raise-conv1d", "raise-gelu", "raise-norms", "raise-activations",
                 "fuse-attention", "cancel-layout", "fuse-fp8-gemm", "fuse-epilogue", "fuse-elementwise", "backend-patterns"]

__all__ = ["FUSION_PASSES", "RULES"]
