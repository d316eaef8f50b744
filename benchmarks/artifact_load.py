"""Loading a .kcm artifact: wall time and peak RSS, for ResNet-50 with real weights.

The bundled ResNet-50 stores its weights as ConstantOfShape fills, so its artifact holds
almost no weight bytes; this benchmark also builds a copy with every weight a real
(random) initializer (25.5 M parameters, 102 MB) to show that loading maps the weights
instead of copying them. Each load runs in a fresh process; peak RSS growth is measured
with Linux's resettable high-water mark (write 5 to /proc/self/clear_refs, read VmHWM).

    python benchmarks/artifact_load.py            # resnet50 (bundled and real weights) on atom and host
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
import kcompiler, numpy as np  # imports before the measurement

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

path, warm = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
kcompiler.load(warm)  # a small artifact for the same target: imports every module loading needs
cold_s = time.perf_counter() - t0
open("/proc/self/clear_refs", "w").write("5")   # reset VmHWM to the current RSS
rss0 = status("VmRSS")
t0 = time.perf_counter()
cm = kcompiler.load(path)
load_s = time.perf_counter() - t0
peak_load = status("VmHWM") - rss0
rep = cm.simulate()
t1 = time.perf_counter()
cm.run(cm.random_inputs())
run_s = time.perf_counter() - t1
print(json.dumps({"load_s": load_s, "first_load_with_imports_s": cold_s, "peak_rss_growth_load": peak_load, "rss_after_run": status("VmRSS") - rss0,
                  "latency_s": rep.latency_s, "first_run_s": run_s}))
"""


def materialize(name: str, out_path: str, seed: int = 0) -> str:
    """The bundled CNN with real (random) weights, saved as external data."""
    from kcompiler.zoo import with_random_weights

    return with_random_weights(name, out_path, seed)


def measure(path: str, warm: str, repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, path, warm], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["load_s"])
    best["peak_rss_growth_load"] = max(r["peak_rss_growth_load"] for r in runs)
    return best


def main() -> None:
    import kcompiler
    from kcompiler.artifact import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        real = materialize("resnet50", os.path.join(tmp, "resnet50_weights.onnx"))
        print(f"{'model':<24} {'target':<6} {'file MB':>8} {'weights MB':>10} {'save s':>7} {'load s':>7} "
              f"{'peak RSS +MB (load)':>19} {'RSS +MB (after run)':>19}   (first load in a process, with imports)")
        for label, model in (("resnet50 (bundled)", "resnet50"), ("resnet50 (real weights)", real)):
            for target in ("atom", "host"):
                warm = os.path.join(tmp, f"warm-{target}.kcm")
                kcompiler.compile("squeezenet", target=target).save(warm)
                cm = kcompiler.compile(model, target=target)
                path = os.path.join(tmp, f"{target}.kcm")
                t0 = time.perf_counter()
                cm.save(path)
                save_s = time.perf_counter() - t0
                weights = [s for s in read_manifest(path)["sections"] if s["name"] == "weights"][0]["length"]
                r = measure(path, warm)
                print(f"{label:<24} {target:<6} {os.path.getsize(path) / 1e6:>8.1f} {weights / 1e6:>10.1f} "
                      f"{save_s:>7.2f} {r['load_s']:>7.3f} {r['peak_rss_growth_load'] / 1e6:>19.1f} "
                      f"{r['rss_after_run'] / 1e6:>19.1f}   ({r['first_load_with_imports_s']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
