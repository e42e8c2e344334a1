"""One case's change → its classes (check.classify), on hand-made outcome records."""

from __future__ import annotations

from emu.runs.check import MCase, classify, judge


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


def test_a_violation_removed_is_better_not_new() -> None:
    old = rec(ret=3, violations=("modified_past_reported", "bytes_mismatch"))
    assert judge(old, rec(ret=3, violations=("bytes_mismatch",)), "mc") == \
        [("new_violation", "better")]
    assert judge(rec(ret=3), old, "mc") == [("new_violation", "worse")]


def test_directions() -> None:
    case = MCase("copy_user_generic_unrolled", "none", "from", 64, 0, 0, "mc", (40,))
    exact = rec(ret=24, copied=40, mc=1)
    rounded = rec(ret=64, copied=40, mc=1, violations=("modified_past_reported",))
    # an exact count where it used to be rounded, and the violation gone: both better
    assert judge(rounded, exact, case) == [("return_changed", "better"),
                                            ("new_violation", "better")]
    assert judge(exact, rounded, case) == [("return_changed", "worse"),
                                            ("new_violation", "worse")]
    # fewer machine checks is better, more is worse
    assert judge(rec(mc=2), rec(mc=1), case) == [("mc_count_changed", "better")]
    assert judge(rec(mc=1), rec(mc=2), case) == [("mc_count_changed", "worse")]
    # a panic removed is better; a new one worse
    assert judge(rec("panic", None, mc=1), rec(mc=1), "mc") == [("new_mc_panic", "better")]
    assert judge(rec(mc=1), rec("panic", None, mc=1), "mc") == [("new_mc_panic", "worse")]
    assert judge(rec(), rec("oops", None), "pf") == [("state_changed", "worse")]
    assert judge(rec("hang", None), rec(), "pf") == [("state_changed", "better")]
    assert judge(rec(copied=10), rec(copied=11), "pf") == [("other_change", "neutral")]


def test_other_change_catches_what_no_named_class_covers() -> None:
    assert classify(rec(retry=False), rec(retry=True), "pf") == ["other_change"]
    assert classify(rec(copied=10), rec(copied=11), "pf") == ["other_change"]


def test_a_state_change_is_not_also_an_mc_count_change() -> None:
    # era F: the word loop's byte retry takes a second #MC; when the first one panics,
    # the panic is the finding, not the count
    assert classify(rec(ret=5, mc=2), rec("panic", None, mc=1), "mc") == ["new_mc_panic"]
