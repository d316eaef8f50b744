"""Fusion and graph-optimisation rules, one module per rule family.

Each module registers one pass (a table of named rules); ``FUSION_PASSES`` is their order
in the ``fusion`` pipeline: exact rewrites that shrink the graph first (BatchNorm and
constant folding, layout cancellation), then raising decomposed forms to single ops, then
the hardware-specific fusions that read the target (attention, epilogues, elementwise
chains). Every rule name is in ``RULES`` so ``--disable-pass RULE`` works;
``--disable-pass fusion`` turns all of them off.
"""

from kcompiler.passes.fusion import (activations, attention, batchnorm, epilogue, gelu,  # noqa: F401
                                     norms)
from kcompiler.passes.fusion._base import RULES

#: each pass removes what it replaced and inserts fused nodes where the last node they absorb
#: stood, so the graph stays sorted and needs no dce/toposort afterwards
FUSION_PASSES = ["fold-batchnorm", "raise-gelu", "raise-norms", "raise-activations", "fuse-attention",
                 "fuse-epilogue"]

__all__ = ["FUSION_PASSES", "RULES"]
