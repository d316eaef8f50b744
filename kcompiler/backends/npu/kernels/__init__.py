"""Lowered ops ("kernels"): for each node, its instructions over DRAM buffers and SRAM tiles.

A kernel is built from one ONNX node. ``emit`` appends the node's instructions to the
codegen: per core, DMA loads of operand tiles into the scratchpad at the addresses its layout
chose, MATMUL / VECTOR instructions over those addresses, DMA stores of the results, with
dependency tokens. Every value the program touches lives in a DRAM buffer at an address the
codegen chose; constant inputs (weights, folded batch-norm factors) are laid out there by the
compiler, in the layout the instructions read. The simulator executes these instructions and
nothing else (sim/): no kernel computes a value.

In timing mode no kernel reads a weight: buffers are laid out, no bytes are written.

Modules: attrs (reading a node), codegen (layouts, the program being built), common (the Kernel
base, operands), copy (data movement), vector (the vector unit's tiling) with elementwise and
reduction, window (window functions) with pool, gemm (the systolic array's GEMMs and their base)
with conv and depthwise, attention.
"""

from __future__ import annotations

# the GEMM family registers its lowerings with GemmKernel as its modules load (gemm.lowering_of)
from kcompiler.backends.npu.kernels import conv, depthwise, qgemm  # noqa: F401
from kcompiler.backends.npu.kernels.gemm import GemmKernel, epilogue_fits

__all__ = ["GemmKernel", "epilogue_fits"]
