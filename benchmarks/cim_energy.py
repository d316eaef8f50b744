"""Energy per inference (timing mode) of resnet50 and bert-base on analog in-memory chips, alone and
beside an NPU, against the NPUs alone: latency, energy, where the CIM chip's energy goes, crossbars
needed against available, and the figures without the per-inference reprogramming.

    python benchmarks/cim_energy.py              # resnet50 and bert-base (seq 128), 7 targets (about 2 min)
    python benchmarks/cim_energy.py --quick      # resnet50 only, hermes, atom+hermes, atom

Batch 1; bert-base at its default sequence length. resnet50 is the bundled graph with seeded random
weights as initializers (kcompiler.zoo.with_random_weights; timing mode reads no weight values). A
CIM chip alone (hermes, hermes-1p, isaac) runs every node it can (place={"*": chip}: the placer would
send layers whose weights overflow the crossbars to the host); beside an NPU the placer decides. The
energy split of a CIM device is its report entry's energy_parts (dac, crossbar, adc,
shift_add, digital, data_movement, programming); "rest" is every other device's energy (the NPU, the
host and the transfers: report.energy_j minus the CIM devices'). A model whose weights need more
crossbars than the chip has is reprogrammed every inference (CimBackend marks PROG every=1; the
report's notes say so): that time and energy are charged. "resident" re-simulates the same programs
with every PROG made once-only (every=0), i.e. as if the weights stayed in place (a chip, or several,
with enough crossbars): both figures are given.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import kcompiler
from kcompiler.backends.cim import isa
from kcompiler.backends.cim.program import CimProgram
from kcompiler.zoo import with_random_weights

OUT = Path(__file__).parent / "results" / "cim_energy.md"
TARGETS = ("hermes", "hermes-1p", "isaac", "atom+hermes", "atom+isaac", "atom", "warboy")
PARTS = ("dac", "crossbar", "adc", "shift_add", "digital", "data_movement", "programming")


def cim_devices(cm) -> dict[str, object]:
    return {name: be for name, be in cm.backends.items() if be.kind == "cim"}


def crossbars(cm, device: str) -> tuple[int, int, bool]:
    """(crossbar images the device's programs need, crossbars it has, reprogrammed every inference)."""
    progs = [p for p in cm.programs if isinstance(p, CimProgram) and p.device == device]
    need = sum(len(p.code.image_rows) for p in progs)
    every = any(bool(p.code.instrs[(p.code.instrs[:, 0] == isa.PROG), 4].any()) for p in progs)
    return need, cm.backends[device].spec.crossbars, every


def resident(cm) -> None:
    """Make every PROG once-only (the weights stay programmed), as if the chip had room for them."""
    for p in cm.programs:
        if isinstance(p, CimProgram):
            p.code.instrs[p.code.instrs[:, 0] == isa.PROG, 4] = 0


def measure(model: str, source, target: str) -> dict:
    t0 = time.perf_counter()
    alone = "+" not in target and kcompiler.targets.resolve(target).accelerators[0].kind == "cim"
    cm = kcompiler.compile(source, target=target, mode="timing", place={"*": target} if alone else None)
    rep = cm.simulate("timing")
    row = {"model": model, "target": target, "latency_s": rep.latency_s, "energy_j": rep.energy_j,
           "placement": dict(cm.placement), "compile_s": time.perf_counter() - t0, "cim": {}}
    cim_j = 0.0
    for dev in cim_devices(cm):
        info = rep.devices.get(dev, {})
        parts = info.get("energy_parts", {})
        need, have, every = crossbars(cm, dev)
        cim_j += sum(parts.values())
        row["cim"][dev] = {"parts": parts, "need": need, "have": have, "every": every,
                           "busy_s": info.get("busy_s", 0.0), "nodes": info.get("nodes", 0)}
    row["rest_j"] = rep.energy_j - cim_j
    row["notes"] = [n for n in rep.notes if "crossbars" in n or "reprogrammed" in n]
    if any(c["every"] for c in row["cim"].values()):
        resident(cm)
        cm.report = None
        res = cm.simulate("timing")
        row["res_latency_s"], row["res_energy_j"] = res.latency_s, res.energy_j
    else:
        row["res_latency_s"], row["res_energy_j"] = rep.latency_s, rep.energy_j
    return row


def _mj(j: float) -> str:
    return f"{j * 1e3:.3g}"


def table(rows: list[dict]) -> str:
    lines = ["| model | target | placement (nodes) | latency ms | energy mJ | CIM: dac / crossbar / adc / shift_add / "
             "digital / data_movement / programming, mJ | rest (NPU, host, links) mJ | crossbars needed / available |"
             " resident: latency ms, energy mJ |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        place = ", ".join(f"{d} {n}" for d, n in r["placement"].items())
        split = "; ".join(f"{d}: " + " / ".join(_mj(c["parts"].get(p, 0.0)) for p in PARTS)
                          for d, c in r["cim"].items())
        xb = "; ".join(f"{c['need']} / {c['have']} ({'reprogrammed every inference' if c['every'] else 'resident'})"
                       for c in r["cim"].values())
        res = (f"{r['res_latency_s'] * 1e3:.3g}, {_mj(r['res_energy_j'])}"
               if any(c["every"] for c in r["cim"].values()) else "(same)")
        lines.append(f"| {r['model']} | {r['target']} | {place} | {r['latency_s'] * 1e3:.3g} | {_mj(r['energy_j'])} | "
                     f"{split or '-'} | {_mj(r['rest_j'])} | {xb or '-'} | {res if r['cim'] else '-'} |")
    return "\n".join(lines)


def findings(rows: list[dict]) -> str:
    """Sentences from the figures: what reprogramming costs, and where a CIM chip beside an NPU hurts."""
    out, by = [], {(r["model"], r["target"]): r for r in rows}
    for r in rows:
        for dev, c in r["cim"].items():
            prog = c["parts"].get("programming", 0.0)
            if c["every"] and prog:
                out.append(f"- {r['model']} on {r['target']}: {c['need']} crossbar images for {c['have']} crossbars, "
                           f"so {dev} is reprogrammed every inference: {prog / r['energy_j']:.0%} of the energy "
                           f"({_mj(prog)} mJ) and {r['latency_s'] / r['res_latency_s']:.1f}x the resident latency.")
        alone = by.get((r["model"], "atom"))
        if r["target"].startswith("atom+") and alone and r["latency_s"] > 1.2 * alone["latency_s"]:
            out.append(f"- {r['model']} on {r['target']} takes {r['latency_s'] / alone['latency_s']:.0f}x atom's "
                       f"latency alone: the placer put {sum(c['nodes'] for c in r['cim'].values())} nodes on the CIM "
                       "chip by each node's estimate, which counts reprogramming only when every node the chip "
                       "could run overflows it together.")
    return "\n".join(out) or "- nothing to remark."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 on hermes, atom+hermes and atom")
    ap.add_argument("--models", default="resnet50,bert-base")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.targets = "resnet50", "hermes,atom+hermes,atom"
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            source = with_random_weights("resnet50", Path(tmp) / "resnet50.onnx") if model == "resnet50" else model
            for target in args.targets.split(","):
                try:
                    rows.append(measure(model, source, target))
                except kcompiler.KCError as e:
                    print(f"{model} on {target}: {type(e).__name__}: {e}", flush=True)
                    rows.append({"model": model, "target": target, "error": str(e).splitlines()[0]})
                    continue
                r = rows[-1]
                print(f"{model} on {target}: {r['latency_s'] * 1e3:.3g} ms, {_mj(r['energy_j'])} mJ "
                      f"[{r['compile_s']:.1f} s]", flush=True)
    ok = [r for r in rows if "error" not in r]
    md = table(ok) + "".join(f"\n\n{r['model']} on {r['target']}: failed: {r['error']}" for r in rows if "error" in r)
    print(md)
    cmd = "python benchmarks/cim_energy.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    notes = sorted({n for r in ok for n in r["notes"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        f"# CIM energy per inference (timing mode, batch 1)\n\nCommand: `{cmd}` "
        f"({time.perf_counter() - t0:.0f} s)  \nMachine: {platform.machine()} 2-core AMD EPYC, Python "
        f"{platform.python_version()}; {datetime.date.today().isoformat()}.\n\n" + __doc__.split("\n\n", 2)[2]
        + "\n" + md + "\n\n## Findings\n\n" + findings(ok) + "\n\n## The reports' notes on the CIM programs\n\n"
        + "\n".join(f"- {n}" for n in notes) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
