"""Physical chips that replicas of several pools share, by partitions or by time."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

from kcompiler.cluster.engine.events import Sim


class Tenant(Protocol):
    """What a Chip uses of a replica sharing it (kcompiler.cluster.engine.replica.Replica): whether it
    is busy, its pool (for the pool's model) and its kick callback, scheduled when it gets the chip."""

    busy: bool
    pool: Any
    kick_cb: Callable[..., None]


class Chip:
    """A physical chip shared by replicas of several pools: by partitions (each tenant has its
    cores; DRAM bandwidth is contended) or by time (one tenant at a time; a switch reloads the
    weights that do not stay resident)."""

    def __init__(self, name: str, sharing: str, switch_s: dict[str, float] | None = None):
        self.name = name
        self.sharing = sharing  # "partition" | "temporal"
        self.tenants: list[Tenant] = []
        self.owner: Tenant | None = None
        self.waiting: deque = deque()
        self.last_model: str | None = None
        self.switch_s = switch_s or {}
        self.switches = 0
        self.switch_time = 0.0
        self.contended_s = 0.0

    def others_busy(self, rep: Tenant) -> bool:
        return any(t.busy for t in self.tenants if t is not rep)

    def acquire(self, rep: Tenant) -> float | None:
        """Temporal sharing: None if another tenant holds the chip (rep waits), else the switch
        time to charge before rep's work."""
        if self.owner is not None and self.owner is not rep:
            if rep not in self.waiting:
                self.waiting.append(rep)
            return None
        self.owner = rep
        cost = 0.0
        if self.last_model is not None and self.last_model != rep.pool.model:
            cost = self.switch_s.get(rep.pool.model, 0.0)
            self.switches += 1
            self.switch_time += cost
        self.last_model = rep.pool.model
        return cost

    def release(self, rep: Tenant, sim: Sim) -> None:
        """rep is done with the chip: the longest-waiting tenant gets it (FCFS between tenants;
        rep cannot take it straight back while another waits)."""
        if self.owner is rep:
            self.owner = None
            if self.waiting:
                nxt = self.waiting.popleft()
                self.owner = nxt
                sim.at(sim.now, nxt.kick_cb)
