"""Device-resident model state: the KV cache of a decoder (past_* inputs -> present_* outputs).

In serving, a decoder's KV cache lives on the device between steps: a decode step reads the
past cache where it already is and appends the new token's keys and values in place. So a
*state input* costs no host transfer in (it is resident on the device that consumes it), and
a *state output* does not travel back to the host: it stays where it was produced (only if
it was produced on another device than the one that will read it next step does it move there).
Values still flow normally in functional mode; only placement's transfer costs and the
executor's timing follow this.

The pairs are found, in this order, from: the ``state=`` argument of ``compile`` (a mapping
input -> output, a list of resident output names, True to detect, False for none); the model's
``metadata_props["kcompiler.state"]`` (JSON ``{output: input or ""}``, written by the zoo); names
(``past_key_values.N.key`` -> ``present.N.key``, ``past_N`` -> ``present_N``, ...).
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Mapping

import onnx_ir as ir

from kcompiler.errors import InputError

STATE_KEY = "kcompiler.state"
#: placeholder device meaning "already where its consumer runs"
RESIDENT = "<resident>"
#: on one chip's slice of a state input and of its paired output (kcompiler.parallel, tensor
#: split): each chip keeps its own slice of the cache between steps, so the pair, tagged with
#: STATE_KEY like the model's own, is resident too (the Scatter in and the AllGather out are free)
SHARD_KEY = "kcompiler.state_shard"

_RULES = [(re.compile(r"^past_key_values"), "present"), (re.compile(r"^past_key_value"), "present_key_value"),
          (re.compile(r"^past"), "present"), (re.compile(r"past"), "present")]


def detect(model: ir.Model) -> dict[str, str]:
    """{output: input or ""} by name: past* inputs with a same-typed present* output, and present*
    outputs with no past input (the cache a prefill step writes)."""
    outputs = {v.name: v for v in model.graph.outputs}
    found: dict[str, str] = {}
    for v in model.graph.inputs:
        for pat, repl in _RULES:
            if not pat.search(v.name):
                continue
            out = pat.sub(repl, v.name, count=1)
            if out in outputs and out not in found and outputs[out].dtype == v.dtype:
                found[out] = v.name
                break
    for name in outputs:
        if name.startswith("present") and name not in found:
            found[name] = ""
    return found


def mark(model: ir.Model, state: "bool | Mapping[str, str] | Iterable[str] | None" = None) -> dict[str, str]:
    """Decide the model's state pairs and record them in its metadata (for placement, executor,
    artifacts). Returns {output: input or ""}."""
    inputs = {v.name for v in model.graph.inputs}
    outputs = {v.name for v in model.graph.outputs}
    if state is False:
        pairs: dict[str, str] = {}
    elif state is None or state is True:
        raw = model.metadata_props.get(STATE_KEY)
        if raw:
            try:
                pairs = {str(k): str(v or "") for k, v in json.loads(raw).items()}
            except (ValueError, AttributeError):
                raise InputError(f"model metadata '{STATE_KEY}' is not a JSON object {{output: input}}") from None
            pairs = {o: i for o, i in pairs.items() if o in outputs and (not i or i in inputs)}
        else:
            pairs = detect(model)
    elif isinstance(state, Mapping):
        pairs = {}
        for i, o in state.items():
            if i and i not in inputs:
                raise InputError(f"state input '{i}' is not a model input", hint=f"inputs: {sorted(inputs)}")
            if o not in outputs:
                raise InputError(f"state output '{o}' is not a model output", hint=f"outputs: {sorted(outputs)}")
            pairs[o] = i or ""
    else:
        pairs = {}
        for o in state:
            if o not in outputs:
                raise InputError(f"state output '{o}' is not a model output", hint=f"outputs: {sorted(outputs)}")
            pairs[o] = ""
    # tag the values too, so a backend judging one node (e.g. the PIM's in-place KV append) can see them
    by_name = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
    for v in by_name.values():
        v.metadata_props.pop(STATE_KEY, None)
    for o, i in pairs.items():
        by_name[o].metadata_props[STATE_KEY] = i or ""
        if i:
            by_name[i].metadata_props[STATE_KEY] = o
    if pairs:
        model.metadata_props[STATE_KEY] = json.dumps(pairs, sort_keys=True)
    else:
        model.metadata_props.pop(STATE_KEY, None)
    return pairs


def pairs(model: ir.Model) -> tuple[dict[str, str], dict[str, str]]:
    """(state input -> output, state output -> input or "") as recorded by ``mark``."""
    raw = model.metadata_props.get(STATE_KEY)
    if not raw:
        return {}, {}
    try:
        out2in = {str(k): str(v or "") for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError):
        return {}, {}
    return {i: o for o, i in out2in.items() if i}, out2in


def is_resident_pair(past: ir.Value, present: ir.Value) -> bool:
    """Whether `present` is `past` kept on the device for the next step (so a Concat from one to
    the other is an append in place): the model's own state pair (a graph input and output,
    ``mark``) or one chip's slices of it (``SHARD_KEY``, tagged by the tensor-parallel rewriter)."""
    if past.metadata_props.get(STATE_KEY) != present.name or present.metadata_props.get(STATE_KEY) != past.name:
        return False
    if past.is_graph_input() and present.is_graph_output():
        return True
    return SHARD_KEY in past.metadata_props and SHARD_KEY in present.metadata_props
