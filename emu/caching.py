"""The one bounded-cache helper: every in-memory cache in emu is a ``Bounded`` (or an
``functools.lru_cache``), so no cache grows without limit however long a sweep runs.

A shared leaf module (imports nothing of emu), usable from every stage, the core included.

``Bounded`` is a ``dict`` whose inserts evict the oldest entry once ``limit`` entries are
held (first in, first out).  A cache of values whose sizes differ by orders of magnitude (a
fast-forward recording of a 64 KiB copy holds ~12 MB, one of 64 bytes a few KB) also takes a
``weigh`` function and a ``budget``: inserts then evict the oldest entries until the weights
held fit the budget as well (the newest entry always stays).  Look-ups stay plain ``dict`` look-ups, so the hot paths
(per-fault site memos, per-case call objects) pay nothing for the bound.  Every instance is
registered by name, so ``clear_all()`` (tests) and ``sizes()`` (the soak benchmark) can see
them all.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
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
        weigh: a value's weight (e.g. bytes held); with ``budget``, the most weight kept.
        budget: the most total weight kept, the newest entry aside (≥ 1).
    """

    __slots__ = ("limit", "name", "weigh", "budget", "_weights", "_held", "__weakref__")

    def __init__(self, limit: int, name: str, *, weigh: Callable[[V], int] | None = None,
                 budget: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"cache {name}: limit must be at least 1, not {limit}")
        if (weigh is None) != (budget is None) or (budget is not None and budget < 1):
            raise ValueError(f"cache {name}: a weight budget takes weigh= and a budget >= 1")
        super().__init__()
        self.limit = limit
        self.name = name
        self.weigh = weigh
        self.budget = budget
        self._weights: dict[K, int] = {}
        self._held = 0
        key = id(self)
        _ALL[key] = weakref.ref(self, lambda _r, key=key: _ALL.pop(key, None))

    def __setitem__(self, key: K, value: V) -> None:
        if self.weigh is None:                 # the usual cache: no weights to keep
            if key not in self and len(self) >= self.limit:
                dict.__delitem__(self, next(iter(self)))
            super().__setitem__(key, value)
            return
        if key not in self and len(self) >= self.limit:
            del self[next(iter(self))]
        if key in self:
            del self[key]
        w = self.weigh(value)
        while self._held + w > self.budget and len(self):  # type: ignore[operator]
            del self[next(iter(self))]
        super().__setitem__(key, value)
        self._weights[key] = w
        self._held += w

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self._held -= self._weights.pop(key, 0)

    def pop(self, key: K, *default):  # type: ignore[no-untyped-def, override]
        self._held -= self._weights.pop(key, 0)
        return super().pop(key, *default)

    def popitem(self) -> tuple[K, V]:
        k, v = super().popitem()
        self._held -= self._weights.pop(k, 0)
        return k, v

    def clear(self) -> None:
        super().clear()
        self._weights.clear()
        self._held = 0

    def weight(self) -> int:
        """The total weight held (0 for a cache without ``weigh``)."""
        return self._held

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
        return (_fresh, (self.limit, self.name, self.weigh, self.budget))


def _fresh(limit: int, name: str, weigh: Callable[[V], int] | None,
           budget: int | None) -> Bounded:  # type: ignore[type-arg]
    return Bounded(limit, name, weigh=weigh, budget=budget)


def _live() -> list[Bounded]:  # type: ignore[type-arg]
    return [c for c in (r() for r in list(_ALL.values())) if c is not None]


def clear_all() -> None:
    """Empty every live ``Bounded`` cache (tests that need a cold start)."""
    for c in _live():
        c.clear()


def sizes() -> dict[str, int]:
    """Entries held per cache name, summed over instances (diagnostics and benchmarks)."""
    out: dict[str, int] = {}
    for c in _live():
        out[c.name] = out.get(c.name, 0) + len(c)
    return out
