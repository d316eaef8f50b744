"""A bounded store of computed results, for the code generator's and the timing model's fast
paths (emit.emit_gemm, timing.simulate): a result kept under a key that determines it.

Values are immutable or treated as such by every reader, so threads compiling or simulating at
once share them; the size bound counts what the caller says each entry weighs (instructions)."""

from __future__ import annotations

import threading
from typing import Any, Hashable


class BoundedStore:
    """At most `limit` units of weight in all; the oldest entries are dropped first."""

    def __init__(self, limit: int):
        self.limit = limit
        self._entries: dict[Hashable, tuple[Any, int]] = {}
        self._size = 0
        self._lock = threading.Lock()
        _STORES.append(self)

    def get(self, key: Hashable) -> Any:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, value: Any, weight: int) -> None:
        if weight > self.limit:
            return
        with self._lock:
            while self._entries and self._size + weight > self.limit:
                self._size -= self._entries.pop(next(iter(self._entries)))[1]
            if key not in self._entries:
                self._entries[key] = (value, weight)
                self._size += weight

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0


_STORES: list[BoundedStore] = []


def clear() -> None:
    """Empty every store (a benchmark measuring the cost of a first compile and simulation)."""
    for store in _STORES:
        store.clear()
