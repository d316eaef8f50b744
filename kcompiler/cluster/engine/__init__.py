"""The fleet's discrete-event engine, its replicas (schedulers) and routers.

One heap of timed events drives everything; per-request state lives in flat lists indexed by
request id, so a million requests cost tens of MB, and an LLM decode step costs O(1) whatever its
batch: a replica never walks its running sequences (see llm.py).

Modules: ``events`` (the loop and the request record), ``sharing`` (chips shared by pools),
``replica`` (the scheduler machinery, the dynamic batcher), ``llm`` (continuous, chunked and
static batching over paged KV), ``routing`` (routers and arrivals).

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

from kcompiler.cluster.engine.events import Sim
from kcompiler.cluster.engine.llm import BLOCK, KVTable, LLMReplica, StaticReplica, ceil_blocks
from kcompiler.cluster.engine.replica import DynamicBatcher, Replica
from kcompiler.cluster.engine.routing import Router, route_all
from kcompiler.cluster.engine.sharing import Chip

__all__ = ["Sim", "Chip", "Replica", "DynamicBatcher", "LLMReplica", "StaticReplica", "KVTable", "Router",
           "route_all", "BLOCK", "ceil_blocks"]
