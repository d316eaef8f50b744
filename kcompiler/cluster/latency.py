"""Iteration latencies from compiled programs.

Every latency the fleet simulator uses comes from kcompiler's timing mode: a model is compiled
for a (hardware, batch, KV length) *bucket* and its report's latency and energy are kept. Buckets
are compiled once per process and cached on disk (``zoo.cache_dir()/cluster-latency.json``,
keyed by kcompiler's version, the model, its options, and the exact chip figures), so a second
simulation of the same fleet compiles nothing.

How buckets are chosen (and said in the results): batch sizes are the powers of two up to the
scheduler's largest batch, and that batch; KV lengths the powers of two from 128 up to the first
one at or above the longest context the workload can reach; prompt lengths likewise. Between
buckets a latency is interpolated linearly (bilinearly for decode: batch x KV) — never
extrapolated: the grids are built to cover the workload, and a lookup outside one is an error.

What is modelled, and how (LLMs, zoo decoders only — their shapes are known):
- a *prefill* of a prompt of S tokens: the prefill program for batch 1 and seq S; a batch of
  prompts costs the sum of its prompts' prefills (prefill is compute-bound: batching saves
  little), a static batch padded to its longest prompt costs B times that prompt's prefill;
- a *decode step* of B sequences whose contexts average K tokens: the decode program for batch B
  and KV length K (attention reads every sequence's cache, so its cost follows the total KV);
- a *prefill chunk* of C tokens after P already-cached ones (chunked prefill): the decode-phase
  program with seq C and KV P (P = 0: the prefill program); a smaller last chunk c costs
  prefill(c) + (chunk(C, P) - prefill(C)) — its own tokens plus the attention over P;
- a chunk and decodes in one iteration (Sarathi-Serve) read the weights once: the iteration costs
  chunk + decode - min(chunk, decode, W), with W the weight-streaming time, taken as the decode
  of one sequence at the smallest KV bucket (a memory-bound step that reads little else).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import kcompiler
from kcompiler import __version__, targets, zoo
from kcompiler.errors import KCError
from kcompiler.zoo.stats import cached_stats, entry_stats


@dataclass(frozen=True)
class Hardware:
    """What one replica runs on: a target (chip or system), how many devices (tensor or pipeline
    parallel), and optionally a partition of its chip (a virtual NPU)."""
    target: str
    devices: int | None = None
    parallel: str = "none"
    partition: tuple[int, int] | None = None  # (index, count) of equal slices of the chip's cores
    bandwidth: float | None = None  # DRAM bandwidth fraction of a partition (None: its core share)

    def label(self) -> str:
        s = self.target
        if self.devices and self.devices > 1:
            s = f"{self.devices}x{s}" + (f" ({self.parallel})" if self.parallel != "none" else "")
        if self.partition:
            s += f" [part {self.partition[0]} of {self.partition[1]}" + (
                f", {self.bandwidth:.0%} bw" if self.bandwidth is not None else "") + "]"
        return s


def system_for(hw: Hardware):
    """The System a replica runs on (a partition: a slice of every accelerator, targets.partition)."""
    if hw.partition is None:
        return targets.resolve(hw.target, devices=hw.devices)
    part = (*hw.partition, hw.bandwidth) if hw.bandwidth is not None else tuple(hw.partition)
    return targets.resolve(hw.target, devices=hw.devices, partition=part)


def _fingerprint(system) -> str:
    text = repr([(d.name, d.chip.name, repr(d.chip.spec)) for d in system.accelerators]) + repr(system.interconnect)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Measured:
    latency_s: float
    energy_j: float
    dram_bytes: int
    busy_s: dict[str, float] = field(default_factory=dict)
    compile_s: float = 0.0


class Profiler:
    """Compiles buckets in timing mode and remembers them (in memory and on disk)."""

    def __init__(self, cache: str | Path | None = "default", log: Callable[[str], None] | None = None):
        self.version = __version__
        if cache == "default":
            cache = zoo.cache_dir() / "cluster-latency.json"
        self.path = Path(cache) if cache else None
        self.log = log or (lambda msg: None)
        self._mem: dict[str, dict] = {}
        self._systems: dict[Hardware, tuple[Any, str]] = {}
        self._lock = threading.Lock()
        self.compiled = 0
        self.cached = 0
        self.compile_s = 0.0
        if self.path and self.path.is_file():
            try:
                self._mem = json.loads(self.path.read_text())
                if not isinstance(self._mem, dict):
                    self._mem = {}
            except (OSError, ValueError):
                self._mem = {}  # a damaged cache is rebuilt, not trusted

    def _save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._mem))
        os.replace(tmp, self.path)

    def measure(self, model: str, options: dict[str, Any], hw: Hardware) -> Measured:
        if hw not in self._systems:  # resolved once per hardware, not once per bucket
            system = system_for(hw)
            self._systems[hw] = (system, _fingerprint(system))
        system, fingerprint = self._systems[hw]
        key = json.dumps([self.version, model, sorted(options.items()), hw.target, hw.devices, hw.parallel,
                          hw.partition, hw.bandwidth, fingerprint])
        hit = self._mem.get(key)
        if hit is not None:
            self.cached += 1
            return Measured(**hit)
        t0 = time.perf_counter()
        if model.endswith(".kcm"):
            cm = kcompiler.load(model)
            if options:
                raise KCError(f"'{model}' is a compiled artifact: its shapes are fixed",
                              hint="serve a zoo model to let the simulator compile other batch sizes")
        else:
            m, _ = zoo.resolve_model(model, **options)
            cm = kcompiler.compile(m, target=system, mode="timing", parallel=hw.parallel or "none",
                                   printer=lambda *a, **k: None, name=model)
        rep = cm.report
        dt = time.perf_counter() - t0
        out = Measured(float(rep.latency_s), float(rep.energy_j), int(rep.dram_bytes),
                       {d: float(v.get("busy_s", 0.0)) for d, v in rep.devices.items()}, dt)
        self.compiled += 1
        self.compile_s += dt
        opts = " ".join(f"{k}={v}" for k, v in sorted(options.items()))
        self.log(f"compiled {model} {opts} on {hw.label()}: {out.latency_s * 1e3:.3f} ms ({dt:.1f} s)")
        with self._lock:
            self._mem[key] = out.__dict__
            self._save()
        return out


def pow2_grid(lo: int, hi: int, include: tuple[int, ...] = ()) -> list[int]:
    """Powers of two from `lo` up to the first at or above `hi`, plus `include`."""
    out, v = set(include), 1
    while v < lo:
        v *= 2
    while True:
        out.add(v)
        if v >= hi:
            break
        v *= 2
    return sorted(x for x in out if x >= 1)


def _interp(grid: list[int], values: np.ndarray, x: float, what: str) -> float:
    if x < grid[0] - 1e-9 or x > grid[-1] + 1e-9:
        raise KCError(f"internal: {what} {x:g} is outside the compiled buckets {grid[0]}..{grid[-1]}")
    return float(np.interp(x, grid, values))


@dataclass
class BatchProfile:
    """Latency and energy of one inference of a batch of b (CNNs, encoders): b in the batch grid,
    linear in between."""
    model: str
    hw: Hardware
    batches: list[int]
    latency: np.ndarray
    energy: np.ndarray
    max_batch: int

    def cost(self, b: int) -> tuple[float, float]:
        return (_interp(self.batches, self.latency, b, "batch"), _interp(self.batches, self.energy, b, "batch"))

    def table(self) -> tuple[list[float], list[float]]:
        """Latency and energy for b = 0..max_batch (b = 0 unused)."""
        lat = [0.0] + [self.cost(b)[0] for b in range(1, self.max_batch + 1)]
        en = [0.0] + [self.cost(b)[1] for b in range(1, self.max_batch + 1)]
        return lat, en

    def describe(self) -> dict:
        return {"model": self.model, "hardware": self.hw.label(), "batch_buckets": self.batches,
                "latency_s": [float(x) for x in self.latency], "interpolation": "linear in batch"}


def batch_profile(prof: Profiler, model: str, hw: Hardware, max_batch: int,
                  options: dict | None = None) -> BatchProfile:
    options = dict(options or {})
    if model.endswith(".kcm"):
        # an artifact's shapes are fixed: one run serves up to its batch (the leading dim of its
        # first input) and costs the same however many of its rows are real requests
        m = prof.measure(model, {}, hw)
        shape = next(iter(kcompiler.load(model).inputs.values()))[0]
        b = int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
        grid = [1, b] if b > 1 else [1]
        return BatchProfile(model, hw, grid, np.full(len(grid), m.latency_s), np.full(len(grid), m.energy_j), b)
    grid = pow2_grid(1, max_batch, (max_batch,))
    grid = [b for b in grid if b <= max_batch]
    ms = [prof.measure(model, {**options, "batch": b}, hw) for b in grid]
    return BatchProfile(model, hw, grid, np.array([m.latency_s for m in ms]), np.array([m.energy_j for m in ms]),
                        max_batch)


@dataclass
class LLMProfile:
    """Decode, prefill and chunk costs of one decoder on one kind of hardware (see module doc)."""
    model: str
    hw: Hardware
    batches: list[int]
    kvs: list[int]
    prompts: list[int]
    dec_t: np.ndarray  # [batch, kv]
    dec_e: np.ndarray
    pre_t: np.ndarray  # [prompt]
    pre_e: np.ndarray
    chunk: int = 0
    pasts: list[int] = field(default_factory=list)
    chunk_t: np.ndarray | None = None  # [past]
    chunk_e: np.ndarray | None = None
    kv_bytes_per_token: int = 0
    weight_bytes: int = 0
    busy_fraction: dict[str, float] = field(default_factory=dict)  # decode's busy share per device

    def batch_rows(self, b: float) -> tuple[np.ndarray, np.ndarray]:
        """Decode latency and energy over the KV buckets for a batch of b (linear between the two
        batch buckets around it)."""
        if b < self.batches[0] - 1e-9 or b > self.batches[-1] + 1e-9:
            raise KCError(f"internal: decode batch {b} outside the compiled buckets")
        if len(self.batches) == 1:
            return self.dec_t[0], self.dec_e[0]
        i = min(int(np.searchsorted(self.batches, b, "right")) - 1, len(self.batches) - 2)
        w = min(max((b - self.batches[i]) / (self.batches[i + 1] - self.batches[i]), 0.0), 1.0)
        return (self.dec_t[i] * (1 - w) + self.dec_t[i + 1] * w, self.dec_e[i] * (1 - w) + self.dec_e[i + 1] * w)

    def decode(self, b: float, kv: float) -> tuple[float, float]:
        if kv > self.kvs[-1] + 1e-9:
            raise KCError(f"internal: KV length {kv:g} outside the compiled buckets (up to {self.kvs[-1]})")
        kv = max(kv, self.kvs[0])  # below the smallest bucket: the smallest bucket's cost (an upper bound)
        t, e = self.batch_rows(b)
        return float(np.interp(kv, self.kvs, t)), float(np.interp(kv, self.kvs, e))

    def prefill(self, s: float) -> tuple[float, float]:
        s = max(s, self.prompts[0])
        return (_interp(self.prompts, self.pre_t, s, "prompt length"),
                _interp(self.prompts, self.pre_e, s, "prompt length"))

    def chunk_cost(self, c: int, past: int) -> tuple[float, float]:
        if past <= 0:
            return self.prefill(c)
        full_t = _interp(self.pasts, self.chunk_t, past, "chunk past")
        full_e = _interp(self.pasts, self.chunk_e, past, "chunk past")
        if c >= self.chunk:
            return full_t, full_e
        pc_t, pc_e = self.prefill(self.chunk)
        own_t, own_e = self.prefill(c)
        return own_t + max(full_t - pc_t, 0.0), own_e + max(full_e - pc_e, 0.0)

    @property
    def weight_time_s(self) -> float:
        return float(self.dec_t[0][0])

    def describe(self) -> dict:
        out = {"model": self.model, "hardware": self.hw.label(), "batch_buckets": self.batches,
               "kv_buckets": self.kvs, "prompt_buckets": self.prompts,
               "interpolation": "bilinear in batch and KV (decode), linear in prompt length (prefill)",
               "kv_bytes_per_token": self.kv_bytes_per_token, "weight_bytes": self.weight_bytes}
        if self.chunk:
            out.update(chunk_tokens=self.chunk, chunk_past_buckets=self.pasts)
        return out


def llm_config(model: str):
    # (zoo.transformers imports onnx: kept out of `kc`'s start, which imports kcompiler.cluster)
    from kcompiler.zoo import transformers as tz

    cfg = tz.PRESETS.get(model)
    if cfg is None or cfg.family == "bert":
        raise KCError(f"model '{model}' is not a zoo decoder: the LLM schedulers need a decoder's shapes "
                      f"(zoo decoders: {', '.join(k for k, c in tz.PRESETS.items() if c.family != 'bert')})",
                      hint="use scheduler = \"dynamic\" for CNNs and encoders")
    return cfg


def weight_bytes(model: str, options: dict | None = None) -> int:
    """Bytes of a zoo model's weights: a transformer's parameters at its dtype (zoo options dtype
    and layers), a CNN's parameters (as `kc zoo` counts them) as float32."""
    from kcompiler.zoo import transformers as tz

    options = dict(options or {})
    if model in tz.PRESETS:
        itemsize = tz.WEIGHT_ITEMSIZE[options.get("dtype", "fp32")]  # int4: half a byte
        return int(tz.parameter_count(model, **{k: v for k, v in options.items() if k == "layers"}) * itemsize)
    entry = zoo.entries()[model]
    st = cached_stats(entry) or entry_stats(entry)  # the counts `kc zoo` shows
    return int(st["params"]) * 4


def llm_sizes(model: str, options: dict | None = None) -> tuple[int, int]:
    """(KV-cache bytes per token, weight bytes) of a zoo decoder at its dtype."""
    from kcompiler.zoo import transformers as tz

    cfg = llm_config(model)
    options = dict(options or {})
    dtype = options.get("dtype", "fp32")
    # a quantised decoder keeps its KV cache at its activation dtype (zoo.presets: act_dtype)
    kv_dtype = options.get("act_dtype") or tz.QUANT_DTYPES.get(dtype, dtype)
    itemsize = tz.DTYPES[kv_dtype][0].itemsize
    layers = options.get("layers", cfg.layers)
    return 2 * layers * cfg.kv_heads * cfg.head_dim * itemsize, weight_bytes(model, options)


def llm_profile(prof: Profiler, model: str, hw: Hardware, max_batch: int, max_context: int, max_prompt: int,
                chunk: int = 0, options: dict | None = None, decode: bool = True, prefill: bool = True) -> LLMProfile:
    cfg = llm_config(model)
    options = dict(options or {})
    kv_per_token, weight_bytes = llm_sizes(model, options)
    batches = [b for b in pow2_grid(1, max_batch, (max_batch,)) if b <= max_batch]
    kvs = pow2_grid(128, max(max_context, 128))
    # a preempted sequence is recomputed as a prefill of its prompt and what it generated, so the
    # prefill buckets reach the longest context, not only the longest prompt
    prompts = pow2_grid(16, max(max_prompt, max_context, chunk, 16))
    if cfg.max_pos:
        kvs = [k for k in kvs if k < cfg.max_pos] or [cfg.max_pos - 1]
        prompts = [p for p in prompts if p <= cfg.max_pos] or [cfg.max_pos]
    nb, nk, npp = len(batches), len(kvs), len(prompts)
    dec_t, dec_e = np.zeros((nb, nk)), np.zeros((nb, nk))
    busy: dict[str, float] = {}
    if decode:
        for i, b in enumerate(batches):
            for j, k in enumerate(kvs):
                m = prof.measure(model, {**options, "phase": "decode", "batch": b, "kv": k}, hw)
                dec_t[i, j], dec_e[i, j] = m.latency_s, m.energy_j
                if i == 0 and j == 0:
                    busy = {d: v / m.latency_s for d, v in m.busy_s.items()} if m.latency_s else {}
    pre_t, pre_e = np.zeros(npp), np.zeros(npp)
    if prefill:
        for j, s in enumerate(prompts):
            m = prof.measure(model, {**options, "phase": "prefill", "batch": 1, "seq": s}, hw)
            pre_t[j], pre_e[j] = m.latency_s, m.energy_j
    out = LLMProfile(model, hw, batches, kvs, prompts, dec_t, dec_e, pre_t, pre_e,
                     kv_bytes_per_token=kv_per_token, weight_bytes=weight_bytes, busy_fraction=busy)
    if chunk and prefill:
        pasts = [0] + [k for k in kvs if k >= chunk]
        if pasts[-1] < max_context:
            pasts.append(kvs[-1])
        pasts = sorted(set(pasts))
        ct, ce = np.zeros(len(pasts)), np.zeros(len(pasts))
        for j, p in enumerate(pasts):
            m = (prof.measure(model, {**options, "phase": "prefill", "batch": 1, "seq": chunk}, hw) if p == 0 else
                 prof.measure(model, {**options, "phase": "decode", "batch": 1, "seq": chunk, "kv": p}, hw))
            ct[j], ce[j] = m.latency_s, m.energy_j
        out.chunk, out.pasts, out.chunk_t, out.chunk_e = chunk, pasts, ct, ce
    return out


def memory_bytes(devices) -> int:
    """DRAM capacity of some accelerators (a system's ``accelerators``): NPU DRAM, PIM devices' DRAM."""
    total = 0
    for d in devices:
        spec = d.chip.spec
        if hasattr(spec, "dram") and getattr(spec.dram, "capacity", None):
            total += int(spec.dram.capacity)
        elif hasattr(spec, "capacity_bytes"):
            total += int(spec.capacity_bytes)
    return total


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["Hardware", "Profiler", "BatchProfile", "LLMProfile", "batch_profile", "llm_profile", "memory_bytes",
           "pow2_grid", "system_for"]
