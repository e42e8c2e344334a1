"""The bounded-cache helper every module-level and per-object cache uses."""

from __future__ import annotations

import pickle

import pytest

from emu.caching import Bounded, clear_all, sizes


def test_oldest_entry_goes_first_at_the_limit() -> None:
    c: Bounded[int, str] = Bounded(3, "t-fifo")
    for i in range(5):
        c[i] = str(i)
    assert list(c) == [2, 3, 4]
    c[3] = "again"                      # replacing a key evicts nothing
    assert list(c.items()) == [(2, "2"), (3, "again"), (4, "4")]


def test_setdefault_and_update_respect_the_limit() -> None:
    c: Bounded[int, int] = Bounded(2, "t-upd")
    c.update({1: 1, 2: 2, 3: 3})
    assert dict(c) == {2: 2, 3: 3}
    assert c.setdefault(9, 9) == 9 and len(c) == 2 and 9 in c


def test_clear_all_and_sizes_see_every_instance() -> None:
    a: Bounded[int, int] = Bounded(4, "t-sizes")
    b: Bounded[int, int] = Bounded(4, "t-sizes")
    a[1] = b[1] = b[2] = 0
    assert sizes()["t-sizes"] == 3
    clear_all()
    assert len(a) == len(b) == 0


def test_pickles_as_an_empty_cache_with_its_bound() -> None:
    c: Bounded[int, int] = Bounded(7, "t-pickle")
    c[1] = 1
    d = pickle.loads(pickle.dumps(c))
    assert isinstance(d, Bounded) and d.limit == 7 and len(d) == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Bounded(0, "t-bad")


def test_no_cache_clears_itself_by_hand() -> None:
    """Every cache goes through ``Bounded`` (or lru_cache): no module counts its own entries
    and clears itself at a limit of its own."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "emu"
    pattern = re.compile(r"if len\((?P<c>[\w.]+)\) >=? \d+:\s*\n\s*(?P=c)\.clear\(\)")
    hits = [f"{p.relative_to(root)}" for p in root.rglob("*.py")
            if pattern.search(p.read_text())]
    assert not hits, f"hand-rolled self-clearing caches: {hits}"


def test_the_hot_caches_are_bounded() -> None:
    """The per-machine and per-engine caches of the core are ``Bounded`` instances."""
    from emu.build.target import era_target
    from emu.kernel.eras import ERAS
    t = era_target(ERAS["E"], frozenset())
    m = t.machine
    for name in ("_entry_regs", "_entry_by_call", "_poison_lines", "_redirects", "_pte_cache",
                 "_insn_cache"):
        assert isinstance(getattr(m, name), Bounded), name
    assert isinstance(m._eng._u64, Bounded) and isinstance(m._eng._batches, Bounded)


def test_a_weight_budget_evicts_the_oldest_until_the_weights_fit() -> None:
    c: Bounded[str, bytes] = Bounded(8, "t-weight", weigh=len, budget=10)
    c["a"], c["b"], c["c"] = b"1234", b"1234", b"12"
    assert list(c) == ["a", "b", "c"] and c.weight() == 10
    c["d"] = b"123"                     # 13 > 10: "a" goes
    assert list(c) == ["b", "c", "d"] and c.weight() == 9
    c["e"] = b"x" * 25                  # heavier than the budget: it alone stays
    assert list(c) == ["e"] and c.weight() == 25
    c["f"] = b"1"
    assert list(c) == ["f"] and c.weight() == 1
    c["f"] = b"12345"                   # a replaced value is weighed again
    assert c.weight() == 5
    del c["f"]
    c["g"] = b"12"
    assert c.pop("g") == b"12" and c.weight() == 0 and len(c) == 0
    c.update({"h": b"123", "i": b"12345678"})
    assert list(c) == ["i"] and c.weight() == 8
    clear_all()
    assert c.weight() == 0


def test_a_weighted_cache_still_keeps_its_entry_limit_and_pickles_with_its_budget() -> None:
    c: Bounded[int, bytes] = Bounded(2, "t-weight-limit", weigh=len, budget=100)
    for i in range(4):
        c[i] = b"x"
    assert list(c) == [2, 3] and c.weight() == 2
    d = pickle.loads(pickle.dumps(c))
    assert (d.limit, d.budget, d.weigh, len(d), d.weight()) == (2, 100, len, 0, 0)


def test_a_budget_needs_its_weigh_function() -> None:
    with pytest.raises(ValueError):
        Bounded(4, "t-bad-budget", budget=10)
    with pytest.raises(ValueError):
        Bounded(4, "t-bad-budget", weigh=len, budget=0)
