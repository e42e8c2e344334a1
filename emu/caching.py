"""The one bounded-cache helper: every in-memory cache in emu is a ``Bounded`` (or an
``functools.lru_cache``), so no cache grows without limit however long a sweep runs.

A shared leaf module (imports nothing of emu), usable from every stage, the core included.

``Bounded`` is a ``dict`` whose inserts evict the oldest entry once ``limit`` entries are
held (first in, first out).  Look-ups stay plain ``dict`` look-ups, so the hot paths
(per-fault site memos, per-case call objects) pay nothing for the bound.  Every instance is
registered by name, so ``clear_all()`` (tests) and ``sizes()`` (the soak benchmark) can see
them all.
"""

from __future__ import annotations

import weakref
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: id → weak reference of every live cache (dicts are unhashable, so no WeakSet).
_ALL: dict[int, weakref.ref] = {}  # type: ignore[type-arg]


class Bounded(dict[K, V]):
    """A dict holding at most ``limit`` entries; the oldest insert goes first.

    Args:
        limit: the most entries kept (≥ 1).
        name: what the cache holds, for ``sizes()``.
    """

    __slots__ = ("limit", "name", "__weakref__")

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"cache {name}: limit must be at least 1, not {limit}")
        super().__init__()
        self.limit = limit
        self.name = name
        key = id(self)
        _ALL[key] = weakref.ref(self, lambda _r, key=key: _ALL.pop(key, None))

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self and len(self) >= self.limit:
            del self[next(iter(self))]
        super().__setitem__(key, value)

    def setdefault(self, key: K, default: V) -> V:  # type: ignore[override]
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def, override]
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Pickled (e.g. into a sweep worker) as a fresh, empty cache with the same bound.
        return (Bounded, (self.limit, self.name))


def _live() -> list[Bounded]:  # type: ignore[type-arg]
    return [c for c in (r() for r in list(_ALL.values())) if c is not None]


def clear_all() -> None:
    """Empty every live ``Bounded`` cache (tests that need a cold start)."""
    for c in _live():
        dict.clear(c)


def sizes() -> dict[str, int]:
    """Entries held per cache name, summed over instances (diagnostics and benchmarks)."""
    out: dict[str, int] = {}
    for c in _live():
        out[c.name] = out.get(c.name, 0) + len(c)
    return out
