"""Accuracy of analog in-memory chips (hermes, isaac): argmax agreement with float32 ONNX Runtime on the
same model, over time after programming (drift), with and without global drift compensation.

    python benchmarks/cim_accuracy.py                 # everything (about 25 min on 2 shared cores)
    python benchmarks/cim_accuracy.py --quick         # bert-tiny and cls, fewer inputs (about 2 min)
    python benchmarks/cim_accuracy.py --models cls --seeds 0,1,2

Models: resnet50 (seeded random weights, kcompiler.zoo.with_random_weights; random normal images),
bert-tiny (the zoo's random weights; random token ids; argmax of the pooler output per sequence, and
of last_hidden_state per token), and a real pretrained one: PP-OCR's text direction classifier on
rendered text lines, half of them rotated by 180 degrees (benchmarks/realmodels.py), also scored
against the true labels. Each model is compiled once per target in functional mode; the read
conditions (--cim-time, --cim-noise, --cim-compensation, --cim-seed) change with cm.configure, which
re-reads the same programmed chip without recompiling.

Only the GEMM-like nodes (Conv, MatMul, Gemm with constant weights and their fused epilogues) can run
on a CIM chip; a lone `hermes` target runs everything else on the host (float32), which is fine for
accuracy. The placer alone puts small layers on the host when that is faster (it put all of cls and 9
of bert-tiny's 13 weight GEMMs there), so every node the chip supports is pinned to it (place={"*":
"cim"}); the log says how many nodes ran where.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import kcompiler
from kcompiler.zoo import with_random_weights
from kcompiler.zoo.transformers import build as build_transformer

sys.path.insert(0, str(Path(__file__).parent))
import realmodels  # noqa: E402

TIMES = ("1s", "1h", "1d", "1y")
OUT = Path(__file__).parent / "results" / "cim_accuracy.md"


def conditions(times=TIMES, compensation=(True, False)) -> list[tuple[str, dict]]:
    """(label, configure options): the ideal read (--cim-noise off), then every time x compensation."""
    out = [("noise off", {"cim_noise": "off"})]
    for t in times:
        for c in compensation:
            out.append((f"{t} comp {'on' if c else 'off'}",
                        {"cim_noise": "on", "cim_time": t, "cim_compensation": "on" if c else "off"}))
    return out


def cim_nodes(cm) -> str:
    """'device: N nodes (op types)' for every device of the compiled model."""
    parts = []
    for dev, n in cm.placement.items():
        ops: dict[str, int] = {}
        for sub in cm.parts:
            if sub.device == dev:
                for node in sub.nodes:
                    ops[node.op_type] = ops.get(node.op_type, 0) + 1
        top = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
        parts.append(f"{dev}: {n} ({top})")
    return "; ".join(parts)


# ---- the models: (onnx path, list of feeds, reference outputs, scorer) ----------------------------------
def ort_run(path: str, feeds: dict) -> list[np.ndarray]:
    m = onnx.load(path)
    m.ir_version = min(m.ir_version, realmodels.ORT_MAX_IR)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def resnet50_case(tmp: Path, n: int):
    path = with_random_weights("resnet50", tmp / "resnet50.onnx", seed=0)
    rng = np.random.default_rng(7)
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    feeds = [{name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(n)]
    refs = [ort_run(path, f)[0].argmax(-1) for f in feeds]
    return path, feeds, {"top1": np.concatenate(refs)}, None


def bert_case(tmp: Path, n: int):
    path = str(tmp / "bert-tiny.onnx")
    onnx.save(build_transformer("bert-tiny", batch=n, seq=16), path)
    ids = np.random.default_rng(11).integers(1000, 30000, (n, 16)).astype(np.int64)
    feeds = [{"input_ids": ids}]
    hidden, pooled = ort_run(path, feeds[0])
    return path, feeds, {"pooler": pooled.argmax(-1), "token": hidden.argmax(-1).reshape(-1)}, None


def cls_case(tmp: Path, n: int):
    paths = realmodels.fetch_ocr_models()
    lines = realmodels.render_text_lines(n, seed=0)
    x, labels = realmodels.cls_batch([im for im, _ in lines], [i % 2 == 1 for i in range(n)])
    path = str(paths["cls"])
    ref = ort_run(path, {"x": x})[0].argmax(-1)
    return path, [{"x": x}], {"top1": ref}, labels


CASES = {"resnet50": resnet50_case, "bert-tiny": bert_case, "cls": cls_case}


def outputs_of(model: str, outs: list[dict]) -> dict[str, np.ndarray]:
    if model == "bert-tiny":
        return {"pooler": outs[0]["pooler_output"].argmax(-1),
                "token": outs[0]["last_hidden_state"].argmax(-1).reshape(-1)}
    return {"top1": np.concatenate([next(iter(o.values())).argmax(-1) for o in outs])}


def measure(model: str, target: str, case, conds, seeds, log) -> list[dict]:
    path, feeds, ref, labels = case
    shapes = {k: v.shape for k, v in feeds[0].items()}
    t0 = time.perf_counter()
    # every node the chip can run is pinned to it (the placer keeps small layers on the host, faster there)
    cm = kcompiler.compile(path, target=target, shapes=shapes, place={"*": target})
    log(f"{model} on {target}: compiled in {time.perf_counter() - t0:.1f} s; {cim_nodes(cm)}")
    rows = []
    for label, opts in conds:
        for seed in (seeds if opts.get("cim_noise") != "off" else seeds[:1]):
            cm.configure(**opts, cim_seed=seed)
            t = time.perf_counter()
            got = outputs_of(model, [cm.run(f, simulate=False) for f in feeds])
            row = {"model": model, "target": target, "cond": label, "seed": seed, "n": len(ref[next(iter(ref))]),
                   "run_s": time.perf_counter() - t, "placement": cim_nodes(cm)}
            for k in ref:
                row[k] = float((got[k] == ref[k]).mean())
            if labels is not None:
                row["acc"] = float((got["top1"] == labels).mean())
            rows.append(row)
            log(f"  {label:14s} seed {seed}: " + ", ".join(f"{k} {row[k]:.3f}" for k in (*ref, "acc") if k in row)
                + f" [{row['run_s']:.1f} s]")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and min..max over seeds of each (model, target, condition)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"], r["cond"]), []).append(r)
    out = []
    for (model, target, cond), rs in groups.items():
        s = {"model": model, "target": target, "cond": cond, "n": rs[0]["n"], "seeds": len(rs)}
        for k in ("top1", "pooler", "token", "acc"):
            if k in rs[0]:
                v = [r[k] for r in rs]
                s[k] = f"{np.mean(v):.3f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else "")
        out.append(s)
    return out


def table(summary: list[dict]) -> str:
    lines = ["| model | target | read condition | inputs | seeds | argmax agreement with ORT fp32 | "
             "accuracy vs true labels |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        agree = s.get("top1") or f"pooler {s['pooler']}; tokens {s['token']}"
        lines.append(f"| {s['model']} | {s['target']} | {s['cond']} | {s['n']} | {s['seeds']} | {agree} | "
                     f"{s.get('acc', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="bert-tiny and cls only, fewer inputs, 1 seed")
    ap.add_argument("--models", default="resnet50,bert-tiny,cls")
    ap.add_argument("--resnet-n", type=int, default=20, help="resnet50 inputs (about 15 s each on hermes)")
    ap.add_argument("--resnet-conds", default="noise off,1h comp on",
                    help="resnet50's read conditions (each redraws 25 M devices: about 45 s)")
    ap.add_argument("--bert-n", type=int, default=128)
    ap.add_argument("--cls-n", type=int, default=200)
    ap.add_argument("--isaac-n", type=int, default=32,
                    help="inputs on isaac (bert-tiny, cls): its 16 bit-serial reads make it ~10x slower to simulate")
    ap.add_argument("--cls-conds", default="noise off,1s comp on,1s comp off,1h comp on,1d comp on,1y comp on,"
                    "1y comp off", help="cls's read conditions on hermes (200 lines: about 60 s each)")
    ap.add_argument("--seeds", default="0,1,2", help="device seeds (bert-tiny, cls; resnet50 takes the first)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.bert_n, args.cls_n, args.seeds = "bert-tiny,cls", 32, 50, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            n = {"resnet50": args.resnet_n, "bert-tiny": args.bert_n, "cls": args.cls_n}[model]
            targets = ["hermes"] if model == "resnet50" else ["hermes", "isaac"]
            for target in targets:
                try:
                    case = CASES[model](Path(tmp), min(n, args.isaac_n) if target == "isaac" else n)
                except realmodels.RegistryUnavailable as e:
                    log(f"{model}: skipped ({e})")
                    break
                conds = conditions()
                if model == "resnet50":
                    conds = [c for c in conds if c[0] in args.resnet_conds.split(",")]
                elif model == "cls" and target == "hermes":
                    conds = [c for c in conds if c[0] in args.cls_conds.split(",")]
                elif target == "isaac":  # ideal devices ([cim.device] model = "ideal"): time changes nothing
                    conds = [c for c in conds if c[0] in ("noise off", "1y comp off")]
                rows += measure(model, target, case, conds, seeds if model != "resnet50" else seeds[:1], log)
                write(args, argv, table(summarise(rows)), log_lines)  # so far: a long run leaves a partial file
    md = table(summarise(rows))
    print(md)
    write(args, argv, md, log_lines)
    return 0


def write(args, argv, md: str, log_lines: list[str]) -> None:
    cmd = "python benchmarks/cim_accuracy.py" + ("" if not argv and len(sys.argv) < 2 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    text = (f"# CIM accuracy: argmax agreement with float32 ONNX Runtime\n\n"
            f"Command: `{cmd}`  \nMachine: {platform.machine()} 2-core AMD EPYC, Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__}; {datetime.date.today().isoformat()}.\n\n{md}\n\n"
            "## Log\n\n```\n" + "\n".join(log_lines) + "\n```\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
