"""kc sweep on a multi-process Ray cluster on localhost, against the same sweep run serially.

Starts a head node (`ray start --head`, 1 CPU) and a second node process joining it (1 CPU),
runs a small sweep through `kc sweep --address`, checks that every point's figures equal the
serial run's, and stops both nodes whatever happens (bounded: every step has a timeout).

    python benchmarks/sweep_cluster.py            # prints the figures; exit status 0 when equal

Uses its own Ray temp folder and ports, so it does not touch a Ray cluster you already run
(but `ray stop` at the end stops every Ray process of this user, as Ray offers no narrower stop).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
[sweep]
name = "cluster-check"
target = "atom"
objectives = ["latency", "energy", "area"]

[[models]]
name = "bert-tiny"
seq = 16

[[models]]
name = "resnet50"

[parameters]
"npu.array.rows" = [32, 64]
"npu.dram.bandwidth" = [128e9, 256e9]
"""
PORT = 6391
FIGS = ("latency_s", "energy_j", "dram_bytes", "cycles", "macs", "area_mm2", "status")


def ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def sh(cmd, timeout, **kw):
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, timeout=timeout, check=True, capture_output=True, text=True, **kw)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kc-sweep-cluster-"))
    tmp = Path("/tmp") / f"kcray{os.getpid()}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "KC_THREADS": "1", "OMP_NUM_THREADS": "1"}
    (work / "spec.toml").write_text(SPEC)
    kc = [sys.executable, "-m", "kcompiler", "sweep", str(work / "spec.toml"), "--quiet"]
    try:
        sh([ray_bin(), "start", "--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"], 120, env=env)
        sh([ray_bin(), "start", f"--address=127.0.0.1:{PORT}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
            "--disable-usage-stats"], 120, env=env)
        deadline = time.monotonic() + 60
        while True:  # the second node registers with the head a moment after `ray start` returns
            status = sh([ray_bin(), "status", f"--address=127.0.0.1:{PORT}"], 60, env=env).stdout
            nodes = status.split("Pending:")[0].count("node_")
            if nodes >= 2 or time.monotonic() > deadline:
                break
            time.sleep(2)
        t0 = time.perf_counter()
        sh(kc + ["--address", f"127.0.0.1:{PORT}", "--out", str(work / "cluster.duckdb"),
                 "--json", str(work / "cluster.json")], 900, env=env)
        t_cluster = time.perf_counter() - t0
        t0 = time.perf_counter()
        sh(kc + ["--serial", "--out", str(work / "serial.duckdb"), "--json", str(work / "serial.json")], 900, env=env)
        t_serial = time.perf_counter() - t0
        a = json.loads((work / "cluster.json").read_text())
        b = json.loads((work / "serial.json").read_text())
        fa = {r["point_id"]: [r[f] for f in FIGS] for r in a["rows"]}
        fb = {r["point_id"]: [r[f] for f in FIGS] for r in b["rows"]}
        workers = sorted({r["worker"] for r in a["rows"]})
        ray_nodes = sorted({w.split(":")[0] for w in workers})
        same = fa == fb and len(fa) == 8
        print(f"cluster: {nodes} nodes, {a['workers']} workers; points ran on {len(ray_nodes)} nodes "
              f"({', '.join(workers)}); "
              f"{a['points']} points in {t_cluster:.1f} s (with Ray start-up); serial {t_serial:.1f} s")
        print(f"figures equal point for point: {same}")
        return 0 if same and a["backend"] == "ray" and a["workers"] == 2 and len(ray_nodes) == 2 else 1
    finally:
        subprocess.run([ray_bin(), "stop", "--force"], timeout=120, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
