"""Output errors of one 512x512 analog layer: kcompiler's `pcm` device model vs IBM aihwkit's PCMLikeNoiseModel.

A seeded weight matrix W (512x512, standard normal) and 1000 seeded inputs x (standard normal) are mapped to
conductances the aihwkit way (SinglePairConductanceConverter: scale = g_max/max|W|, W>0 on the G+ device, W<0
on the G- device, the other device of the pair at 0 µS), programmed, and read at t = 1 s, 1 h, 1 day, 1 year
after programming, with and without global drift compensation (alpha = mean|W_prog|/mean|W_t|, the one-hot
probe readout). The error is y_noisy - y_ideal with y = W x, and the table compares its distribution between

  aihwkit            PCMLikeNoiseModel.apply_programming_noise / apply_drift_noise and GlobalDriftCompensation
                     (readout/apply), run in a side venv by ``AIHWKIT_DRIVER`` below (torch float32)
  ours (aihwkit way) kcompiler.backends.cim.devices `pcm` driven exactly like aihwkit's BaseNoiseModel
                     (base.py l.75-127): after programming, aihwkit turns the pair back into a weight and, at
                     each read, re-converts that weight to a fresh pair (renormalised by max|W_prog|) before
                     drifting it, so the 0-µS device's programming noise is folded into the other one
  ours (per device)  the same model, each physical device kept: both devices of a pair drift and get read
                     noise on their own (what the cim simulator does)
  aihwkit tile       when aihwkit's compiled simulator is installed: the same layer as an AnalogLinear with
                     InferenceRPUConfig (forward.is_perfect, so no DAC/ADC/IO noise), program_analog_weights()
                     and drift_analog_weights(t), i.e. aihwkit's own end-to-end inference path

Metrics, pooled over ``--reps`` programming realisations: relative error std = std(err)/std(y_ideal), the 1st,
50th and 99th percentiles of err/std(y_ideal), and the two-sample Kolmogorov-Smirnov statistic against
aihwkit's errors (numpy, sorted-sample CDFs). Output errors of one matrix are correlated (all 1000 outputs
share the same 262k devices), so the KS statistic is compared with a floor: the KS distance between two
aihwkit runs with different seeds. Seeds differ between the libraries: distributions are compared, not samples.

The side venv (torch CPU + aihwkit) is found at --aihwkit-python / $AIHWKIT_PYTHON / /work/aihwkit-venv;
--aihwkit-src adds an aihwkit source tree to its sys.path (the inference package is pure torch, so an
unpacked sdist works when the C++ simulator did not build). Without it the script says aihwkit is absent and
reports our side only.

Run:  python benchmarks/cim_aihwkit_compare.py [--reps 3] [--md benchmarks/results/cim_aihwkit_compare.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kcompiler.backends.cim import devices
from kcompiler.version import __version__ as kc_version

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365 * 86400.0}
G_MAX = 25.0
DEFAULT_VENV_PYTHON = "/work/aihwkit-venv/bin/python"
NOTES_MARKER = "<!-- notes: kept by the script across re-runs -->"

# Runs inside the side venv: reads W, X, times and reps from the input .npz, writes err arrays to the output.
AIHWKIT_DRIVER = r"""
import sys
import numpy as np
import torch
import aihwkit
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
from aihwkit.inference.compensation.drift import GlobalDriftCompensation

inp = np.load(sys.argv[1])
w, x, times, reps, seed = inp["w"], inp["x"], inp["times"], int(inp["reps"]), int(inp["seed"])
torch.manual_seed(seed)
wt, xt = torch.from_numpy(w).float(), torch.from_numpy(x).float()
model, comp = PCMLikeNoiseModel(g_max=float(inp["g_max"])), GlobalDriftCompensation()
eye = comp.get_readout_tensor(w.shape[1])
y_ideal = xt @ wt.T
out = {}
for rep in range(reps):
    w_prog, nu = model.apply_programming_noise(wt)
    ref = comp.readout(eye @ w_prog.T)
    for i, t in enumerate(times):
        w_t = model.apply_drift_noise(w_prog, nu, float(t))
        alpha = comp.apply(eye @ w_t.T, ref)
        y = xt @ w_t.T
        out[f"raw_{rep}_{i}"] = (y - y_ideal).numpy()
        out[f"comp_{rep}_{i}"] = (alpha * y - y_ideal).numpy()
try:  # the noise models are pure torch; the tile path below needs the compiled simulator
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig
    compiled = "yes"
except Exception as exc:
    compiled = f"no ({type(exc).__name__}: {exc})"
if compiled == "yes":  # the same layer through AnalogLinear's inference tile, perfect IO (no DAC/ADC/IO noise)
    for kind, drift_comp in (("raw", None), ("comp", GlobalDriftCompensation())):
        cfg = InferenceRPUConfig()
        cfg.forward.is_perfect = True
        cfg.noise_model, cfg.drift_compensation = PCMLikeNoiseModel(g_max=float(inp["g_max"])), drift_comp
        layer = AnalogLinear(w.shape[1], w.shape[0], bias=False, rpu_config=cfg)
        layer.set_weights(wt)
        layer.eval()
        with torch.no_grad():
            for rep in range(reps):
                layer.program_analog_weights()
                for i, t in enumerate(times):
                    layer.drift_analog_weights(float(t))
                    out[f"tile_{kind}_{rep}_{i}"] = (layer(xt) - y_ideal).numpy()
out["versions"] = np.array([torch.__version__, aihwkit.__version__, np.__version__, compiled,
                            sys.version.split()[0], aihwkit.__file__])
np.savez(sys.argv[2], **out)
"""


def make_problem(n: int, n_vec: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)), rng.standard_normal((n_vec, n))


def to_pair(w: np.ndarray, g_max: float) -> tuple[np.ndarray, np.ndarray, float]:
    """SinglePairConductanceConverter (aihwkit converter/conductance.py l.54-65) with g_min = 0."""
    scale = g_max / max(float(np.abs(w).max()), 1e-7)
    ws = w * scale
    return np.clip(ws, 0.0, g_max), np.clip(-ws, 0.0, g_max), scale


def ours(w: np.ndarray, x: np.ndarray, reps: int, seed: int, per_device: bool) -> dict[str, np.ndarray]:
    """Errors of our `pcm` model, keys like the driver's: raw_<rep>_<time index>, comp_<rep>_<time index>."""
    dev, rng = devices.make("pcm", g_max=G_MAX), np.random.default_rng(seed)
    g_pos, g_neg, scale = to_pair(w, G_MAX)
    y_ideal, out = x @ w.T, {}
    for rep in range(reps):
        p_pos, p_neg = dev.program(g_pos, rng), dev.program(g_neg, rng)
        w_prog = (p_pos.g - p_neg.g) / scale
        if not per_device:     # aihwkit's apply_drift_noise: re-convert the programmed weight to a fresh pair
            gp, gn, scale_t = to_pair(w_prog, G_MAX)
            p_pos, p_neg = devices.Programmed(gp, p_pos.nu), devices.Programmed(gn, p_neg.nu)
        else:
            scale_t = scale
        for i, t in enumerate(TIMES.values()):
            w_t = (dev.read(p_pos, t, rng) - dev.read(p_neg, t, rng)) / scale_t
            y = x @ w_t.T
            out[f"raw_{rep}_{i}"] = y - y_ideal
            out[f"comp_{rep}_{i}"] = devices.global_drift_alpha(w_prog, w_t) * y - y_ideal
    return out


def run_aihwkit(python: str, src: str | None, w, x, reps: int, seed: int) -> tuple[dict | None, str]:
    """Run AIHWKIT_DRIVER in the side venv; (errors, note) or (None, why it could not run)."""
    if not python or not Path(python).exists():
        return None, f"aihwkit absent: no side-venv interpreter at {python!r}"
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, w=w, x=x, times=np.array(list(TIMES.values())), reps=reps, seed=seed, g_max=G_MAX)
        proc = subprocess.run([python, "-c", AIHWKIT_DRIVER, inp, outp], capture_output=True, text=True,
                              env=env, timeout=3600)
        if proc.returncode != 0:
            return None, f"aihwkit absent or failed ({python}): {proc.stderr.strip().splitlines()[-1:]}"
        with np.load(outp) as z:
            data = {k: z[k].astype(np.float64) for k in z.files if k != "versions"}
            versions = [str(v) for v in z["versions"]]
    tile = {k[len("tile_"):]: v for k, v in data.items() if k.startswith("tile_")}
    data = {k: v for k, v in data.items() if not k.startswith("tile_")}
    if tile:
        data["tile"] = tile
    note = (f"aihwkit {versions[1]} (compiled simulator: {versions[3]}; imported from {versions[5]}), "
            f"torch {versions[0]}, numpy {versions[2]}, Python {versions[4]}")
    return data, note


def ks_stat(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup|F_a - F_b| over the pooled sample points."""
    a, b = np.sort(a), np.sort(b)
    pts = np.concatenate([a, b])
    fa = np.searchsorted(a, pts, side="right") / a.size
    fb = np.searchsorted(b, pts, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def pooled(errs: dict, kind: str, i: int, reps: int) -> np.ndarray:
    return np.concatenate([errs[f"{kind}_{r}_{i}"].ravel() for r in range(reps)])


def summarise(errs: dict, kind: str, i: int, reps: int, y_std: float) -> dict:
    per_rep = [float(np.std(errs[f"{kind}_{r}_{i}"])) / y_std for r in range(reps)]
    e = pooled(errs, kind, i, reps) / y_std
    p1, p50, p99 = np.percentile(e, [1, 50, 99])
    return {"rel_std": float(np.std(e)), "rep_min": min(per_rep), "rep_max": max(per_rep), "p1": p1,
            "p50": p50, "p99": p99}


def table(results: dict, aih: dict | None, aih_floor: dict | None, reps: int, y_std: float) -> list[str]:
    lines = ["| t | drift comp. | model | rel. err std (min..max over reps) | p1 | p50 | p99 | KS vs aihwkit |"
             " std ratio vs aihwkit |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, label in (("raw", "off"), ("comp", "global")):
        for i, tname in enumerate(TIMES):
            ref = None if aih is None else summarise(aih, kind, i, reps, y_std)
            tile = None if aih is None else aih.get("tile")
            rows = [("aihwkit", aih), ("aihwkit, 2nd seed", aih_floor), ("aihwkit AnalogLinear tile", tile)]
            rows += list(results.items())
            for name, errs in rows:
                if errs is None:
                    continue
                s = summarise(errs, kind, i, reps, y_std)
                ks = "" if aih is None or errs is aih else ks_stat(pooled(errs, kind, i, reps),
                                                                   pooled(aih, kind, i, reps))
                ks = ks if isinstance(ks, str) else f"{ks:.4f}"
                ratio = "" if ref is None or errs is aih else f"{s['rel_std'] / ref['rel_std']:.4f}"
                lines.append(f"| {tname} | {label} | {name} | {s['rel_std']:.4f} ({s['rep_min']:.4f}.."
                             f"{s['rep_max']:.4f}) | {s['p1']:+.4f} | {s['p50']:+.4f} | {s['p99']:+.4f} | {ks} |"
                             f" {ratio} |")
    return lines


def summary_line(results: dict, aih: dict | None, floor: dict | None, reps: int) -> list[str]:
    """The ranges the notes quote: std ratio and KS vs aihwkit over all rows, ours vs aihwkit's 2nd seed."""
    if aih is None:
        return ["(no aihwkit run: nothing to compare)"]
    out = []
    for name, errs in [("aihwkit 2nd seed", floor), ("aihwkit tile", aih.get("tile"))] + list(results.items()):
        if errs is None:
            continue
        ratios, kss = [], []
        for kind in ("raw", "comp"):
            for i in range(len(TIMES)):
                a, b = pooled(errs, kind, i, reps), pooled(aih, kind, i, reps)
                ratios.append(np.std(a) / np.std(b))
                kss.append(ks_stat(a, b))
        out.append(f"- {name}: std ratio vs aihwkit {min(ratios):.4f}..{max(ratios):.4f}, "
                   f"KS {min(kss):.4f}..{max(kss):.4f} over the {len(ratios)} rows")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--vectors", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3, help="programming realisations pooled per row")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--aihwkit-python", default=os.environ.get("AIHWKIT_PYTHON", DEFAULT_VENV_PYTHON))
    ap.add_argument("--aihwkit-src", default=os.environ.get("AIHWKIT_SRC"))
    ap.add_argument("--md", help="write the markdown table here")
    args = ap.parse_args(argv)
    w, x = make_problem(args.n, args.vectors, args.seed)
    y_std = float(np.std(x @ w.T))
    t0 = time.perf_counter()
    results = {"ours (aihwkit way)": ours(w, x, args.reps, args.seed + 1, per_device=False),
               "ours (per device)": ours(w, x, args.reps, args.seed + 2, per_device=True)}
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    aih, note = run_aihwkit(args.aihwkit_python, args.aihwkit_src, w, x, args.reps, args.seed + 3)
    floor = None
    if aih is not None:
        floor, _ = run_aihwkit(args.aihwkit_python, args.aihwkit_src, w, x, args.reps, args.seed + 4)
    t_aih = time.perf_counter() - t0
    lines = table(results, aih, floor, args.reps, y_std) + [""] + summary_line(results, aih, floor, args.reps)
    cmd = "python benchmarks/cim_aihwkit_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = [f"Command: `{cmd.strip()}`", "",
            f"W {args.n}x{args.n} ~ N(0,1), {args.vectors} inputs x ~ N(0,1), seed {args.seed}, g_max {G_MAX} µS, "
            f"{args.reps} programming realisations pooled per row; std(y_ideal) = {y_std:.3f}.", "",
            f"kcompiler {kc_version}, numpy {np.__version__}, Python {platform.python_version()}; "
            f"ours took {t_ours:.1f} s, aihwkit (2 runs) {t_aih:.1f} s.", "", f"aihwkit side: {note}", ""]
    print("\n".join(head + lines))
    if args.md:   # keep the hand-written notes below the marker across re-runs
        md = Path(args.md)
        notes = md.read_text().split(NOTES_MARKER, 1)[1] if md.exists() and NOTES_MARKER in md.read_text() else ""
        md.write_text("\n".join(["# cim `pcm` device model vs aihwkit PCMLikeNoiseModel: 512x512 layer output errors",
                                 ""] + head + lines) + "\n\n" + NOTES_MARKER + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
