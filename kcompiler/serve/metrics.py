"""Prometheus metrics of the inference endpoint (GET /metrics), in the text exposition format."""

from __future__ import annotations

import bisect

from kcompiler.serve.model import RunResult

WALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIM_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
               0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the model label of requests for a model that does not exist (client-chosen names would be unbounded)
UNKNOWN_MODEL = "_unknown"


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1  # bucket i holds value <= buckets[i]
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class Metrics:
    """Prometheus metrics of the inference endpoint, written in the text exposition format.

    Updated and rendered on the event loop only, so they need no lock."""

    def __init__(self, models):
        self.requests: dict[tuple[str, int], int] = {}
        self.wall = {m: Histogram(WALL_BUCKETS) for m in models}
        self.simulated = {m: Histogram(SIM_BUCKETS) for m in models}
        self.energy = {m: 0.0 for m in models}
        self.in_flight = {m: 0 for m in models}

    def count(self, model: str, status: int) -> None:
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def observe_success(self, model: str, wall_s: float, result: RunResult) -> None:
        self.wall[model].observe(wall_s)
        self.simulated[model].observe(result.latency_s)
        self.energy[model] += result.energy_j

    def render(self) -> str:
        lines = ["# HELP kc_infer_requests_total Inference requests by model and HTTP status code.",
                 "# TYPE kc_infer_requests_total counter"]
        for (model, status), n in sorted(self.requests.items()):
            lines.append(f'kc_infer_requests_total{{model="{_label(model)}",code="{status}"}} {n}')
        lines += ["# HELP kc_infer_in_flight Parsed inference requests waiting for their model or running.",
                  "# TYPE kc_infer_in_flight gauge"]
        lines += [f'kc_infer_in_flight{{model="{_label(m)}"}} {n}' for m, n in self.in_flight.items()]
        lines += ["# HELP kc_infer_wall_seconds Wall time of successful inference requests (read to response).",
                  "# TYPE kc_infer_wall_seconds histogram"]
        for m, h in self.wall.items():
            lines += h.lines("kc_infer_wall_seconds", f'model="{_label(m)}"')
        lines += ["# HELP kc_infer_simulated_latency_seconds Simulated device latency of each inference.",
                  "# TYPE kc_infer_simulated_latency_seconds histogram"]
        for m, h in self.simulated.items():
            lines += h.lines("kc_infer_simulated_latency_seconds", f'model="{_label(m)}"')
        lines += ["# HELP kc_infer_simulated_energy_joules_total Simulated device energy of all inferences.",
                  "# TYPE kc_infer_simulated_energy_joules_total counter"]
        lines += [f'kc_infer_simulated_energy_joules_total{{model="{_label(m)}"}} {e!r}'
                  for m, e in self.energy.items()]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
