"""The fleet's discrete-event engine, its replicas (schedulers) and routers.

One heap of timed events drives everything; per-request state lives in flat lists indexed by
request id, so a million requests cost tens of MB, and an LLM decode step costs O(1) whatever its
batch: a replica never walks its running sequences. A sequence's context grows by one token per
step, so the batch's total context is ``A + b * step`` (A kept as sequences join and leave), the
sequences that need a new KV block at a step are those whose ``(context - joining step) mod
block`` is that step's residue (16 counters), and finishing steps sit in a heap.

Schedulers (one per pool):
- ``dynamic``: Triton-style dynamic batching for CNNs and encoders — a batch starts when
  ``max_batch`` requests wait or the oldest has waited ``max_delay``;
- ``static``: a batch of up to ``max_batch`` requests (same rule to start) is padded to its
  longest prompt and runs until its longest output is done; every request returns at the end;
- ``continuous``: iteration-level batching (Orca; vLLM's default scheduler): each iteration is
  either a prefill of newly admitted prompts (first, as vLLM does) or one decode step of every
  running sequence; KV in paged blocks from a per-replica budget, and when a step needs blocks
  that are not free the newest sequence is preempted (its blocks freed, recomputed later);
- ``chunked``: Sarathi-Serve — every iteration decodes all running sequences and fills the rest
  of a token budget with prompt chunks, so a long prompt never stalls the decodes;
- disaggregation: a pool with ``role = "prefill"`` hands each prefilled request (its KV over the
  link) to a pool with ``role = "decode"`` (e.g. prefill on the NPU, decode on PIM).
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections import deque
from itertools import islice

INF = math.inf
BLOCK = 16  # KV tokens per page (vLLM's default block size)


class Sim:
    """Event loop plus the per-request record."""

    def __init__(self, n: int, arrival, prompt, output, trace_limit: int = 0):
        self.now = 0.0
        self._q: list = []
        self._n = 0
        self.arrival = arrival  # list of floats
        self.prompt = prompt
        self.output = output
        self.first = [INF] * n  # first token (LLM) / result (others) time
        self.finish = [INF] * n
        self.placed = [-1] * n  # replica index that finished it
        self.model_of = [0] * n  # request -> entry pool (set by the fleet from the pools' shares)
        self.preempted = [0] * n
        self.trace: list[tuple] = []  # (replica, name, start, end, args)
        self.trace_limit = trace_limit
        self.trace_dropped = 0
        self.events = 0
        self.bins = None  # utilisation over time: busy seconds per (replica, time bin)
        self.bin_s = 1.0

    def track_busy(self, replicas: int, horizon_s: float, nbins: int = 200) -> None:
        self.bin_s = max(horizon_s, 1e-9) / nbins
        self.bins = [dict() for _ in range(replicas)]

    def add_busy(self, rep: int, start: float, end: float) -> None:
        w = self.bin_s
        b = int(start / w)
        row = self.bins[rep]
        while start < end:
            edge = (b + 1) * w
            seg = min(end, edge) - start
            row[b] = row.get(b, 0.0) + seg
            start = edge
            b += 1

    def at(self, t: float, fn, arg=None) -> None:
        self._n += 1
        heapq.heappush(self._q, (t, self._n, fn, arg))

    def run(self) -> None:
        q, pop = self._q, heapq.heappop
        n = 0
        while q:
            t, _, fn, arg = pop(q)
            self.now = t
            fn(arg)
            n += 1
        self.events += n

    def span(self, rep: "Replica", name: str, start: float, end: float, args: dict | None = None) -> None:
        if len(self.trace) < self.trace_limit:
            self.trace.append((rep.index, name, start, end, args))
        else:
            self.trace_dropped += 1


class Chip:
    """A physical chip shared by replicas of several pools: by partitions (each tenant has its
    cores; DRAM bandwidth is contended) or by time (one tenant at a time; a switch reloads the
    weights that do not stay resident)."""

    def __init__(self, name: str, sharing: str, switch_s: dict[str, float] | None = None):
        self.name = name
        self.sharing = sharing  # "partition" | "temporal"
        self.tenants: list[Replica] = []
        self.owner: Replica | None = None
        self.waiting: deque = deque()
        self.last_model: str | None = None
        self.switch_s = switch_s or {}
        self.switches = 0
        self.switch_time = 0.0
        self.contended_s = 0.0

    def others_busy(self, rep: "Replica") -> bool:
        return any(t.busy for t in self.tenants if t is not rep)

    def acquire(self, rep: "Replica") -> float | None:
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

    def release(self, rep: "Replica", sim: Sim) -> None:
        """rep is done with the chip: the longest-waiting tenant gets it (FCFS between tenants;
        rep cannot take it straight back while another waits)."""
        if self.owner is rep:
            self.owner = None
            if self.waiting:
                nxt = self.waiting.popleft()
                self.owner = nxt
                sim.at(sim.now, nxt.kick_cb)


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


# ---- CNNs and encoders ---------------------------------------------------------------------------

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


# ---- LLMs ----------------------------------------------------------------------------------------

class KVTable:
    """Fast decode and prefill lookups for a replica: latency/energy lists indexed by batch and
    by KV length in steps of `step` tokens (built once from an LLMProfile)."""

    def __init__(self, prof, max_batch: int, max_context: int, step: int = 8):
        import numpy as np

        self.prof = prof
        kmax = max(prof.kvs[-1], max_context)
        # a dense table of at most ~4M entries: coarser KV steps for long contexts and large batches
        step = max(step, -(-kmax * max_batch // 4_000_000))
        self.step = step
        ks = np.arange(0, kmax + step, step, dtype=float)
        ks_c = np.clip(ks, prof.kvs[0], prof.kvs[-1])
        self.dec_t, self.dec_e = [None], [None]
        for b in range(1, max_batch + 1):
            t, e = prof.batch_rows(b)
            self.dec_t.append(np.interp(ks_c, prof.kvs, t).tolist())
            self.dec_e.append(np.interp(ks_c, prof.kvs, e).tolist())
        self._pre: dict[int, tuple[float, float]] = {}
        self._chunk: dict[tuple[int, int], tuple[float, float]] = {}
        self.weight_s = prof.weight_time_s

    def decode(self, b: int, total_ctx: float) -> tuple[float, float]:
        i = int(total_ctx / b / self.step + 0.5)
        return self.dec_t[b][i], self.dec_e[b][i]

    def prefill(self, s: int) -> tuple[float, float]:
        hit = self._pre.get(s)
        if hit is None:
            hit = self._pre[s] = self.prof.prefill(s)
        return hit

    def chunk(self, c: int, past: int) -> tuple[float, float]:
        key = (c, past // self.step)
        hit = self._chunk.get(key)
        if hit is None:
            hit = self._chunk[key] = self.prof.chunk_cost(c, past)
        return hit


class LLMReplica(Replica):
    """Continuous batching (and, with chunk > 0, chunked prefill) over paged KV blocks."""

    kind = "continuous"

    def __init__(self, sim, pool, index, local, chip, table: KVTable, kv_blocks: int, contended: KVTable | None = None):
        super().__init__(sim, pool, index, local, chip)
        self.t = table
        self.tc = contended
        self.waiting: deque = deque()
        self.blocks_total = kv_blocks
        self.blocks_free = kv_blocks
        self.blocks_peak = 0
        self.max_batch = pool.max_batch
        self.max_tokens = pool.max_tokens  # prompt tokens one prefill iteration may take
        self.chunk = pool.chunk
        # running sequences: rid -> offset (context - joining step); insertion order = age
        self.run: dict[int, int] = {}
        self.resid = [0] * BLOCK
        self.A = 0
        self.step = 0
        self.ends: list = []  # (final step, rid)
        self.gen = {}  # rid -> tokens generated before a preemption (recomputed with the prompt)
        self.end_of: dict[int, int] = {}  # rid -> the step that produces its last token
        self.prefilling: deque = deque()  # chunked: [rid, tokens done, total]
        self.handoff = None  # disaggregation: hands a prefilled request to a decode replica
        self.pending_in: deque = deque()  # decode side: requests whose KV arrived, waiting for blocks

    def free_kv(self) -> float:
        return self.blocks_free - sum(ceil_blocks(self.sim.prompt[r] + 1) for r in islice(self.waiting, 8))

    def has_work(self) -> bool:
        return bool(self.run or self.waiting or self.prefilling or self.pending_in)

    def arrive(self, rid: int) -> None:
        self.outstanding += 1
        self.waiting.append(rid)
        if not self.busy:
            self._kick()

    def receive(self, rid: int) -> None:
        """Disaggregation: a prefilled request whose KV has arrived."""
        self.outstanding += 1
        self.pending_in.append(rid)
        if not self.busy:
            self._kick()

    # --- sequence bookkeeping
    def _join(self, rid: int, ctx: int, remaining: int) -> None:
        """rid decodes from the next step with `ctx` tokens cached and `remaining` tokens to go."""
        off = ctx - self.step
        self.run[rid] = off
        self.resid[off % BLOCK] += 1
        self.A += off
        end = self.step + remaining - 1
        self.end_of[rid] = end
        heapq.heappush(self.ends, (end, rid))

    def _leave(self, rid: int) -> int:
        """rid stops decoding; its blocks (for its context at the current step) are freed."""
        off = self.run.pop(rid)
        del self.end_of[rid]
        self.resid[off % BLOCK] -= 1
        self.A -= off
        ctx = off + self.step
        blocks = ceil_blocks(ctx)
        self.blocks_free += blocks
        return ctx

    def _preempt_newest(self) -> None:
        rid = next(reversed(self.run))
        first_tok = self.sim.first[rid]
        ctx = self._leave(rid)
        # tokens generated so far: the KV holds all but the newest; a recompute prefills prompt and
        # generated tokens together (vLLM's recompute preemption), which yields the next token
        self.gen[rid] = ctx - self.sim.prompt[rid] + 1
        self.sim.preempted[rid] += 1
        assert first_tok < INF
        self.waiting.appendleft(rid)

    def _never_fits(self, rid: int) -> bool:
        """A request whose whole context can never be held (more KV than the replica has) is
        refused when it reaches the head of the queue (vLLM refuses prompts over max_model_len)."""
        sim = self.sim
        if ceil_blocks(sim.prompt[rid] + sim.output[rid]) <= self.blocks_total:
            return False
        self.refuse(self.waiting.popleft())
        return True

    def _blocks_for_step(self) -> int:
        return self.resid[(-self.step) % BLOCK]

    # --- the scheduler
    def next_iteration(self):
        sim = self.sim
        if self.chunk:
            return self._chunked()
        # disaggregated decode side: admit arrived KV
        while self.pending_in and len(self.run) < self.max_batch:
            rid = self.pending_in[0]
            if ceil_blocks(sim.prompt[rid] + sim.output[rid]) > self.blocks_total:
                self.refuse(self.pending_in.popleft())  # can never fit this replica's KV
                continue
            need = ceil_blocks(sim.prompt[rid] + 1)
            if need > self.blocks_free:
                break
            self.pending_in.popleft()
            self.blocks_free -= ceil_blocks(sim.prompt[rid])
            self._take_peak()
            if sim.output[rid] <= 1:
                self.finish(rid, sim.now)
            else:
                self._join(rid, sim.prompt[rid], sim.output[rid] - 1)
        # prefill first (vLLM v0's default): admit what fits
        if self.waiting and len(self.run) < self.max_batch:
            batch, tokens = [], 0
            t_sum = e_sum = 0.0
            while self.waiting and len(self.run) + len(batch) < self.max_batch:
                rid = self.waiting[0]
                if self._never_fits(rid):
                    continue
                ctx = sim.prompt[rid] + self.gen.get(rid, 0)
                need = ceil_blocks(ctx + 1)
                if need > self.blocks_free or (batch and tokens + ctx > self.max_tokens):
                    break
                self.waiting.popleft()
                self.blocks_free -= ceil_blocks(ctx)
                tokens += ctx
                batch.append(rid)
                t, e = self.t.prefill(ctx)
                t_sum += t
                e_sum += e
            if batch:
                self._take_peak()
                return t_sum, e_sum, f"prefill {len(batch)} ({tokens} tok)", ("prefill", batch)
        if self.run:
            return self._decode_step()
        return None

    def _decode_step(self):
        resid, r = self.resid, (-self.step) % BLOCK
        need = resid[r]
        while need > self.blocks_free and len(self.run) > 1:
            self._preempt_newest()
            need = resid[r]
        self.blocks_free -= need
        used = self.blocks_total - self.blocks_free
        if used > self.blocks_peak:
            self.blocks_peak = used
        b = len(self.run)
        t, e = self.t.decode(b, self.A + b * self.step)
        return t, e, ("decode %d" % b) if self.sim.trace_limit else "decode", ("decode", b)

    def _take_peak(self) -> None:
        used = self.blocks_total - self.blocks_free
        if used > self.blocks_peak:
            self.blocks_peak = used

    def contended_duration(self, payload, dur):
        if self.chip.sharing == "package":
            return dur * (1.0 + self.share_factor)
        if self.tc is None:
            return dur
        kind = payload[0]
        if kind == "decode":
            b = payload[1]
            return self.tc.decode(b, self.A + b * self.step)[0]
        return dur * (self.tc.weight_s / self.t.weight_s if self.t.weight_s else 1.0)

    def complete(self, payload) -> None:
        sim = self.sim
        now = sim.now
        kind = payload[0]
        if kind == "decode" or kind == "mixed":
            # the step wrote every running sequence's newest token; those that produced their last leave
            self.step += 1
            ends, last = self.ends, self.step - 1
            end_of = self.end_of
            while ends and ends[0][0] <= last:
                e, rid = heapq.heappop(ends)
                if end_of.get(rid) == e:  # not an entry left by a preempted sequence
                    self._leave(rid)
                    self.finish(rid, now)
        if kind == "prefill" or kind == "mixed":
            for rid in (payload[1] if kind == "prefill" else payload[2]):
                regen = self.gen.pop(rid, None)
                if regen is None:
                    sim.first[rid] = now
                    ctx, remaining = sim.prompt[rid], sim.output[rid] - 1
                else:
                    ctx, remaining = sim.prompt[rid] + regen, sim.output[rid] - regen - 1
                if self.handoff is not None:
                    self.blocks_free += ceil_blocks(ctx)
                    self.outstanding -= 1
                    self.handoff(rid)
                    continue
                if remaining <= 0:
                    self.blocks_free += ceil_blocks(ctx)
                    self.finish(rid, now)
                else:
                    self._join(rid, ctx, remaining)

    # --- chunked prefill (Sarathi-Serve)
    def _chunked(self):
        sim = self.sim
        budget = self.chunk
        b = len(self.run)
        if b:
            need = self._blocks_for_step()
            while need > self.blocks_free and len(self.run) > 1:
                self._preempt_newest()
                need = self._blocks_for_step()
            self.blocks_free -= need
            b = len(self.run)
        budget -= b
        # admit new prompts into the prefill queue while blocks allow
        while self.waiting and len(self.run) + len(self.prefilling) < self.max_batch:
            rid = self.waiting[0]
            if self._never_fits(rid):
                continue
            ctx = sim.prompt[rid] + self.gen.get(rid, 0)
            if ceil_blocks(ctx + 1) > self.blocks_free:
                break
            self.waiting.popleft()
            self.blocks_free -= ceil_blocks(ctx)
            self.prefilling.append([rid, 0, ctx])
        self._take_peak()
        t = e = 0.0
        done: list[int] = []
        chunks = []
        for entry in self.prefilling:
            if budget <= 0:
                break
            rid, did, total = entry
            c = min(budget, total - did)
            ct, ce = self.t.chunk(c, did)
            t += ct
            e += ce
            entry[1] += c
            budget -= c
            chunks.append(c)
            if entry[1] >= total:
                done.append(rid)
        while self.prefilling and self.prefilling[0][1] >= self.prefilling[0][2]:
            self.prefilling.popleft()
        if b:
            dt, de = self.t.decode(b, self.A + b * self.step)
            if t:
                t = t + dt - min(t, dt, self.t.weight_s)
            else:
                t = dt
            e += de
        if not b and not chunks:
            return None
        name = f"decode {b} + chunk {sum(chunks)}" if chunks else f"decode {b}"
        return t, e, name, ("mixed" if b else "prefill", b, done) if b else ("prefill", done)


def ceil_blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


class StaticReplica(QueueBatcher):
    """Static batching: a batch starts by the dynamic batcher's rule, its prompts are padded to
    the longest, and it decodes until its longest output is done; every answer returns at the end."""

    kind = "static"

    def __init__(self, sim, pool, index, local, chip, table: KVTable, kv_blocks: int):
        super().__init__(sim, pool, index, local, chip)
        self.t = table
        self.blocks_total = kv_blocks
        self.blocks_peak = 0

    def next_iteration(self):
        sim, q = self.sim, self.queue
        if not self.batch_due():
            return None
        batch: list[int] = []
        s_max = o_max = 0
        while q and len(batch) < self.max_batch:
            rid = q[0]
            s2, o2 = max(s_max, sim.prompt[rid]), max(o_max, sim.output[rid])
            if not batch and ceil_blocks(s2 + o2) > self.blocks_total:
                self.refuse(q.popleft())
                continue
            if (len(batch) + 1) * ceil_blocks(s2 + o2) > self.blocks_total:
                break
            batch.append(q.popleft())
            s_max, o_max = s2, o2
        if not batch:
            return None
        b = len(batch)
        self.blocks_peak = max(self.blocks_peak, b * ceil_blocks(s_max + o_max))
        pt, pe = self.t.prefill(s_max)
        t_pre, e_pre = b * pt, b * pe
        t_dec = e_dec = 0.0
        for k in range(1, o_max):
            dt, de = self.t.decode(b, b * (s_max + k))
            t_dec += dt
            e_dec += de
        return t_pre + t_dec, e_pre + e_dec, f"static batch {b} ({s_max}+{o_max} tok)", (batch, sim.now + t_pre)

    def complete(self, payload) -> None:
        batch, first_token = payload
        now = self.sim.now
        for rid in batch:
            self.sim.first[rid] = first_token
            self.finish(rid, now)

    def free_kv(self) -> float:
        return self.blocks_total


# ---- routers -------------------------------------------------------------------------------------

class Router:
    """Spreads a pool's requests over its replicas: round-robin, least-loaded (fewest outstanding
    requests), or kv-aware (most free KV blocks after what is already queued)."""

    def __init__(self, policy: str, replicas: list[Replica]):
        self.policy = policy
        self.replicas = replicas
        self.i = 0

    def pick(self) -> Replica:
        reps = self.replicas
        if self.policy == "round-robin" or len(reps) == 1:
            r = reps[self.i % len(reps)]
            self.i += 1
            return r
        if self.policy == "least-loaded":
            best, bl = reps[0], reps[0].outstanding
            for r in reps:
                if r.outstanding < bl:
                    best, bl = r, r.outstanding
            return best
        best, bv = reps[0], -INF
        for r in reps:
            v = r.free_kv() - r.outstanding * 0.001
            if v > bv:
                best, bv = r, v
        return best


def route_all(sim: Sim, pools: list, n: int) -> None:
    """Arrivals: one event at a time (the heap holds one pending arrival, not a million); request
    i goes to the router of pool ``sim.model_of[i]``."""
    arrival = sim.arrival
    routers = [p.router for p in pools]
    assign = sim.model_of

    def arrive(i):
        routers[assign[i]].pick().arrive(i)
        if i + 1 < n:
            sim.at(arrival[i + 1], arrive, i + 1)

    if n:
        sim.at(arrival[0], arrive, 0)


__all__ = ["Sim", "Chip", "Replica", "DynamicBatcher", "LLMReplica", "StaticReplica", "KVTable", "Router",
           "route_all", "BLOCK", "ceil_blocks"]
