"""One case's change → its classes (check.classify), on hand-made outcome records."""

from __future__ import annotations

from emu.runs.check import classify


def rec(state: str = "returned", ret: int | None = 0, copied: int = 64, mc: int = 0,
        pf: int = 0, violations: tuple[str, ...] = (), retry: bool = False) -> dict:
    return {"state": state, "ret": ret, "copied": copied, "violations": list(violations),
            "mc": mc, "pf": pf, "retry": retry}


def test_equal_outcomes_have_no_class() -> None:
    assert classify(rec(), rec(), "none") == []


def test_recovered_mc_that_now_panics() -> None:
    assert classify(rec(ret=64, copied=0, mc=1), rec("panic", None, 0, mc=1), "mc") == \
        ["new_mc_panic"]


def test_panic_on_a_pf_case_is_a_state_change_not_an_mc_panic() -> None:
    assert classify(rec(pf=1), rec("panic", None, pf=1), "pf") == ["state_changed"]


def test_smap() -> None:
    assert classify(rec(), rec("smap_violation", None), "none") == ["new_smap_violation"]


def test_return_violation_and_mc_count_are_independent() -> None:
    old = rec(ret=1, copied=7, mc=2, violations=("poison_consumed_twice",))
    new = rec(ret=8, copied=0, mc=1, violations=("claimed_nothing",))
    assert classify(old, new, "mc") == ["return_changed", "new_violation", "mc_count_changed"]


def test_fewer_violations_is_not_a_new_violation() -> None:
    old = rec(ret=3, violations=("modified_past_reported", "bytes_mismatch"))
    assert classify(old, rec(ret=3, violations=("bytes_mismatch",)), "mc") == ["other_change"]


def test_other_change_catches_what_no_named_class_covers() -> None:
    assert classify(rec(retry=False), rec(retry=True), "pf") == ["other_change"]
    assert classify(rec(copied=10), rec(copied=11), "pf") == ["other_change"]


def test_a_state_change_is_not_also_an_mc_count_change() -> None:
    # era F: the word loop's byte retry takes a second #MC; when the first one panics,
    # the panic is the finding, not the count
    assert classify(rec(ret=5, mc=2), rec("panic", None, mc=1), "mc") == ["new_mc_panic"]
