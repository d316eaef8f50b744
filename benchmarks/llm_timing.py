"""Timing-only compilation of LLMs bigger than memory: `kc bench <llm> --phase decode --kv 2048
--mode timing` under /usr/bin/time -v, printing wall time and peak RSS for llama-7b and llama-13b
(targets: < 30 s and < 2 GiB each). The target is `npu` when `kc targets` lists it, else `host`.

The weights are a sparse external file in a fresh cache folder (built on the first run and
counted in the time); timing mode never reads them.

    python benchmarks/llm_timing.py [--target T] [--models llama-7b,llama-13b] [--kv 2048] [--keep-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WALL_LIMIT_S = 30.0
RSS_LIMIT = 2 << 30


def default_target() -> str:
    """`npu` (an alias the NPU backend registers) when it resolves, else `host`."""
    from kcompiler import targets

    try:
        targets.resolve("npu", None)
        return "npu"
    except Exception:
        return "host"


def kc_command() -> list[str]:
    exe = shutil.which("kc")
    return [exe] if exe else [sys.executable, "-m", "kcompiler"]


def parse_time_v(text: str) -> tuple[float, int]:
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return seconds, int(rss.group(1)) * 1024 if rss else 0


def run_one(model: str, target: str, kv: int, env: dict, workdir: Path) -> dict:
    out = workdir / f"{model}.json"
    cmd = ["/usr/bin/time", "-v", *kc_command(), "bench", model, "--phase", "decode", "--kv", str(kv),
           "--target", target, "--mode", "timing", "--quiet", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, rss = parse_time_v(proc.stderr)
    res = {"model": model, "target": target, "kv": kv, "exit": proc.returncode, "wall_s": wall, "peak_rss": rss,
           "command": " ".join(cmd[2:])}
    if proc.returncode == 0 and out.exists():
        r = json.loads(out.read_text())["results"][0]
        res.update(latency_s=r["latency_s"], compile_s=r["compile_s"], macs=r["macs"], dram_bytes=r["dram_bytes"],
                   notes=r.get("notes", []))
    else:
        res["error"] = "\n".join(l for l in proc.stderr.splitlines() if not l.startswith("\t"))[-800:]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default=None)
    ap.add_argument("--models", default="llama-7b,llama-13b")
    ap.add_argument("--kv", type=int, default=2048)
    ap.add_argument("--keep-cache", action="store_true", help="use the user's cache instead of a fresh one")
    args = ap.parse_args(argv)
    target = args.target or default_target()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="kc-llm-") as tmp:
        work = Path(tmp)
        if not args.keep_cache:
            env["KC_CACHE_DIR"] = str(work / "cache")
        ok = True
        for model in args.models.split(","):
            r = run_one(model, target, args.kv, env, work)
            good = r["exit"] == 0 and r["wall_s"] < WALL_LIMIT_S and r["peak_rss"] < RSS_LIMIT
            ok &= good
            print(f"$ {r['command']}")
            if r["exit"] != 0:
                print(f"  FAILED (exit {r['exit']}):\n{r.get('error', '')}")
                continue
            print(f"  wall {r['wall_s']:.2f} s (limit {WALL_LIMIT_S:.0f}), peak RSS {r['peak_rss'] / 2**20:.0f} MiB "
                  f"(limit {RSS_LIMIT >> 20}), compile {r['compile_s']:.2f} s; simulated latency "
                  f"{r['latency_s'] * 1e3:.2f} ms/token, {r['macs'] / 1e9:.2f} GMAC, "
                  f"{r['dram_bytes'] / 1e9:.2f} GB DRAM: {'OK' if good else 'OVER LIMIT'}")
            for n in r["notes"]:
                print(f"  note: {n}")
            if args.keep_cache is False:
                data = next((work / "cache").glob(f"zoo/{model}-*/weights.bin"), None)
                if data is not None:
                    st = data.stat()
                    print(f"  weights file: {st.st_size / 2**30:.1f} GiB apparent, "
                          f"{st.st_blocks * 512 / 2**20:.1f} MiB allocated (sparse)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
