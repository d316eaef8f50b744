"""Deployments: which models run where, how many copies, and how they are scheduled.

A deployment TOML (see docs/cluster.md) has pools of replicas (``[[pool]]``), optional groups of
physical chips that pools share (``[chips.NAME]``: by partitions, i.e. virtual NPUs, or by time),
and service-level objectives (``[slo]``). Every key is checked when the file is read and an error
names the file, the line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcompiler import targets, zoo
from kcompiler.cluster.spec import ClusterSpecError, Source, choice, positive, seconds
from kcompiler.errors import KCError

SCHEDULERS = ("dynamic", "static", "continuous", "chunked")
ROUTERS = ("round-robin", "least-loaded", "kv-aware")
ROLES = ("both", "prefill", "decode", "package")
PARALLEL = ("none", "tensor", "pipeline", "data")
#: bounds that keep a deployment's simulation within memory (a hostile file cannot ask for 10^9 replicas)
LIMITS = {"replicas": 100_000, "devices": 1024, "max_batch": 4096, "chunk": 1 << 20, "max_tokens": 1 << 22}
POOL_KEYS = {"name", "model", "dtype", "layers", "target", "replicas", "devices", "parallel", "scheduler",
             "max_batch", "max_delay", "chunk", "max_tokens", "memory_utilization", "router", "role",
             "decode_pool", "share", "chips", "partition", "interconnect", "prefill_target"}


@dataclass
class PoolSpec:
    name: str
    model: str
    target: str
    replicas: int = 1
    devices: int | None = None
    parallel: str = "none"
    scheduler: str = "continuous"
    max_batch: int = 32
    max_delay: float = 0.0
    chunk: int = 0
    max_tokens: int = 4096
    memory_utilization: float = 0.9
    router: str = "least-loaded"
    role: str = "both"
    decode_pool: str | None = None
    share: float = 1.0
    chips: str | None = None
    partition: tuple[int, int] | None = None
    interconnect: str = "pcie-gen5"
    prefill_target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def llm(self) -> bool:
        return self.scheduler != "dynamic"


@dataclass
class ChipGroup:
    name: str
    target: str
    count: int


@dataclass
class Deployment:
    name: str
    pools: list[PoolSpec]
    chips: dict[str, ChipGroup]
    slo: dict[str, float]
    source: str = ""
    seed: int = 0


def load(path: str | Path) -> Deployment:
    return _read(Source(path, "deployment"))


def loads(text: str, name: str = "<deployment>") -> Deployment:
    """A deployment from TOML text (`name` stands for the file in messages; a .kcm model is
    looked up from the current folder)."""
    return _read(Source(name, "deployment", text))


def _read(src: Source) -> Deployment:
    path = src.path
    d = src.data
    src.check_keys(d, (), {"name", "pool", "chips", "slo", "seed"})
    pools_raw = d.get("pool")
    if not isinstance(pools_raw, list) or not pools_raw:
        raise src.error(("pool",), "missing: a deployment needs at least one [[pool]]",
                        hint='add [[pool]] with model = "llama-7b" and target = "atom"')
    chips: dict[str, ChipGroup] = {}
    for gname, g in (d.get("chips") or {}).items():
        if not isinstance(g, dict):
            raise src.error(("chips", gname), "must be a table with target and count")
        src.check_keys(g, ("chips", gname), {"target", "count"})
        target = g.get("target")
        if not isinstance(target, str):
            raise src.error(("chips", gname, "target"), "missing or not a string")
        _check_target(src, ("chips", gname, "target"), target)
        count = positive(src, ("chips", gname, "count"), g.get("count", 1))
        if count > LIMITS["replicas"]:
            raise src.error(("chips", gname, "count"), f"{count:,} is more than the simulator takes")
        chips[gname] = ChipGroup(gname, target, count)
    pools = [_pool(src, i, p, chips) for i, p in enumerate(pools_raw)]
    names = [p.name for p in pools]
    for i, p in enumerate(pools):
        if names.count(p.name) > 1:
            raise src.error(("pool", i, "name"), f"pool name '{p.name}' is used twice", hint="give each pool a name")
        if p.role == "prefill":
            if p.decode_pool not in names:
                raise src.error(("pool", i, "decode_pool"), f"{p.decode_pool!r} names no pool",
                                hint=f"name one of {names}")
            dp = pools[names.index(p.decode_pool)]
            if dp.role != "decode" or dp.model != p.model:
                raise src.error(("pool", i, "decode_pool"), f"pool '{dp.name}' is not a decode pool of {p.model}",
                                hint='give it role = "decode" and the same model')
        elif p.decode_pool is not None:
            raise src.error(("pool", i, "decode_pool"), 'only a pool with role = "prefill" hands requests on')
    if not any(p.role != "decode" for p in pools):
        raise src.error(("pool",), "every pool is a decode pool: no pool receives requests")
    slo_raw = d.get("slo") or {}
    if not isinstance(slo_raw, dict):
        raise src.error(("slo",), "must be a table, e.g. [slo] ttft = \"2 s\"")
    src.check_keys(slo_raw, ("slo",), {"ttft", "tpot", "e2e"})
    slo = {k: seconds(src, ("slo", k), v) for k, v in slo_raw.items()}
    seed = d.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise src.error(("seed",), f"{seed!r} must be an integer")
    return Deployment(str(d.get("name", Path(path).stem)), pools, chips, slo, str(path), seed)


def _check_target(src: Source, path: tuple, target: str) -> None:
    try:
        targets.resolve(target)
    except KCError as exc:
        raise src.error(path, f"target '{target}' is not known ({str(exc).splitlines()[0]})",
                        hint="`kc targets` lists the chips; systems are written like atom+aim") from None


def _check_model(src: Source, path: tuple, model: str) -> None:
    if model.endswith(".kcm"):
        if not (Path(src.path).parent / model).is_file() and not Path(model).is_file():
            raise src.error(path, f"compiled model '{model}' does not exist",
                            hint="compile it with `kc compile MODEL -o FILE.kcm` or name a zoo model")
        return
    if model not in zoo.entries():
        raise src.error(path, f"model '{model}' is not a zoo model or a .kcm file",
                        hint="`kc zoo` lists the models")


def _pool(src: Source, i: int, p: Any, chips: dict[str, ChipGroup]) -> PoolSpec:
    """One [[pool]] table, checked key by key (in the order the messages have always come in)."""
    at = ("pool", i)
    if not isinstance(p, dict):
        raise src.error(at, "must be a table")
    src.check_keys(p, at, POOL_KEYS)
    model, target, chips_name = _model_and_target(src, at, p, chips)
    out = PoolSpec(name=str(p.get("name", model if not model.endswith(".kcm") else Path(model).stem)),
                   model=model, target=target)
    is_llm = _scheduling(src, at, p, out)
    _placement(src, at, p, out, chips, chips_name)
    for k in ("dtype", "layers"):
        if k in p:
            out.options[k] = p[k]
    if out.options:
        try:
            _check_options(model, out.options, is_llm)
        except (ValueError, TypeError, KCError) as exc:
            raise src.error(at + (next(iter(out.options)),), str(exc).splitlines()[0]) from None
    return out


def _model_and_target(src: Source, at: tuple, p: dict, chips: dict[str, ChipGroup]) -> tuple[str, str, str | None]:
    """A pool's model (a .kcm beside the deployment file is taken from there), its target and the
    chips group it names; and the size limits of its figures."""
    model = p.get("model")
    if not isinstance(model, str):
        raise src.error(at + ("model",), "missing or not a string", hint='e.g. model = "llama-7b"')
    _check_model(src, at + ("model",), model)
    if model.endswith(".kcm") and (Path(src.path).parent / model).is_file():
        model = str(Path(src.path).parent / model)  # relative to the deployment file
    chips_name = p.get("chips")
    if chips_name is not None and chips_name not in chips:
        raise src.error(at + ("chips",), f"{chips_name!r} names no [chips.*] group",
                        hint=f"define [chips.{chips_name}] with target and count")
    target = p.get("target", chips[chips_name].target if chips_name else None)
    if not isinstance(target, str):
        raise src.error(at + ("target",), "missing or not a string", hint='e.g. target = "atom" or "atom+aim"')
    if chips_name and target != chips[chips_name].target:
        raise src.error(at + ("target",), f"'{target}' differs from chips.{chips_name}.target "
                                          f"'{chips[chips_name].target}'")
    _check_target(src, at + ("target",), target)
    for k, hi in LIMITS.items():
        v = p.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > hi:
            raise src.error(at + (k,), f"{v:,} is more than the simulator takes ({hi:,})")
    return model, target, chips_name


def _scheduling(src: Source, at: tuple, p: dict, out: PoolSpec) -> bool:
    """Replicas, devices, the scheduler and its batching figures, router and role, into `out`;
    whether the model is a zoo decoder."""
    model, target = out.model, out.target
    out.replicas = positive(src, at + ("replicas",), p.get("replicas", 1))
    if "devices" in p:
        out.devices = positive(src, at + ("devices",), p["devices"])
    out.parallel = choice(src, at + ("parallel",), p.get("parallel", "tensor" if (out.devices or 1) > 1 else "none"),
                          PARALLEL)
    entry = zoo.entries().get(model)
    is_llm = entry is not None and _is_decoder(model)
    out.scheduler = choice(src, at + ("scheduler",), p.get("scheduler", "continuous" if is_llm else "dynamic"),
                           SCHEDULERS)
    if out.scheduler != "dynamic" and not is_llm:
        raise src.error(at + ("scheduler",), f"'{out.scheduler}' batches LLM decoding; '{model}' is not a zoo decoder",
                        hint='use scheduler = "dynamic" for CNNs and encoders')
    out.max_batch = positive(src, at + ("max_batch",), p.get("max_batch", 32 if is_llm else 8))
    if "max_delay" in p:
        out.max_delay = seconds(src, at + ("max_delay",), p["max_delay"])
    else:
        out.max_delay = 0.0 if out.scheduler != "static" else 0.5
    if out.scheduler == "chunked":
        out.chunk = positive(src, at + ("chunk",), p.get("chunk", 512))
        if out.chunk <= out.max_batch:
            raise src.error(at + ("chunk",), f"a token budget of {out.chunk} leaves no room beside "
                                              f"{out.max_batch} decodes", hint="make chunk larger than max_batch")
    elif "chunk" in p:
        raise src.error(at + ("chunk",), 'applies to scheduler = "chunked" only')
    out.max_tokens = positive(src, at + ("max_tokens",), p.get("max_tokens", 4096))
    mu = p.get("memory_utilization", 0.9)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 < mu <= 1:
        raise src.error(at + ("memory_utilization",), f"{mu!r} must be a fraction in (0, 1]")
    out.memory_utilization = float(mu)
    out.router = choice(src, at + ("router",), p.get("router", "least-loaded"), ROUTERS)
    out.role = choice(src, at + ("role",), p.get("role", "both"), ROLES)
    if out.role != "both" and out.scheduler not in ("continuous",):
        raise src.error(at + ("role",), f"disaggregation runs with scheduler = \"continuous\", not '{out.scheduler}'")
    if out.role == "package":
        if not any(d.chip.kind == "pim" for d in _system(target).accelerators):
            raise src.error(at + ("role",), f"'package' runs prefill on the NPU and decode on PIM of one "
                                            f"package; '{target}' has no PIM device", hint="use e.g. atom+aim")
    return is_llm


def _placement(src: Source, at: tuple, p: dict, out: PoolSpec, chips: dict[str, ChipGroup],
               chips_name: str | None) -> None:
    """Where a pool's replicas sit and what they hand on: decode pool, share of the requests, the
    chips group and partition, interconnect, prefill target; into `out`."""
    out.decode_pool = p.get("decode_pool")
    share = p.get("share", 1.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0:
        raise src.error(at + ("share",), f"{share!r} must be a positive number (a weight)")
    out.share = float(share)
    out.chips = chips_name
    if chips_name and out.replicas > chips[chips_name].count:
        raise src.error(at + ("replicas",), f"{out.replicas} replicas on chips.{chips_name}'s "
                                            f"{chips[chips_name].count} chip(s)", hint="one replica per chip")
    if "partition" in p:
        out.partition = _partition(src, at + ("partition",), p["partition"], out.target)
        if not chips_name:
            raise src.error(at + ("partition",), "a partition is of a shared chip",
                            hint='name the chips it shares with chips = "..."')
    ic = p.get("interconnect", "pcie-gen5")
    out.interconnect = str(ic)
    out.prefill_target = p.get("prefill_target")


def _check_options(model: str, options: dict, is_llm: bool) -> None:
    # (zoo.transformers imports onnx: kept out of `kc`'s start, which imports this module)
    from kcompiler.zoo import transformers as tz

    if is_llm:
        tz.resolve_options(model, **options)
    elif options:
        raise ValueError(f"options {sorted(options)} apply to zoo transformers only")


def _is_decoder(model: str) -> bool:
    from kcompiler.zoo import transformers as tz

    cfg = tz.PRESETS.get(model)
    return cfg is not None and cfg.family != "bert"


def _system(target: str):
    return targets.resolve(target)


def _partition(src: Source, path: tuple, value: Any, target: str) -> tuple[int, int]:
    if not isinstance(value, str) or value.count("/") != 1:
        raise src.error(path, f"{value!r} is not INDEX/COUNT", hint='e.g. partition = "0/2": the first of two halves')
    a, b = value.split("/")
    try:
        index, count = int(a), int(b)
    except ValueError:
        raise src.error(path, f"{value!r} is not INDEX/COUNT", hint='e.g. partition = "1/2"') from None
    if count < 1 or not 0 <= index < count:
        raise src.error(path, f"{value!r}: index must be in 0..count-1")
    system = _system(target)
    if len(system.accelerators) != 1 or system.accelerators[0].chip.kind != "npu":
        raise src.error(path, f"only a single NPU chip can be partitioned; '{target}' is not one")
    cores = system.accelerators[0].chip.spec.cores
    if count > cores or cores % count:
        raise src.error(path, f"'{target}' has {cores} cores: {count} equal partitions do not fit",
                        hint=f"use a count that divides {cores}")
    return index, count


__all__ = ["Deployment", "PoolSpec", "ChipGroup", "load", "loads", "ClusterSpecError"]
