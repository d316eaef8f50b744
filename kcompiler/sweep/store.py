"""The results store: a DuckDB database with one row per point.

Table ``results``: the point's id (a hash of its model, target, mode and parameters), the spec's
hash, the kcompiler version, the model and target, one column per parameter (named as in the
spec), every report figure (``kcompiler.sweep.point.FIGURES``), the status ("ok", "failed":
a KCError such as an impossible configuration, "error": a kcompiler bug, "lost": the worker
died), the error message, the worker and when the row was written. Table ``sweeps`` keeps each
spec's text by hash, so ``kc sweep --resume --out FILE`` needs no spec file.

Every row is committed as it arrives: killing a sweep loses only the points in flight, and a
re-run skips every point already in the store (``done``). Read it with DuckDB, pandas or
Parquet tools: ``duckdb FILE -c "COPY results TO 'r.parquet'"``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable

from kcompiler import __version__
from kcompiler.errors import KCError
from kcompiler.sweep.point import FIGURES
from kcompiler.sweep.spec import Point, Spec

_FIXED = [("point_id", "VARCHAR PRIMARY KEY"), ("spec_hash", "VARCHAR"), ("kcompiler", "VARCHAR"),
          ("model", "VARCHAR"), ("target", "VARCHAR"), ("mode", "VARCHAR")]
_FIG_TYPES = {"dram_bytes": "BIGINT", "macs": "BIGINT", "cycles": "BIGINT", "host_nodes": "INTEGER",
              "devices": "INTEGER"}
_TAIL = [("status", "VARCHAR"), ("error", "VARCHAR"), ("worker", "VARCHAR"), ("point_s", "DOUBLE"),
         ("written_at", "TIMESTAMP")]


def _duckdb():
    try:
        import duckdb
    except ImportError:  # pragma: no cover - the sweep extra installs it
        raise KCError("kc sweep needs DuckDB for its results store", hint='pip install -e ".[sweep]"') from None
    return duckdb


def _sql_type(values: Iterable[Any]) -> str:
    vals = list(values)
    if all(isinstance(v, bool) for v in vals):
        return "BOOLEAN"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "BIGINT"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "DOUBLE"
    return "VARCHAR"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix not in (".duckdb", ".db"):
            raise KCError(f"--out {path}: the results store is a DuckDB database (.duckdb)",
                          hint="e.g. --out results.duckdb; export to Parquet with DuckDB's COPY")
        if self.path.exists() and self.path.is_dir():
            raise KCError(f"--out {path} is a folder, not a results file")
        duckdb = _duckdb()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(self.path))
        except (duckdb.Error, OSError) as exc:
            raise KCError(f"--out {path}: cannot open the results store: {exc}",
                          hint="is another sweep writing it? give another --out") from None
        self.con.execute("CREATE TABLE IF NOT EXISTS sweeps (spec_hash VARCHAR PRIMARY KEY, name VARCHAR, "
                         "source VARCHAR, text VARCHAR, created_at TIMESTAMP)")
        self.con.execute("CREATE TABLE IF NOT EXISTS results (" + ", ".join(
            f"{_q(n)} {t}" for n, t in _FIXED + [(f, _FIG_TYPES.get(f, "DOUBLE")) for f in FIGURES] + _TAIL) + ")")
        self._columns = self._existing_columns()
        self._types: dict[str, str] = {}

    def _existing_columns(self) -> set[str]:
        return {r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'").fetchall()}

    def begin(self, spec: Spec) -> None:
        """Record the spec and add a column for each of its parameters (typed by its values)."""
        self.con.execute("INSERT OR IGNORE INTO sweeps VALUES (?, ?, ?, ?, ?)",
                         [spec.hash, spec.name, spec.source, spec.text, _dt.datetime.now()])
        for key in spec.keys:
            t = "VARCHAR" if key == "place" else _sql_type(spec.values_of(key))
            self._types[key] = t
            if key not in self._columns:
                self.con.execute(f"ALTER TABLE results ADD COLUMN {_q(key)} {t}")
                self._columns.add(key)

    def spec_text(self, spec_hash: str | None = None) -> tuple[str, str]:
        """(text, source) of the newest spec recorded, or of the one with this hash."""
        q = "SELECT text, source FROM sweeps " + ("WHERE spec_hash = ? " if spec_hash else "") + \
            "ORDER BY created_at DESC LIMIT 1"
        row = self.con.execute(q, [spec_hash] if spec_hash else []).fetchone()
        if row is None:
            raise KCError(f"{self.path}: no sweep recorded in this store", hint="give the spec file: kc sweep SPEC.toml")
        return row[0], row[1]

    def done(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT point_id FROM results").fetchall()}

    def add(self, point: Point, spec: Spec, row: dict[str, Any]) -> None:
        cols: dict[str, Any] = {"point_id": point.id, "spec_hash": spec.hash, "kcompiler": __version__,
                                "model": point.model.label, "target": point.target, "mode": point.mode}
        for k, v in point.params:
            cols[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
        for f in FIGURES:
            cols[f] = row.get(f)
        for f, _ in _TAIL[:-1]:
            cols[f] = row.get(f)
        cols["written_at"] = _dt.datetime.now()
        names = list(cols)
        self.con.execute(f"INSERT OR REPLACE INTO results ({', '.join(_q(n) for n in names)}) VALUES "
                         f"({', '.join('?' for _ in names)})", [cols[n] for n in names])

    def rows(self, spec: Spec | None = None) -> list[dict[str, Any]]:
        """Every row (of one spec's parameters when given), as dicts."""
        cur = self.con.execute("SELECT * FROM results ORDER BY written_at, point_id")
        names = [d[0] for d in cur.description]
        out = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in out:
            if r.get("written_at") is not None:
                r["written_at"] = r["written_at"].isoformat()
        return out

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:  # pragma: no cover
            pass
