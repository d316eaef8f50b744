"""Reading the cluster's TOML files: every error names the file, the line and the key.

``tomllib`` gives values without positions, so :func:`key_line` finds a key's line in the text
(table headers, arrays of tables counted by occurrence, dotted and inline keys); a message then
reads ``deploy.toml:12: pool[1].replicas: must be a positive integer``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kcompiler.errors import KCError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ClusterSpecError(KCError):
    """A deployment or workload file that cannot be simulated as written."""


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in dotted.split(".")]


def key_line(text: str, path: tuple) -> int | None:
    """1-based line of `path` (names, with integers indexing arrays of tables) in TOML `text`;
    the closest enclosing key or table when the key itself is not on a line of its own."""
    want = [p for p in path if not isinstance(p, int)]
    idx = {i: p for i, p in enumerate(path) if isinstance(p, int)}
    counts: dict[tuple, int] = {}
    table: list = []
    best, best_len = None, -1
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            names = _parts(m.group(2))
            if m.group(1) == "[[":
                counts[tuple(names)] = counts.get(tuple(names), -1) + 1
            table = names
            full = list(table)
            ok = _matches(full, path, counts, want, idx)
            if ok and len(full) > best_len:
                best, best_len = no, len(full)
            continue
        m = _KEY.match(line)
        if not m:
            continue
        full = table + _parts(m.group(1))
        if _matches(full, path, counts, want, idx) and len(full) > best_len:
            best, best_len = no, len(full)
    return best


def _matches(full: list, path: tuple, counts: dict, want: list, idx: dict) -> bool:
    """`full` (names on a line, under its table) is a prefix of `path`'s names, and the array
    occurrences on the way are the ones `path` indexes."""
    if len(full) > len(want) or full != want[:len(full)]:
        return False
    # every integer in path indexes the array named by the names before it
    names_seen = 0
    for i, p in enumerate(path):
        if isinstance(p, int):
            arr = tuple(want[:names_seen])
            if len(arr) <= len(full) and counts.get(arr, 0) != p:
                return False
        else:
            names_seen += 1
    return True


class Source:
    """A TOML file read once: its data, and errors that point into it."""

    def __init__(self, path: str | Path, kind: str, text: str | None = None):
        """Read `path`, or take `text` (then `path` only names it in messages)."""
        self.path = Path(path)
        self.kind = kind
        try:
            self.text = self.path.read_text(encoding="utf-8") if text is None else text
        except FileNotFoundError:
            raise ClusterSpecError(f"{kind} file '{path}' does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ClusterSpecError(f"{kind} file '{path}' cannot be read: {exc}") from None
        try:
            self.data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise ClusterSpecError(f"{self.path}: not valid TOML: {exc}",
                                   hint=f"fix the {kind} file's syntax") from None

    def error(self, path: tuple, msg: str, hint: str | None = None) -> ClusterSpecError:
        line = key_line(self.text, path)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ClusterSpecError(f"{where}: {dotted(path)}: {msg}", hint=hint)

    def check_keys(self, table: dict, path: tuple, allowed) -> None:
        for k in table:
            if k not in allowed:
                raise self.error(path + (k,), f"unknown key (known: {', '.join(sorted(allowed))})")


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


_UNITS_S = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0, "h": 3600.0}


def seconds(src: Source, path: tuple, value: Any) -> float:
    """A duration written with its unit ("200 ms", "2 s", "1.5min"); a bare number is refused
    (it is the usual cause of an SLO off by a factor of 1000)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise src.error(path, f"{value!r} has no unit", hint='write a duration with its unit, e.g. "200 ms" or "2 s"')
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]+)\s*", value)
    if not m or m.group(2) not in _UNITS_S:
        raise src.error(path, f"'{value}' is not a duration",
                        hint=f"write a number and one of the units {', '.join(_UNITS_S)}, e.g. \"200 ms\"")
    out = float(m.group(1)) * _UNITS_S[m.group(2)]
    if out <= 0:
        raise src.error(path, f"'{value}' must be positive")
    return out


def positive(src: Source, path: tuple, value: Any, integer: bool = True, allow_zero: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or (value == 0 and not allow_zero):
        what = "integer" if integer else "number"
        raise src.error(path, f"{value!r} must be a {'non-negative' if allow_zero else 'positive'} {what}")
    return value


def choice(src: Source, path: tuple, value: Any, options) -> str:
    if value not in options:
        raise src.error(path, f"{value!r} is not one of {', '.join(options)}")
    return value
