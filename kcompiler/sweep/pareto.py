"""Pareto fronts of sweep rows, and their plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kcompiler.errors import KCError
from kcompiler.sweep.spec import OBJECTIVES


def _key(row: dict, objectives: Sequence[str]) -> tuple[float, ...]:
    """The row's objectives, all to be minimised."""
    out = []
    for o in objectives:
        fig, direction = OBJECTIVES[o]
        v = float(row[fig])
        out.append(v if direction == "min" else -v)
    return tuple(out)


def front(rows: Sequence[dict], objectives: Sequence[str]) -> list[dict]:
    """The rows no other row dominates (at least as good in every objective, better in one).
    Rows with equal objectives are all kept. Failed rows are never on the front."""
    ok = [r for r in rows if r.get("status") == "ok" and all(r.get(OBJECTIVES[o][0]) is not None for o in objectives)]
    keyed = sorted(((_key(r, objectives), r) for r in ok), key=lambda kr: kr[0])
    out: list[tuple[tuple[float, ...], dict]] = []
    for k, r in keyed:  # sorted: a row can only be dominated by one before it
        if not any(all(a <= b for a, b in zip(fk, k)) and fk != k for fk, _ in out):
            out.append((k, r))
    return [r for _, r in out]


def fronts(rows: Sequence[dict], objectives: Sequence[str]) -> dict[str, list[dict]]:
    """One front per model (figures of different models are not comparable)."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    return {m: front(rs, objectives) for m, rs in by_model.items()}


def plot(rows: Sequence[dict], objectives: Sequence[str], path: str | Path, params: Sequence[str] = ()) -> None:
    """Latency vs energy, coloured by area, per model; the Pareto front (over the spec's objectives)
    drawn as larger outlined markers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KCError("--plot needs matplotlib", hint='pip install -e ".[plot]"') from None
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            by_model.setdefault(r["model"], []).append(r)
    if not by_model:
        raise KCError("--plot: no point of the sweep succeeded, nothing to plot")
    fig, axes = plt.subplots(1, len(by_model), figsize=(6.5 * len(by_model), 5), squeeze=False)
    for ax, (model, rs) in zip(axes[0], sorted(by_model.items())):
        lat = [r["latency_s"] * 1e3 for r in rs]
        en = [r["energy_j"] * 1e3 for r in rs]
        area = [r["area_mm2"] or 0.0 for r in rs]
        sc = ax.scatter(lat, en, c=area, cmap="viridis", s=14, alpha=0.7)
        fr = front(rs, objectives)
        ax.scatter([r["latency_s"] * 1e3 for r in fr], [r["energy_j"] * 1e3 for r in fr],
                   c=[r["area_mm2"] or 0.0 for r in fr], cmap="viridis", s=70, edgecolors="red", linewidths=1.2,
                   label=f"Pareto front ({', '.join(objectives)}): {len(fr)} of {len(rs)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("energy per inference (mJ)")
        ax.set_title(model)
        ax.legend(loc="upper right", fontsize=8)
        fig.colorbar(sc, ax=ax, label="die area (mm²)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise KCError(f"--plot {path}: cannot write it: {exc}") from None
    finally:
        plt.close(fig)


def describe(row: dict[str, Any], params: Sequence[str]) -> str:
    """A point's parameters as `key=value` text."""
    return " ".join(f"{k}={fmt_value(row.get(k))}" for k in params) or "(base)"


def fmt_value(v) -> str:
    """A value as the tables and labels write it: 4Mi, 1.2G, 0.5."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 << 20 and v % (1 << 20) == 0:
        return f"{v >> 20}Mi"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) >= 1e6:
        for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
            if abs(v) >= scale:
                return f"{v / scale:.4g}{unit}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column names for parameter keys: the last part of each dotted key, more where two collide."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(1 for o in keys if o.split(".")[-n:] == parts[-n:]) == 1:
                break
        out[k] = name
    return out
