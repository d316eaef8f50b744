"""A replica (one copy of a model on its hardware) and its scheduler's machinery; the queue
batchers that CNNs and encoders use (Triton's dynamic batching rule)."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque

from kcompiler.cluster.engine.events import INF, Sim
from kcompiler.cluster.engine.sharing import Chip


class Replica(ABC):
    """One copy of a model on its hardware, with a scheduler; subclasses decide iterations."""

    kind = "replica"

    def __init__(self, sim: Sim, pool, index: int, local: int, chip: Chip | None = None):
        self.sim = sim
        self.pool = pool
        self.index = index  # fleet-wide
        self.local = local  # within the pool
        self.name = f"{pool.name}/{local}"
        self.chip = chip
        self.busy = False
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.iterations = 0
        self.outstanding = 0  # requests routed here and not finished
        self.kick_cb = self._kick
        self.done_cb = self._done
        self.timer_at = INF
        self.share_factor = 0.0  # NPU+PIM package: the NPU share of the sibling's work

    # the scheduler -----------------------------------------------------------------------------
    @abstractmethod
    def arrive(self, rid: int) -> None:
        """Request `rid` is routed here."""

    @abstractmethod
    def next_iteration(self):
        """The iteration to run now, as (duration_s, energy_j, name, payload), or None to wait."""

    @abstractmethod
    def complete(self, payload) -> None:
        """The iteration started with `payload` has ended (sim.now is its end)."""

    # the machinery -----------------------------------------------------------------------------
    def _kick(self, _=None) -> None:
        if self.busy:
            return
        chip = self.chip
        temporal = chip is not None and chip.sharing == "temporal"
        extra = 0.0
        if temporal:
            if not self.has_work():
                if chip.owner is self:  # handed the chip with nothing to do: pass it on
                    chip.release(self, self.sim)
                return
            got = chip.acquire(self)
            if got is None:
                return
            extra = got
        it = self.next_iteration()
        if it is None:
            if temporal:
                chip.release(self, self.sim)
            return
        dur, energy, name, payload = it
        contended = False
        if chip is not None and not temporal and chip.others_busy(self):
            dur2 = self.contended_duration(payload, dur)
            contended = dur2 != dur
            if contended:
                chip.contended_s += dur2
            dur = dur2
        sim = self.sim
        now = sim.now
        if extra:
            sim.span(self, "switch model", now, now + extra, {"model": self.pool.model})
        end = now + extra + dur
        self.busy = True
        self.busy_s += extra + dur
        self.energy_j += energy
        self.iterations += 1
        bins = sim.bins
        if bins is not None:
            w = sim.bin_s
            b = int(now / w)
            if end <= (b + 1) * w:  # the usual case: the iteration is inside one bin
                row = bins[self.index]
                row[b] = row.get(b, 0.0) + (end - now)
            else:
                sim.add_busy(self.index, now, end)
        if sim.trace_limit:
            sim.span(self, name, now + extra, end, {"contended": True} if contended else None)
        sim._n += 1
        heapq.heappush(sim._q, (end, sim._n, self.done_cb, payload))

    def contended_duration(self, payload, dur: float) -> float:
        return dur

    def _done(self, payload) -> None:
        self.busy = False
        self.complete(payload)
        if self.chip is not None and self.chip.sharing == "temporal":
            self.chip.release(self, self.sim)
        self._kick()

    def has_work(self) -> bool:
        return True

    def finish(self, rid: int, t: float) -> None:
        sim = self.sim
        sim.finish[rid] = t
        sim.placed[rid] = self.index
        self.outstanding -= 1
        self.pool.completed += 1

    def refuse(self, rid: int) -> None:
        """rid can never be served here (its context needs more KV than the replica has)."""
        self.pool.rejected += 1
        self.outstanding -= 1
        self.sim.finish[rid] = -1.0

    # router figure (kv-aware)
    def free_kv(self) -> float:
        return 0.0


class QueueBatcher(Replica):
    """A FCFS queue from which a batch starts when max_batch requests wait or the oldest has
    waited max_delay (then with what is there): Triton's dynamic batcher's rule."""

    def __init__(self, sim, pool, index, local, chip):
        super().__init__(sim, pool, index, local, chip)
        self.queue: deque = deque()
        self.max_batch = pool.max_batch
        self.max_delay = pool.max_delay

    def has_work(self) -> bool:
        return bool(self.queue)

    def arrive(self, rid: int) -> None:
        self.outstanding += 1
        self.queue.append(rid)
        if not self.busy:
            self._kick()

    def _timer(self, _=None) -> None:
        self.timer_at = INF
        self._kick()

    def batch_due(self) -> bool:
        """Whether a batch starts now; if not, a timer wakes the replica when the oldest request
        has waited max_delay."""
        q = self.queue
        if not q:
            return False
        if len(q) >= self.max_batch:
            return True
        due = self.sim.arrival[q[0]] + self.max_delay
        if self.sim.now >= due - 1e-12:
            return True
        if self.timer_at > due:
            self.timer_at = due
            self.sim.at(due, self._timer)
        return False


class DynamicBatcher(QueueBatcher):
    """Triton's dynamic batcher (CNNs, encoders): a request's answer is its batch's end."""

    kind = "dynamic"

    def __init__(self, sim, pool, index, local, chip, table, contended_table=None):
        super().__init__(sim, pool, index, local, chip)
        self.lat, self.en = table
        self.lat_c = contended_table[0] if contended_table else None

    def next_iteration(self):
        if not self.batch_due():
            return None
        q = self.queue
        b = min(len(q), self.max_batch)
        batch = [q.popleft() for _ in range(b)]
        return self.lat[b], self.en[b], f"batch {b}", batch

    def contended_duration(self, batch, dur):
        return self.lat_c[len(batch)] if self.lat_c else dur

    def complete(self, batch) -> None:
        t = self.sim.now
        first = self.sim.first
        for rid in batch:
            first[rid] = t
            self.finish(rid, t)
