"""A 4096x4096 GEMV on each PIM target: simulated time and the fraction of the internal-bandwidth
roofline it reaches (weights read from the banks / (time x internal bandwidth)).

    python benchmarks/pim_gemv.py [N] [K]
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


def main(argv: list[str]) -> None:
    N = int(argv[1]) if len(argv) > 1 else 4096
    K = int(argv[2]) if len(argv) > 2 else N
    for t in ("aim", "hbm-pim"):
        for chips in (1, None):
            r = gemv_roofline(t, N, K, chips)
            print(f"{t:8s} chips={r['chips']:2d} GEMV {N}x{K}: {r['seconds'] * 1e6:9.2f} us, roofline "
                  f"{r['roofline_s'] * 1e6:9.2f} us at {r['internal_GBps']:.0f} GB/s -> {100 * r['fraction']:.1f}% "
                  f"({r['achieved_GBps']:.0f} GB/s achieved)")


if __name__ == "__main__":
    main(sys.argv)
