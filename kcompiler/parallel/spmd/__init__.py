"""SPMD rewriting: every node runs once per rank of its device group, on a slice of the data.

    layout.py        how the ranks hold a value: replicated, shard(axis) or partial sums
    decision.py      what a sharding rule sees (In) and decides (Decision), shared helpers
    rules_shape.py   rules of elementwise ops, normalisations, reductions and views
    rules_linear.py  rules of MatMul, Gemm, their fused forms and Attention
    rules.py         the table: op -> rule
    convert.py       values across the ranks, and the communication that changes their layout
    rewriter.py      the walk that applies the rules and rewrites the graph (Rewriter)
"""

from __future__ import annotations

from kcompiler.parallel.spmd.convert import Analysis, CommEvent
from kcompiler.parallel.spmd.layout import Layout, is_const, is_const_producer
from kcompiler.parallel.spmd.rewriter import Rewriter
from kcompiler.parallel.spmd.rules import DOMAIN_RULES, RULES

__all__ = ["Analysis", "CommEvent", "DOMAIN_RULES", "Layout", "RULES", "Rewriter", "is_const", "is_const_producer"]
