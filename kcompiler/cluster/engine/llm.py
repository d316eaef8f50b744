"""LLM replicas: continuous batching and chunked prefill over paged KV blocks, and static
batching; the dense latency lookups they use.

A sequence's context grows by one token per step, so the batch's total context is ``A + b * step``
(A kept as sequences join and leave), the sequences that need a new KV block at a step are those
whose ``(context - joining step) mod block`` is that step's residue (16 counters), and finishing
steps sit in a heap: a decode step costs O(1) whatever its batch.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import islice

import numpy as np

from kcompiler.cluster.engine.events import INF
from kcompiler.cluster.engine.replica import QueueBatcher, Replica

BLOCK = 16  # KV tokens per page (vLLM's default block size)


class KVTable:
    """Fast decode and prefill lookups for a replica: latency/energy lists indexed by batch and
    by KV length in steps of `step` tokens (built once from an LLMProfile)."""

    def __init__(self, prof, max_batch: int, max_context: int, step: int = 8):
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
