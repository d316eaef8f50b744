"""Run a sweep: points go to a pool of workers (Ray actors, or this process), rows to the store.

Ray: ``ray.init()`` starts a local cluster unless an address is given (``ray start --head``
prints one); one actor per CPU, each with its own model cache, takes one point at a time, so
at most one point per worker is in flight. A worker that dies loses only its point (recorded
as "lost"; ``retry_failed`` evaluates it again). Serial: the same ``evaluate`` in this process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kcompiler.errors import KCError
from kcompiler.sweep import pareto
from kcompiler.sweep.point import ModelCache, evaluate
from kcompiler.sweep.spec import OBJECTIVES, Point, Spec, parse
from kcompiler.sweep.store import Store


@dataclass
class SweepResult:
    spec: Spec
    out: Path
    rows: list[dict[str, Any]]  # every point of the sweep (evaluated now or found in the store)
    evaluated: int = 0  # points computed by this run
    skipped: int = 0  # points found in the store
    failed: int = 0  # rows whose status is not ok (this run's and stored ones)
    wall_s: float = 0.0  # this run's wall time, from the first point submitted to the last row stored
    workers: int = 1
    backend: str = "serial"
    busy_s: float = 0.0  # sum of this run's points' own times (point_s)

    @property
    def front(self) -> dict[str, list[dict[str, Any]]]:
        """The Pareto-optimal rows of each model (objectives of the spec)."""
        return pareto.fronts(self.rows, self.spec.objectives)

    @property
    def overhead(self) -> float:
        """Per-point overhead of this run as a share of a point's own time: (workers x wall - busy) /
        busy. 0 for a run that evaluated nothing."""
        if not self.evaluated or self.busy_s <= 0:
            return 0.0
        return max(0.0, (self.workers * self.wall_s - self.busy_s) / self.busy_s)


# ---- pools ---------------------------------------------------------------------------------------

class SerialPool:
    backend = "serial"

    def __init__(self):
        self.slots = 1
        self._queue: list[Point] = []
        self._cache = ModelCache()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, point: Point) -> None:
        self._queue.append(point)

    def wait(self) -> tuple[Point, dict]:
        p = self._queue.pop(0)
        return p, evaluate(p, self._cache)

    def close(self) -> None:
        pass


class RayPool:
    backend = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise KCError("kc sweep runs on Ray, which is not installed",
                          hint='pip install -e ".[sweep]" (or run with --serial)') from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                      configure_logging=True)
            env = {"KC_THREADS": "1", "KC_NPU_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "KC_QUIET": "1"}
            if os.environ.get("PYTHONPATH"):  # workers import the same kcompiler as this process
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            if address:
                _check_reachable(address)
                kw["address"] = address
            else:
                kw["num_cpus"] = workers or os.cpu_count() or 1
            kw["runtime_env"] = {"env_vars": env}
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise KCError(f"cannot {'connect to the Ray cluster at ' + address if address else 'start Ray'}: "
                              f"{exc}", hint="check `ray status`; or run with --serial") from None
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, min(workers or cpus, cpus))

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self):
                self.cache = ModelCache()

            def run(self, point):
                row = evaluate(point, self.cache)
                row["worker"] = f"ray-node-{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
                return row

        self._cls = Worker
        self._actors = [Worker.remote() for _ in range(self.slots)]
        self._idle = list(self._actors)
        self._inflight: dict[Any, tuple[Point, Any]] = {}

    @property
    def pending(self) -> int:
        return len(self._inflight)

    def submit(self, point: Point) -> None:
        actor = self._idle.pop()
        self._inflight[actor.run.remote(point)] = (point, actor)

    def wait(self) -> tuple[Point, dict]:
        ray = self.ray
        ready, _ = ray.wait(list(self._inflight), num_returns=1)
        ref = ready[0]
        point, actor = self._inflight.pop(ref)
        try:
            row = ray.get(ref)
            self._idle.append(actor)
        except ray.exceptions.RayError as exc:  # the worker died (killed, out of memory): a new one
            row = {"status": "lost", "error": f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                   "point_s": 0.0}
            try:
                ray.kill(actor)
            except Exception:
                pass
            self._idle.append(self._cls.remote())
        return point, row

    def close(self) -> None:
        for a in self._actors + self._idle:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        if self._started:
            self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """A KCError now, rather than Ray retrying for minutes, when nothing listens at host:port."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise KCError(f"--address {address}: expected host:port (as `ray start --head` prints it) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise KCError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})",
                      hint="start one with `ray start --head`, or drop --address for a local one") from None


# ---- the driver ----------------------------------------------------------------------------------

def run(spec: Spec, out: str | Path, *, address: str | None = None, serial: bool = False,
        workers: int | None = None, on_start: Callable[[int, int], None] | None = None,
        on_result: Callable[[Point, dict], None] | None = None, retry_failed: bool = False) -> SweepResult:
    """Evaluate every point of `spec` not yet in the store at `out`; return all of them.

    on_start(total, already_done) is called once the points are known; on_result(point, row) after
    each row is stored. retry_failed: evaluate again points stored as failed or lost."""
    store = Store(out)
    try:
        store.begin(spec)
        done_ids = store.done()
        if retry_failed:
            failed = {r["point_id"] for r in store.rows() if r["status"] != "ok"}
            done_ids -= failed
        pool = SerialPool() if serial else RayPool(address, workers)
        try:
            if spec.search in ("grid", "random"):
                result = _run_points(spec, store, pool, done_ids, on_start, on_result)
            else:
                result = _run_optuna(spec, store, pool, done_ids, on_start, on_result)
        finally:
            pool.close()
        result.out = Path(out)
        return result
    finally:
        store.close()


def _finish(spec, store, ids, pool, evaluated, skipped, wall, busy) -> SweepResult:
    by_id = {r["point_id"]: r for r in store.rows()}
    rows = [by_id[i] for i in ids if i in by_id]
    failed = sum(1 for r in rows if r["status"] != "ok")
    return SweepResult(spec=spec, out=Path(), rows=rows, evaluated=evaluated, skipped=skipped, failed=failed,
                       wall_s=wall, workers=pool.slots, backend=pool.backend, busy_s=busy)


def _run_points(spec, store, pool, done_ids, on_start, on_result) -> SweepResult:
    points = spec.points()
    ids = list(dict.fromkeys(p.id for p in points))
    todo = [p for p in points if p.id not in done_ids]
    if on_start:
        on_start(len(ids), len(ids) - len(todo))
    it = iter(todo)
    evaluated, wall, busy = _drive(spec, store, pool, lambda: next(it, None), on_result)
    return _finish(spec, store, ids, pool, evaluated, len(ids) - len(todo), wall, busy)


def _drive(spec, store, pool, next_point, on_result, then=None) -> tuple[int, float, float]:
    """Keep every worker busy with next_point() (None: nothing to ask now), store each row as it
    arrives, call then(point, row) and on_result(point, row). (points evaluated, wall s, busy s)"""
    evaluated, busy = 0, 0.0
    t0 = time.perf_counter()
    while True:
        while pool.pending < pool.slots:
            p = next_point()
            if p is None:
                break
            pool.submit(p)
        if not pool.pending:
            break
        p, row = pool.wait()
        store.add(p, spec, row)
        if then:
            then(p, row)
        evaluated += 1
        busy += row.get("point_s") or 0.0
        if on_result:
            on_result(p, row)
    return evaluated, time.perf_counter() - t0, busy


def _run_optuna(spec, store, pool, done_ids, on_start, on_result) -> SweepResult:
    """NSGA-II or TPE over the parameters (each a list of values: ordered ones as an integer index,
    the others categorical), one study per model with `samples` points each; points already in the
    store are told to the study without evaluating them again."""
    try:
        import optuna
    except ImportError:
        raise KCError(f"sweep.search = '{spec.search}' needs Optuna", hint='pip install -e ".[sweep]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    def dists_of(params):
        d = {}
        for key, values in params:
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                d[key] = optuna.distributions.IntDistribution(0, len(values) - 1)
            else:
                d[key] = optuna.distributions.CategoricalDistribution(list(range(len(values))))
        if len(spec.targets) > 1:
            d["target"] = optuna.distributions.CategoricalDistribution(list(range(len(spec.targets))))
        return d

    directions = ["minimize" if OBJECTIVES[o][1] == "min" else "maximize" for o in spec.objectives]
    stored = {r["point_id"]: r for r in store.rows()}

    def point_of(i, params: dict) -> Point:
        target = spec.targets[params.get("target", 0)]
        return Point(spec.models[i], target, tuple((k, v[params[k]]) for k, v in spec.parameters_of(i)), spec.mode)

    def values_of(row):
        if row["status"] != "ok":
            return None
        return [row[OBJECTIVES[o][0]] for o in spec.objectives]

    studies = []
    for i, model in enumerate(spec.models):
        sampler = (optuna.samplers.NSGAIISampler(seed=spec.seed + i) if spec.search == "nsga2"
                   else optuna.samplers.TPESampler(seed=spec.seed + i, multivariate=True))
        studies.append((i, optuna.create_study(directions=directions, sampler=sampler)))
    total = spec.samples * len(spec.models)
    if on_start:
        on_start(total, 0)
    ids: list[str] = []
    skipped = 0
    asked = {id(s): 0 for _, s in studies}
    inflight: dict[str, tuple[Any, Any]] = {}  # point id -> (study, trial)

    def next_point():
        nonlocal skipped
        for i, study in studies:
            while asked[id(study)] < spec.samples:
                asked[id(study)] += 1
                trial = study.ask(dists_of(spec.parameters_of(i)))
                p = point_of(i, trial.params)
                ids.append(p.id)
                if p.id in done_ids or p.id in inflight:
                    row = stored.get(p.id)
                    if row is None:  # the same point is being evaluated now: a duplicate ask
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        v = values_of(row)
                        study.tell(trial, v, state=None if v else optuna.trial.TrialState.FAIL)
                    skipped += 1
                    continue
                inflight[p.id] = (study, trial)
                return p
        return None

    def told(p, row):
        stored[p.id] = {**row, "point_id": p.id}
        done_ids.add(p.id)
        study, trial = inflight.pop(p.id)
        v = values_of(row)
        study.tell(trial, v, state=None if v else optuna.trial.TrialState.FAIL)

    evaluated, wall, busy = _drive(spec, store, pool, next_point, on_result, then=told)
    return _finish(spec, store, list(dict.fromkeys(ids)), pool, evaluated, skipped, wall, busy)


def load_spec_from_store(out: str | Path) -> Spec:
    """The newest spec recorded in a results store (for `kc sweep --resume --out FILE`)."""
    if not Path(out).exists():
        raise KCError(f"--resume: no results store at {out}", hint="give the spec file to start the sweep")
    store = Store(out)
    try:
        text, source = store.spec_text()
    finally:
        store.close()
    return parse(text, source)
