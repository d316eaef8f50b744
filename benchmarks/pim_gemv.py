"""A 4096x4096 GEMV on each PIM target: simulated time and the fraction of the internal-bandwidth
roofline it reaches (weights read from the banks / (time x internal bandwidth)).

    python benchmarks/pim_gemv.py [N] [K] [--functional]

With --functional it also compiles the GEMV as a model and times the functional simulation of one
run (the command list executed over the bank image; best of three).

Measured (`python benchmarks/pim_gemv.py`):

    aim      chips= 1 GEMV 4096x4096:  57.89 us, roofline 32.77 us at 1024 GB/s -> 56.6% (580 GB/s)
    aim      chips=16 GEMV 4096x4096:   3.63 us, roofline  2.05 us at 16384 GB/s -> 56.4%
    hbm-pim  chips= 1 GEMV 4096x4096:  44.12 us, roofline 32.77 us at 1024 GB/s -> 74.3% (760 GB/s)
    hbm-pim  chips= 4 GEMV 4096x4096:  11.10 us, roofline  8.19 us at 4096 GB/s -> 73.8%

`--functional` (the command list executed over the bank image, best of three, 2 cores):
aim ~105 ms, hbm-pim ~200 ms per 4096x4096 GEMV (the closure it replaced: ~140 ms and ~350 ms).

The issue asks for >= 80% on aim; the AiM timing we model does not allow it, and we do not tune
it to: in the AiM simulator (github.com/arkhadem/aim_simulator, GDDR6.cpp, preset GDDR6_AiM) the
all-bank MAC (MAC16) requires the row open in all 16 banks and the all-bank activate (ACT16)
opens the same row everywhere, so row switching cannot overlap MACs of the same channel. Per 2 KB
row: 64 ns of MAC columns + tRTP 6 + tRP 16 + tRCD_mac 28 ns -> 64 / 113 = 56.6%. Alternating bank
halves (ACT4 + single-bank or half-bank MACs) would cap at 50%. The ISSCC 2022 / Hot Chips 2022
papers quote peak (1 TFLOPS, 16 Gb/s/pin) rather than a GEMV utilisation. (The issue's "~512 GB/s
internal" is half of what 1 TFLOPS of BF16 MACs reads, 32 banks x 32 B/ns = 1 TB/s, which we use
as the roofline; against 512 GB/s the achieved 580 GB/s would be 113%.)
HBM-PIM does better because its 1 KB rows at tCCD_L = 4 ns give 128 ns of columns per 28 ns of
tRP + tRCD (plus tRTP).
"""

from __future__ import annotations

import dataclasses
import sys

from kcompiler import targets
from kcompiler.backends import make_backend
from kcompiler.backends.pim import kernels


def gemv_roofline(target: str, N: int = 4096, K: int = 4096, chips: int | None = 1) -> dict:
    system = targets.resolve(target)
    dev = system.accelerators[0]
    spec = dev.chip.spec
    if chips is not None:  # one chip (or cube), as the published per-chip figures are
        spec = dataclasses.replace(spec, chips=chips)
    backend = make_backend(targets.Device(dev.name, dataclasses.replace(dev.chip, spec=spec)), system)
    k = kernels.build_matvec(spec, "gemv", "MatMul", 1, 1, N, K)
    cost = backend.kernel_cost(k)
    roof = N * K * spec.element_bytes / spec.internal_bandwidth
    return {"target": target, "chips": spec.chips, "seconds": cost.seconds, "roofline_s": roof,
            "fraction": roof / cost.seconds, "internal_GBps": spec.internal_bandwidth / 1e9,
            "achieved_GBps": N * K * spec.element_bytes / cost.seconds / 1e9, "activations": k.time(spec)[1]}


def functional_run_s(target: str, N: int = 4096, K: int = 4096) -> float:
    """Wall time of one functional run of an N x K GEMV compiled for `target` (best of three)."""
    import time

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import kcompiler

    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                          [numpy_helper.from_array(w, "w")])
    cm = kcompiler.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
                           target=target)
    x = {"x": rng.standard_normal((1, K)).astype(np.float32)}
    cm.run(x, simulate=False)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        cm.run(x, simulate=False)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str]) -> None:
    functional = "--functional" in argv
    argv = [a for a in argv if a != "--functional"]
    N = int(argv[1]) if len(argv) > 1 else 4096
    K = int(argv[2]) if len(argv) > 2 else N
    for t in ("aim", "hbm-pim"):
        for chips in (1, None):
            r = gemv_roofline(t, N, K, chips)
            print(f"{t:8s} chips={r['chips']:2d} GEMV {N}x{K}: {r['seconds'] * 1e6:9.2f} us, roofline "
                  f"{r['roofline_s'] * 1e6:9.2f} us at {r['internal_GBps']:.0f} GB/s -> {100 * r['fraction']:.1f}% "
                  f"({r['achieved_GBps']:.0f} GB/s achieved)")
        if functional:
            print(f"{t:8s} functional simulation of one run: {functional_run_s(t, N, K) * 1e3:.1f} ms")


if __name__ == "__main__":
    main(sys.argv)
