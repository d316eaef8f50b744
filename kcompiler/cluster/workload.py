"""Workloads: when requests arrive and how many tokens each brings and asks for.

A workload is three arrays (arrival time in seconds from the start, prompt tokens, output
tokens), from a synthetic TOML description (Poisson or Gamma arrivals at a rate; fixed, uniform,
normal, lognormal or empirical length distributions; seeded) or from a trace CSV in the format of
the public Azure LLM inference traces (``TIMESTAMP,ContextTokens,GeneratedTokens``, Patel et al.,
"Splitwise", ISCA 2024; github.com/Azure/AzurePublicDataset) or SplitwiseSim's
(``request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size``).
Arrays, not request objects: a million requests take 16 MB.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from kcompiler.cluster.spec import ClusterSpecError, Source, choice, positive, seconds

#: the most requests one simulation takes (16 bytes each in the workload, ~400 in the simulator)
MAX_REQUESTS = 20_000_000
#: the longest prompt or output a request may have (tokens)
MAX_TOKENS = 1 << 20


@dataclass
class Workload:
    arrival: np.ndarray  # float64 seconds, non-decreasing, first at >= 0
    prompt: np.ndarray  # int64 tokens (0 for non-LLM models)
    output: np.ndarray  # int64 tokens to generate (0 for non-LLM models)
    source: str
    description: str = ""

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def duration_s(self) -> float:
        return float(self.arrival[-1]) if len(self.arrival) else 0.0

    @property
    def rate(self) -> float:
        return (len(self) - 1) / self.duration_s if len(self) > 1 and self.duration_s > 0 else 0.0


def synthetic(rate: float, requests: int, process: str = "poisson", cv: float = 1.0, seed: int = 0,
              prompt=("fixed", 0), output=("fixed", 0), source: str = "synthetic") -> Workload:
    """`requests` arrivals at `rate` per second: Poisson (exponential gaps) or Gamma gaps with
    coefficient of variation `cv` (cv > 1 is burstier than Poisson). Length distributions are
    tuples: ("fixed", n), ("uniform", lo, hi), ("normal", mean, std), ("lognormal", mean, std)
    (of the tokens, not of their log), clipped to at least 1 token when the fixed value is >= 1."""
    rng = np.random.default_rng(seed)
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, requests)
    elif process == "gamma":
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), requests)
    else:
        raise ClusterSpecError(f"arrival process '{process}' is not poisson or gamma")
    arrival = np.cumsum(gaps) - gaps[0]
    return Workload(arrival, _lengths(rng, prompt, requests), _lengths(rng, output, requests), source,
                    f"{process} arrivals at {rate:g}/s")


def _lengths(rng, dist, n: int) -> np.ndarray:
    kind = dist[0]
    if kind == "fixed":
        return np.full(n, int(dist[1]), np.int64)
    if kind == "uniform":
        return rng.integers(int(dist[1]), int(dist[2]) + 1, n).astype(np.int64)
    if kind == "normal":
        x = rng.normal(dist[1], dist[2], n)
    elif kind == "lognormal":
        mean, std = float(dist[1]), float(dist[2])
        s2 = math.log(1.0 + (std / mean) ** 2)
        x = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)
    else:  # pragma: no cover - checked when read
        raise ClusterSpecError(f"length distribution '{kind}' is unknown")
    out = np.rint(x).astype(np.int64)
    lo = int(dist[3]) if len(dist) > 3 else 1
    hi = int(dist[4]) if len(dist) > 4 else None
    return np.clip(out, lo, hi)


DISTRIBUTIONS = {"fixed": ("value",), "uniform": ("min", "max"), "normal": ("mean", "std"),
                 "lognormal": ("mean", "std")}


def load(path: str | Path, requests: int | None = None, rate: float | None = None) -> Workload:
    """A workload file: ``.toml`` (synthetic) or ``.csv`` (a trace). `requests` and `rate`
    override the file's (a trace is cut to its first `requests` rows and rescaled to `rate`)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        w = load_trace(p)
        if requests is not None:
            w = Workload(w.arrival[:requests], w.prompt[:requests], w.output[:requests], w.source, w.description)
        if rate is not None and w.rate > 0:
            w.arrival = w.arrival * (w.rate / rate)
            w.description += f", rescaled to {rate:g}/s"
        return w
    src = Source(p, "workload")
    d = src.data
    src.check_keys(d, (), {"name", "arrivals", "prompt", "output"})
    a = d.get("arrivals")
    if not isinstance(a, dict):
        raise src.error(("arrivals",), "missing: the workload needs an [arrivals] table",
                        hint='e.g. [arrivals] process = "poisson", rate = 2.0, requests = 1000')
    src.check_keys(a, ("arrivals",), {"process", "rate", "cv", "requests", "duration", "seed"})
    process = choice(src, ("arrivals", "process"), a.get("process", "poisson"), ("poisson", "gamma"))
    r = rate if rate is not None else positive(src, ("arrivals", "rate"), a.get("rate"), integer=False)
    cv = positive(src, ("arrivals", "cv"), a.get("cv", 1.0), integer=False)
    if requests is None:
        if "requests" in a:
            requests = positive(src, ("arrivals", "requests"), a["requests"])
        elif "duration" in a:
            requests = max(1, int(round(seconds(src, ("arrivals", "duration"), a["duration"]) * r)))
        else:
            raise src.error(("arrivals",), "says neither how many requests nor for how long",
                            hint='add requests = 1000 or duration = "10 min"')
    if requests > MAX_REQUESTS:
        raise src.error(("arrivals",), f"{requests:,} requests exceed the simulator's {MAX_REQUESTS:,}",
                        hint="simulate fewer requests (a sample of the period), or split the run")
    seed = a.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise src.error(("arrivals", "seed"), f"{seed!r} must be an integer")
    dists = []
    for key in ("prompt", "output"):
        t = d.get(key, {"distribution": "fixed", "value": 0})
        if not isinstance(t, dict):
            raise src.error((key,), "must be a table, e.g. { distribution = \"uniform\", min = 64, max = 512 }")
        kind = choice(src, (key, "distribution"), t.get("distribution", "fixed"), tuple(DISTRIBUTIONS))
        src.check_keys(t, (key,), {"distribution", "min", "max", *DISTRIBUTIONS[kind]})
        vals = [positive(src, (key, f), t.get(f), integer=f != "std" and kind in ("fixed", "uniform"),
                         allow_zero=kind == "fixed") for f in DISTRIBUTIONS[kind]]
        for f, v in zip(DISTRIBUTIONS[kind], vals):
            if f != "std" and v > MAX_TOKENS:
                raise src.error((key, f), f"{v:,} tokens exceed {MAX_TOKENS:,}")
        if kind == "uniform" and vals[0] > vals[1]:
            raise src.error((key, "min"), f"min {vals[0]} is above max {vals[1]}")
        if kind in ("normal", "lognormal"):
            hi = t.get("max", MAX_TOKENS)
            hi = positive(src, (key, "max"), hi)
            if hi > MAX_TOKENS:
                raise src.error((key, "max"), f"{hi:,} tokens exceed {MAX_TOKENS:,}")
            vals += [positive(src, (key, "min"), t.get("min", 1)), hi]
        dists.append((kind, *vals))
    w = synthetic(r, requests, process, cv, seed, dists[0], dists[1], source=str(p))
    w.description = d.get("name", w.description)
    return w


def _parse_time(text: str) -> float:
    """Seconds from a trace's TIMESTAMP: a number (seconds) or an ISO date-time with up to 7
    fractional digits (the Azure traces write 2023-11-16 18:15:46.6805900)."""
    try:
        return float(text)
    except ValueError:
        pass
    head, _, frac = text.strip().partition(".")
    t = datetime.fromisoformat(head).timestamp()
    if frac:
        if not frac.isdigit():
            raise ValueError(text)
        t += int(frac) / 10 ** len(frac)
    return t


_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_SPLITWISE = ("arrival_timestamp", "prompt_size", "token_size")


def load_trace(path: Path) -> Workload:
    """An Azure LLM inference trace or a SplitwiseSim trace (recognised by their headers).
    Timestamps must be non-decreasing and token counts non-negative: a bad row is a
    ClusterSpecError naming the file, its line and the column."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise ClusterSpecError(f"trace file '{path}' does not exist") from None
    except OSError as exc:
        raise ClusterSpecError(f"trace file '{path}' cannot be read: {exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ClusterSpecError(f"{path}: the trace is empty") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ClusterSpecError(f"{path}:1: not a CSV file: {exc}") from None
        if all(c in header for c in _AZURE):
            cols, kind = _AZURE, "Azure LLM inference trace"
        elif all(c in header for c in _SPLITWISE):
            cols, kind = _SPLITWISE, "SplitwiseSim trace"
        else:
            raise ClusterSpecError(f"{path}:1: header {header} is neither an Azure LLM inference trace's "
                                   f"({','.join(_AZURE)}) nor a SplitwiseSim trace's ({', '.join(_SPLITWISE)})",
                                   hint="rename the columns to one of these formats")
        ix = [header.index(c) for c in cols]
        times, prompts, outputs = [], [], []
        last = -math.inf
        try:
            for line, row in enumerate(reader, 2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < len(header):
                    raise ClusterSpecError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                try:
                    t = _parse_time(row[ix[0]])
                except (ValueError, OverflowError):
                    raise ClusterSpecError(f"{path}:{line}: {cols[0]} '{row[ix[0]]}' is not a time "
                                           f"(seconds, or YYYY-MM-DD HH:MM:SS.fraction)") from None
                if not math.isfinite(t) or t < 0:
                    raise ClusterSpecError(f"{path}:{line}: {cols[0]} {row[ix[0]]} is negative or not finite",
                                           hint="timestamps are seconds (or dates) from the trace's start")
                if t < last:
                    raise ClusterSpecError(f"{path}:{line}: {cols[0]} {row[ix[0]]} is earlier than the row before",
                                           hint="sort the trace by its timestamps")
                last = t
                for c, j, out in ((cols[1], ix[1], prompts), (cols[2], ix[2], outputs)):
                    try:
                        v = int(row[j])
                    except ValueError:
                        raise ClusterSpecError(f"{path}:{line}: {c} '{row[j]}' is not a whole number") from None
                    if v < 0:
                        raise ClusterSpecError(f"{path}:{line}: {c} {v} is negative")
                    if v > MAX_TOKENS:
                        raise ClusterSpecError(f"{path}:{line}: {c} {v:,} exceeds {MAX_TOKENS:,} tokens")
                    out.append(v)
                times.append(t)
                if len(times) > MAX_REQUESTS:
                    raise ClusterSpecError(f"{path}:{line}: more than {MAX_REQUESTS:,} requests",
                                           hint="cut the trace (kc cluster --requests N reads its first N rows)")
        except csv.Error as exc:
            raise ClusterSpecError(f"{path}: not a valid CSV file: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ClusterSpecError(f"{path}: not UTF-8 text: {exc}") from None
    if not times:
        raise ClusterSpecError(f"{path}: the trace has a header but no requests")
    arrival = np.asarray(times, np.float64)
    arrival -= arrival[0]
    return Workload(arrival, np.asarray(prompts, np.int64), np.asarray(outputs, np.int64), str(path),
                    f"{kind} ({len(times)} requests)")
