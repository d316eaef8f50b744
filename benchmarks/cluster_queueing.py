"""Is the fleet simulator's event engine right? Queueing theory says what it must give.

    python benchmarks/cluster_queueing.py

One FCFS server with deterministic service (a dynamic batcher of batch 1 in kcompiler.cluster's
engine) fed Poisson arrivals is M/D/1, whose mean waiting time is Pollaczek-Khinchine's
rho * D / (2 (1 - rho)). For utilisation 0.5 and 0.8 the script prints:
- one run of 10^5 requests (seed 0) and its error against P-K;
- ten independent runs of 10^5 requests: the mean, its error, and the runs' standard deviation
  (the statistical error one 10^5-request run carries: waits at rho = 0.8 are so autocorrelated
  that a single run's estimate moves by about 2% from seed to seed — Whitt, "Planning queueing
  simulations", Management Science 35(11), 1989, gives the (1 - rho)^-4 growth of the run length
  a given precision needs);
- one run of 10^6 requests;
- Little's law, L = lambda W, with L sampled on a time grid (10^5 points) over the middle 80% of
  the 10^6-request run, against lambda and W measured on the requests that arrived in it.
The last line is the worst P-K error of the ten-run means: `M/D/1 worst error: X%`.

Measured 2026-12-01 (2-core AMD EPYC): see the closing note of the K-Cloud issue.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))

from test_cluster import _little, _md1  # noqa: E402  (the tests' own M/D/1 driver)


def main() -> None:
    worst = 0.0
    for rho in (0.5, 0.8):
        pk = rho / (2 * (1 - rho))
        t = time.perf_counter()
        a, f = _md1(rho, 100_000, seed=0)
        one = (f - a - 1.0).mean()
        dt = time.perf_counter() - t
        runs = []
        for seed in range(10):
            a, f = _md1(rho, 100_000, seed=seed)
            runs.append((f - a - 1.0).mean())
        runs = np.array(runs)
        mean_err = (runs.mean() - pk) / pk * 100
        worst = max(worst, abs(mean_err))
        a, f = _md1(rho, 1_000_000, seed=100)
        big = (f - a - 1.0).mean()
        L, lw = _little(a, f)
        print(f"rho {rho}: P-K Wq = {pk:.4f} D")
        print(f"  one run of 1e5 (seed 0):   Wq {one:.4f}  error {(one - pk) / pk * 100:+.2f}%  ({dt:.2f} s)")
        print(f"  ten runs of 1e5:           mean {runs.mean():.4f}  error {mean_err:+.2f}%  "
              f"(runs' std {runs.std(ddof=1) / pk * 100:.2f}% of P-K; min {(runs.min() - pk) / pk * 100:+.2f}%, "
              f"max {(runs.max() - pk) / pk * 100:+.2f}%)")
        print(f"  one run of 1e6:            Wq {big:.4f}  error {(big - pk) / pk * 100:+.2f}%")
        print(f"  Little's law (1e6 run):    L {L:.4f}  lambda*W {lw:.4f}  error {(L - lw) / lw * 100:+.3f}%")
    print(f"M/D/1 worst error: {worst:.2f}%")


if __name__ == "__main__":
    main()
