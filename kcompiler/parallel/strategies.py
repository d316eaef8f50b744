"""Parallel plans, and the strategies that name them, registered by name like passes and backends.

A plan is (intra, t, k): ``k`` pipeline stages, each run by a group of ``t`` chips that split
its work ``intra`` (an intra-stage split: "none", "data" or "tensor"). A strategy is what a
user names (``--parallel NAME``, ``compile(parallel=NAME)``): either a fixed plan over the N
chips (``plan``) or a search over plans (``auto``). A strategy that is also an intra-stage
split says how the rewriter treats it (``input_axis``, ``seeded``) and how a plan using it is
analysed, checked and weighed by auto (``analyse``, ``check``, ``skip``, ``auto_rank``).

Adding a strategy is one module: a subclass of ``Strategy`` decorated with
``@register_strategy``, imported by ``kcompiler/parallel/__init__.py`` (data.py, tensor.py,
pipeline.py; ``none`` and ``auto`` are below). ``strategy_names()`` lists the fixed strategies
in the order they were registered, then the searching ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from kcompiler.errors import KCError

#: what --parallel auto optimises
OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Plan:
    """(intra, t, k): k pipeline stages of t chips each, a stage's work split `intra` among its chips."""

    intra: str = "none"  # how a stage's group splits its work: a registered intra-stage split
    t: int = 1  # chips per stage
    k: int = 1  # pipeline stages

    @property
    def devices(self) -> int:
        return self.t * self.k

    @property
    def label(self) -> str:
        parts = []
        if self.t > 1 or (self.intra != "none" and self.k == 1):
            parts.append(f"{self.intra}x{self.t}")
        if self.k > 1:
            parts.append(f"pipeline x{self.k}")
        return " + ".join(parts) or "none (1 chip)"

    @classmethod
    def fixed(cls, strategy: str, n: int) -> "Plan":
        """The plan a fixed strategy names over `n` chips."""
        found = _REGISTRY.get(strategy)
        plan = found.plan(n) if found is not None else None
        if plan is None:
            raise KCError(f"unknown parallel strategy '{strategy}'", hint=f"choose one of {strategy_names()}")
        return plan


class Strategy:
    """A parallel strategy; subclasses set the class attributes and override what applies."""

    name: str = ""
    #: names no plan: the driver searches the registered splits' plans (candidate_plans) and
    #: compiles the best (kcompiler.driver.auto)
    searches: bool = False
    #: an intra-stage split: a plan may name it as how a stage's group splits its work
    intra: bool = False
    #: the axis along which graph inputs start split among a group's ranks (data: the batch)
    input_axis: int | None = None
    #: the split starts at seed nodes that ``analyse`` chooses (tensor: column-split MatMuls)
    seeded: bool = False
    #: where auto lists plans of this split among those of the same shape (None: auto skips it)
    auto_rank: int | None = None

    @property
    def doc(self) -> str:
        """The first line of the subclass's docstring (what --help and listings say)."""
        return next(iter((type(self).__doc__ or "").strip().splitlines()), "")

    def plan(self, n: int) -> Plan | None:
        """The plan over `n` chips this strategy names (None: it searches)."""
        return None

    def analyse(self, model: ir.Model, system, group: list[str], cost: dict[int, float]) -> tuple[set[int], Any]:
        """Before any rewriting, a stage split over `group` (more than one chip): (the seeds the
        rewrite starts from, the spmd Analysis the estimate reads, or None for no split)."""
        return set(), None

    def check(self, model: ir.Model, plan: Plan) -> None:
        """Raise a KCError saying why the model cannot be split this way over ``plan.t`` chips."""

    def skip(self, model: ir.Model, plan: Plan) -> str | None:
        """Why auto does not weigh `plan` for this model (None: it does)."""
        return None


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Decorator: make a Strategy subclass available by its ``name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`."""
    if name not in _REGISTRY:
        raise KCError(f"unknown parallel strategy '{name}'", hint=f"choose one of {strategy_names()}")
    return _REGISTRY[name]


def get_split(name: str) -> Strategy:
    """The intra-stage split registered as `name` (a Plan's ``intra``)."""
    found = _REGISTRY.get(name)
    if found is None or not found.intra:
        raise KCError(f"unknown intra-stage split '{name}'")
    return found


def strategy_names() -> list[str]:
    """The names a user may give (--parallel): the fixed strategies, then the searching ones."""
    return [s.name for s in _REGISTRY.values() if not s.searches] + [s.name for s in _REGISTRY.values() if s.searches]


def split_names() -> list[str]:
    """The intra-stage splits a Plan may name."""
    return [s.name for s in _REGISTRY.values() if s.intra]


def fixed_plans(n: int) -> list[Plan]:
    """The plan of every fixed strategy over `n` chips (auto always simulates these)."""
    return [s.plan(n) for s in _REGISTRY.values() if not s.searches]


def candidate_plans(n: int) -> list[Plan]:
    """The plans auto weighs over up to `n` chips: one chip; then for every degree d dividing n
    and every t dividing d, d // t pipeline stages of t chips, each split of auto's in turn."""
    splits = sorted((s for s in _REGISTRY.values() if s.intra and s.auto_rank is not None), key=lambda s: s.auto_rank)
    plans = [Plan("none", 1, 1)]
    for d in sorted({x for x in range(2, n + 1) if n % x == 0}):
        for t in [x for x in range(1, d + 1) if d % x == 0]:
            k = d // t
            if t == 1:
                plans.append(Plan("none", 1, k))
            else:
                plans.extend(Plan(s.name, t, k) for s in splits)
    return plans


def skip_reason(model: ir.Model, plan: Plan) -> str | None:
    """Why auto does not weigh `plan` for `model` (None: it does)."""
    return get_split(plan.intra).skip(model, plan)


@register_strategy
class NoSplit(Strategy):
    """One chip runs the model (other chips idle)."""

    name = "none"
    intra = True

    def plan(self, n: int) -> Plan:
        return Plan("none", 1, 1)


@register_strategy
class Auto(Strategy):
    """Weigh every plan over 1, 2, 4, ... N chips and keep the best for the objective."""

    name = "auto"
    searches = True
