"""A sweep specification: models × targets × parameters, the objectives and the search.

A spec is a TOML file (examples/sweeps/). Every key is checked: an unknown key, a parameter
that names no figure of the target's chips, an empty value list or a bad range is a KCError
naming the file and the key. Points are plain data (``Point``), identified by a hash of what
they compute, so a re-run finds the points already in the results store whatever order they
come in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kcompiler.errors import KCError, TargetError
from kcompiler.targets import chip_data, is_system_name, resolve

#: objective name -> (report figure, direction): "min" or "max"
OBJECTIVES = {
    "latency": ("latency_s", "min"),
    "throughput": ("throughput_per_s", "max"),
    "energy": ("energy_j", "min"),
    "dram": ("dram_bytes", "min"),
    "area": ("area_mm2", "min"),
}
SEARCHES = ("grid", "random", "nsga2", "tpe")
MODEL_KEYS = ("name", "batch", "seq", "kv", "phase", "dtype", "layers", "shapes", "parameters")
#: parameters that are not chip figures
SPECIAL = ("devices", "parallel", "interconnect", "topology", "place")
PARALLEL = ("none", "data", "tensor", "pipeline", "auto")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the sweep: a zoo name or an ONNX file, with its zoo options."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()  # (key, value) of batch/seq/kv/phase/dtype/layers
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def label(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name} {opts}".strip()

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, **dict(self.options)}
        if self.shapes:
            d["shapes"] = {k: list(v) for k, v in self.shapes}
        return d


@dataclass(frozen=True)
class Point:
    """One configuration to compile and simulate."""

    model: ModelSpec
    target: str
    params: tuple[tuple[str, Any], ...]  # (key, value) in spec order
    mode: str = "timing"

    def canonical(self) -> dict:
        return {"model": self.model.to_dict(), "target": self.target, "mode": self.mode,
                "params": {k: v for k, v in self.params}}

    @property
    def id(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def param(self, key: str, default=None):
        for k, v in self.params:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Spec:
    name: str
    models: tuple[ModelSpec, ...]
    targets: tuple[str, ...]
    parameters: tuple[tuple[str, tuple[Any, ...]], ...]  # key -> the values it takes (every model)
    objectives: tuple[str, ...] = ("latency", "energy", "area")
    search: str = "grid"
    samples: int = 0  # random / optuna: points to evaluate (0 = the whole grid for random)
    seed: int = 0
    mode: str = "timing"
    source: str = "<spec>"
    text: str = field(default="", repr=False)  # the spec as written (kept in the results store)
    #: per model: keys whose values its [models.parameters] table replaces or adds
    model_parameters: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...] = ()

    def parameters_of(self, i: int) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """The parameters model i is swept over: the sweep's, with its own table's keys replaced or added."""
        own = dict(self.model_parameters[i]) if i < len(self.model_parameters) else {}
        merged = [(k, own.pop(k, v)) for k, v in self.parameters]
        return tuple(merged + list(own.items()))

    @property
    def keys(self) -> list[str]:
        """Every parameter key of the sweep (the sweep's, then models' own), in spec order."""
        out = [k for k, _ in self.parameters]
        for mp in self.model_parameters:
            out += [k for k, _ in mp if k not in out]
        return out

    def values_of(self, key: str) -> list[Any]:
        vals = list(dict(self.parameters).get(key, ()))
        for i in range(len(self.models)):
            vals += [v for v in dict(self.parameters_of(i)).get(key, ()) if v not in vals]
        return vals

    def model_grid_size(self, i: int) -> int:
        return len(self.targets) * math.prod(len(v) for _, v in self.parameters_of(i))

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:16]

    def canonical(self) -> dict:
        return {"models": [m.to_dict() for m in self.models], "targets": list(self.targets),
                "parameters": {k: list(v) for k, v in self.parameters},
                "model_parameters": [{k: list(v) for k, v in mp} for mp in self.model_parameters],
                "objectives": list(self.objectives),
                "search": self.search, "samples": self.samples, "seed": self.seed, "mode": self.mode}

    @property
    def grid_size(self) -> int:
        return sum(self.model_grid_size(i) for i in range(len(self.models)))

    def grid(self):
        """Every point of the full grid, models outermost (a worker's model cache then hits)."""
        for i, m in enumerate(self.models):
            params = self.parameters_of(i)
            keys = [k for k, _ in params]
            for t in self.targets:
                for combo in itertools.product(*(v for _, v in params)):
                    yield Point(m, t, tuple(zip(keys, combo)), self.mode)

    def points(self) -> list[Point]:
        """The points a grid or random search evaluates (optuna searches ask as they go)."""
        if self.search == "grid":
            return list(self.grid())
        if self.search == "random":
            n = self.grid_size if self.samples <= 0 else min(self.samples, self.grid_size)
            rng = random.Random(self.seed)
            if self.grid_size <= 200_000:
                return rng.sample(list(self.grid()), n)
            seen: dict[str, Point] = {}
            while len(seen) < n:
                p = self.random_point(rng)
                seen.setdefault(p.id, p)
            return list(seen.values())
        raise KCError(f"search '{self.search}' asks for points as it goes; use kcompiler.sweep.run")

    def random_point(self, rng: random.Random) -> Point:
        """A uniform draw from the grid (a model in proportion to its grid)."""
        i = rng.choices(range(len(self.models)), weights=[self.model_grid_size(j) for j in range(len(self.models))])[0]
        t = rng.choice(self.targets)
        return Point(self.models[i], t, tuple((k, rng.choice(v)) for k, v in self.parameters_of(i)), self.mode)


# ---- parsing -----------------------------------------------------------------------------------

def load(path: str | Path) -> Spec:
    """Read and check a sweep spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise KCError(f"{path}: no such sweep spec", hint="see examples/sweeps/ for one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KCError(f"{path}: cannot read the sweep spec: {exc}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<spec>") -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KCError(f"{source}: not valid TOML: {exc}") from None
    _keys(data, {"sweep", "models", "parameters"}, source, "")
    sw = data.get("sweep", {})
    _table(sw, source, "sweep")
    _keys(sw, {"name", "target", "targets", "search", "samples", "seed", "mode", "objectives"}, source, "sweep")
    name = _typed(sw.get("name", Path(source).stem), str, source, "sweep.name")
    search = _typed(sw.get("search", "grid"), str, source, "sweep.search")
    if search not in SEARCHES:
        raise KCError(f"{source}: sweep.search = '{search}' is not one of {list(SEARCHES)}")
    samples = _typed(sw.get("samples", 0), int, source, "sweep.samples")
    if samples < 0 or (search in ("nsga2", "tpe") and samples < 1):
        raise KCError(f"{source}: sweep.samples = {samples}: give how many points to evaluate"
                      + (" (at least 1 for an optimiser)" if search in ("nsga2", "tpe") else " (0 = all)"))
    seed = _typed(sw.get("seed", 0), int, source, "sweep.seed")
    mode = _typed(sw.get("mode", "timing"), str, source, "sweep.mode")
    if mode not in ("timing", "functional"):
        raise KCError(f"{source}: sweep.mode = '{mode}' is not timing or functional")
    objectives = sw.get("objectives", ["latency", "energy", "area"])
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        raise KCError(f"{source}: sweep.objectives must be a non-empty list of names",
                      hint=f"choose from {list(OBJECTIVES)}")
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise KCError(f"{source}: sweep.objectives: unknown {bad}", hint=f"choose from {list(OBJECTIVES)}")

    models, own_tables = _models(data.get("models"), source)
    if "target" in sw and "targets" in sw:
        raise KCError(f"{source}: give sweep.target or sweep.targets, not both")
    tg = sw.get("targets", sw.get("target"))
    if tg is None:
        raise KCError(f"{source}: missing sweep.target (a chip or system such as \"atom\" or \"atom+aim\")")
    tlist = [tg] if isinstance(tg, str) else tg
    if not isinstance(tlist, list) or not tlist or not all(isinstance(t, str) and t.strip() for t in tlist):
        raise KCError(f"{source}: sweep.targets must be a chip or system name or a non-empty list of them")
    params = _parameters(data.get("parameters", {}), source, [t.strip() for t in tlist])
    model_params = tuple(_parameters(t, source, [x.strip() for x in tlist], f"models[{i}].parameters")
                         for i, t in enumerate(own_tables))
    spec = Spec(name=name, models=tuple(models), targets=tuple(t.strip() for t in tlist), parameters=params,
                objectives=tuple(dict.fromkeys(objectives)), search=search, samples=samples, seed=seed, mode=mode,
                source=source, text=text, model_parameters=model_params)
    if spec.grid_size == 0:
        raise KCError(f"{source}: the sweep has no points")
    return spec


def _models(value, source) -> tuple[list[ModelSpec], list[dict]]:
    """The models, and each one's own [models.parameters] table (empty when it has none)."""
    if value is None:
        raise KCError(f"{source}: missing [[models]] (one table per model: name = \"resnet50\")")
    if not isinstance(value, list) or not value:
        raise KCError(f"{source}: 'models' must be a list of tables ([[models]] name = ...)")
    out, tables = [], []
    for i, m in enumerate(value):
        where = f"models[{i}]"
        if isinstance(m, str):
            m = {"name": m}
        _table(m, source, where)
        _keys(m, set(MODEL_KEYS), source, where)
        if not isinstance(m.get("name"), str) or not m["name"]:
            raise KCError(f"{source}: {where}.name: give a zoo model name or an .onnx file")
        opts = []
        for k in ("batch", "seq", "kv", "layers"):
            if k in m:
                v = _typed(m[k], int, source, f"{where}.{k}")
                if v < 1:
                    raise KCError(f"{source}: {where}.{k} = {v} must be at least 1")
                opts.append((k, v))
        if "phase" in m:
            if m["phase"] not in ("prefill", "decode"):
                raise KCError(f"{source}: {where}.phase = {m['phase']!r} is not prefill or decode")
            opts.append(("phase", m["phase"]))
        if "dtype" in m:
            if m["dtype"] not in ("fp32", "fp16", "bf16"):
                raise KCError(f"{source}: {where}.dtype = {m['dtype']!r} is not fp32, fp16 or bf16")
            opts.append(("dtype", m["dtype"]))
        shapes = []
        if "shapes" in m:
            _table(m["shapes"], source, f"{where}.shapes")
            for k, v in m["shapes"].items():
                if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                      for x in v):
                    raise KCError(f"{source}: {where}.shapes.{k} must be a list of positive integers")
                shapes.append((k, tuple(v)))
        name = m["name"]
        if name.endswith(".onnx") and not Path(name).is_absolute():
            name = str((Path(source).parent / name).resolve()) if source != "<spec>" else name
        out.append(ModelSpec(name, tuple(opts), tuple(shapes)))
        tables.append(m.get("parameters", {}))
    return out, tables


def _parameters(table, source, targets, prefix="parameters") -> tuple[tuple[str, tuple[Any, ...]], ...]:
    _table(table, source, prefix)
    out = []
    for key, value in table.items():
        where = f"{prefix}.{key}"
        values = _values(value, source, where)
        if key == "devices":
            for v in values:
                if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1024:
                    raise KCError(f"{source}: {where}: {v!r} is not a chip count (1 to 1024)")
            for t in targets:
                if is_system_name(t):
                    raise KCError(f"{source}: {where} applies to a single chip, not the system '{t}'",
                                  hint="vary a chip figure such as aim.pim.chips, or list systems in 'targets'")
        elif key == "parallel":
            bad = [v for v in values if v not in PARALLEL]
            if bad:
                raise KCError(f"{source}: {where}: {bad} not in {list(PARALLEL)}")
        elif key in ("interconnect", "topology"):
            if not all(isinstance(v, str) for v in values):
                raise KCError(f"{source}: {where} takes names")
        elif key == "place":
            for v in values:
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    raise KCError(f"{source}: {where}: each value is a table of node, op type or * = device",
                                  hint='place = [{}, {Softmax = "host"}]')
        else:
            _check_figure(key, values, targets, source, where)
        out.append((key, tuple(values)))
    return tuple(out)


def _values(value, source, where) -> list:
    """A list of values, or a range table: {start, stop, step} (inclusive), {start, stop, num[, scale]}
    with scale = "linear" or "log" (integers stay integers), {start, stop, factor} (geometric)."""
    if isinstance(value, list):
        vals = value
    elif isinstance(value, dict):
        _keys(value, {"start", "stop", "step", "num", "scale", "factor"}, source, where)
        lo, hi = value.get("start"), value.get("stop")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)):
            raise KCError(f"{source}: {where}: a range needs numbers start and stop")
        integer = isinstance(lo, int) and isinstance(hi, int)
        if "step" in value:
            step = value["step"]
            if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0 or hi < lo:
                raise KCError(f"{source}: {where}: step must be positive and stop >= start")
            n = int(math.floor((hi - lo) / step + 1e-9)) + 1
            vals = [lo + i * step for i in range(n)]
        elif "factor" in value:
            f = value["factor"]
            if not isinstance(f, (int, float)) or f <= 1 or lo <= 0 or hi < lo:
                raise KCError(f"{source}: {where}: factor must be above 1, 0 < start <= stop")
            vals, x = [], lo
            while x <= hi * (1 + 1e-12):
                vals.append(x)
                x *= f
        elif "num" in value:
            n, scale = value["num"], value.get("scale", "linear")
            if not isinstance(n, int) or n < 1 or n > 100_000:
                raise KCError(f"{source}: {where}: num must be 1 to 100000")
            if scale not in ("linear", "log") or (scale == "log" and (lo <= 0 or hi <= 0)):
                raise KCError(f"{source}: {where}: scale must be linear or log (log needs positive ends)")
            if n == 1:
                vals = [lo]
            elif scale == "log":
                vals = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)) for i in range(n)]
            else:
                vals = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        else:
            raise KCError(f"{source}: {where}: a range needs step, num or factor")
        if integer:
            vals = list(dict.fromkeys(int(round(v)) for v in vals))
        elif all(float(v).is_integer() and abs(v) < 2**53 for v in vals) and isinstance(lo, int):
            vals = [int(v) for v in vals]
    else:
        vals = [value]
    if not vals:
        raise KCError(f"{source}: {where}: no values")
    if len(vals) > 100_000:
        raise KCError(f"{source}: {where}: {len(vals)} values is too many (at most 100000)")
    return vals


def _check_figure(key: str, values: list, targets: list[str], source: str, where: str) -> None:
    """`chip.table.figure` (one chip of the target) or `kind.figure` (every chip of that kind) must
    name a figure of every target's chips. Values are checked per point (a value may be valid with
    some of the other parameters and not with others): an impossible one is a failed point."""
    for t in targets:
        try:
            system = resolve(t)
        except TargetError as exc:
            raise KCError(f"{source}: sweep.target '{t}': {exc.message}", hint=exc.hint) from None
        try:
            changes = chip_changes(system, ((key, values[0]),))
        except KCError as exc:
            raise KCError(f"{source}: {where}: {exc.message}", hint=exc.hint) from None
        chips = {d.chip.name: d.chip for d in system.accelerators}
        for chip_name, ch in changes.items():
            data = chip_data(chips[chip_name])
            for dotted in ch:
                node = data
                for part in dotted.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise KCError(f"{source}: {where}: chip '{chip_name}' has no figure '{dotted}'",
                                      hint=f"`kc targets show {chip_name}` lists its figures")
                    node = node[part]
                if isinstance(node, dict):
                    raise KCError(f"{source}: {where}: '{dotted}' of chip '{chip_name}' is a table, not a figure",
                                  hint=f"name one of its keys: {sorted(node)}")


def chip_changes(system, params) -> dict[str, dict[str, Any]]:
    """chip name -> {dotted figure: value} for the chip-figure parameters of a point (the chip is
    the system's: `system.accelerators` has it by that name)."""
    names = {d.chip.name: d.chip for d in system.accelerators}
    kinds = {c.kind for c in names.values()}
    out: dict[str, dict[str, Any]] = {}
    for key, value in params:
        if key in SPECIAL:
            continue
        head, _, rest = key.partition(".")
        if not rest:
            raise KCError(f"'{key}' is neither a chip figure (chip.table.figure, e.g. atom.npu.sram_bytes) nor one "
                          f"of {list(SPECIAL)}")
        if head in names:
            out.setdefault(head, {})[rest] = value
        elif head in kinds:
            for n, c in names.items():
                if c.kind == head:
                    out.setdefault(n, {})[key] = value
        else:
            raise KCError(f"'{key}': target '{system.name}' has no chip or chip kind '{head}'",
                          hint=f"its chips: {sorted(names)}; kinds: {sorted(kinds)}")
    return out


def _keys(table: dict, allowed: set, source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise KCError(f"{source}: [{where or 'top level'}] unknown key(s) {unknown}",
                      hint=f"allowed: {sorted(allowed)}")


def _table(value, source, where) -> None:
    if not isinstance(value, dict):
        raise KCError(f"{source}: '{where}' must be a table")


def _typed(value, tp, source, key):
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise KCError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise KCError(f"{source}: '{key}' must be a string, got {value!r}")
    return value
