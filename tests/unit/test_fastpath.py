"""The compiled per-case harness (emu/core/fastpath.py, ``emu_run_case`` and the C fault hooks
in _fast.c) against the Python path of ``Machine.run``.

Each test runs the same cases on a machine with the compiled path and on a twin with
``compiled=False`` (the Python path, as under ``EMU_PURE=1``) and compares what they observed
field by field: state, message, result registers, every fault (event, resolution and the
registers before it), the pages written, EFLAGS.AC; then the judged ``Outcome``.  The cases
cover eras A-F, every routine and CPU path, #MC, #PF, absent pages, fast-forward, hangs, SMAP
violations, oopses, a fixup that faults forever, an invalid opcode, a policy that raises, and
sequences that move one machine between the two paths.
"""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emu.build.target import Target, era_target
from emu.caching import Bounded
from emu.core import native
from emu.core.machine import (WINDOW_PAGES, WINDOW_SPAN, Buffers, Call, FaultKind, Machine,
                              RawRun, State)
from emu.errors import EmulationError
from emu.kernel import outcome
from emu.kernel.eras import CPUS, ERAS, Routine

from test_fast_forward import cases as ff_cases

pytestmark = pytest.mark.skipif(native.load() is None,
                                reason="the compiled helper cannot be built here (gcc "
                                       "missing, or EMU_PURE=1)")


def python_twin(t: Target) -> Target:
    """The same target on a machine that runs every case through the Python path."""
    tp = copy.copy(t)
    tp.machine = Machine(t.image, smap=t.machine.smap, compiled=False)
    tp._calls = Bounded(256, "test.calls")
    assert tp.machine._fast is None
    return tp


def same_raw(a: RawRun, b: RawRun, what: object) -> None:
    assert a == b, f"{what}:\n compiled {a}\n python   {b}"
    assert [f.before for f in a.faults] == [f.before for f in b.faults], what
    assert a.src_pages == b.src_pages and a.dst_pages == b.dst_pages, what


def run_both(t: Target, tp: Target, r: Routine, b: Buffers, *, ff: bool = False,
             budget: int | None = None) -> tuple[RawRun, RawRun]:
    """One case on both machines, through the same steps as ``Target.run``."""
    kw = {} if budget is None else {"budget": budget}
    raws = []
    for tt in (t, tp):
        start = tt.checkpoint(r, b, budget, every=True) if ff else None
        raws.append(tt.machine.run(tt._call(r, b), b, tt.kernel, start=start, **kw))
    same_raw(raws[0], raws[1], (r.name, b, ff))
    o = [outcome.build(raw, b, r.ret_reg, t.image.symbolize) for raw in raws]
    assert o[0] == o[1]
    return raws[0], raws[1]


def cases(length: int, sa: int, da: int, direction: str, step: int) -> list[Buffers]:
    """The clean case, then the fast-forward tests' faulting cases."""
    return [Buffers(direction, length, sa, da), *ff_cases(length, sa, da, direction, step)]


def combos():  # type: ignore[no-untyped-def]
    """Every routine of every era; era F's generic routine and the modern eras' routines on
    the CPU paths their ALTERNATIVEs choose from."""
    for era in ERAS.values():
        for r in era.routines:
            cpus = (("none", "rep_good", "erms", "fsrm") if r.name == "copy_user_generic" else
                    ("none", "erms") if era.modern else ("none",))
            for cpu in cpus:
                yield pytest.param(era.key, cpu, r.name, id=f"{era.key}-{cpu}-{r.name}")


@pytest.mark.parametrize("era_key, cpu, routine", list(combos()))
def test_compiled_and_python_paths_see_the_same_runs(era_key: str, cpu: str,
                                                     routine: str) -> None:
    era = ERAS[era_key]
    t = era_target(era, CPUS[cpu])
    tp = python_twin(t)
    r = era.routine(routine)
    fast = t.machine._fast
    assert fast is not None
    hits = fast.memo_hits
    try:
        n = 0
        for length in (9, 100, 4096):
            for direction in ("from", "to"):
                for b in cases(length, 0x7E3, 5, direction, max(1, length // 6)):
                    run_both(t, tp, r, b)
                    run_both(t, tp, r, b, ff=True)
                    n += 1
        # out of budget: a hang (a rep string done in bulk is one instruction)
        b = Buffers("from", 4096, 0, 0, poison=(4000,))
        raw, _ = run_both(t, tp, r, b, budget=2)
        assert raw.state is State.HANG
        run_both(t, tp, r, b, budget=300)
    finally:
        tp.machine.close()
    assert n > 40
    assert fast.memo_hits > hits          # the C hooks answered faults themselves


def demo_twins(demo: Target) -> tuple[Target, Target]:
    t = copy.copy(demo)
    t.machine = Machine(demo.image, smap=demo.machine.smap, compiled=True)
    t._calls = Bounded(256, "test.calls")
    return t, python_twin(demo)


def demo_run(t: Target, name: str, b: Buffers, handler=None, **kw) -> RawRun:  # type: ignore[no-untyped-def]
    call = Call(t.image.symbol(name).addr,
                (("rdi", b.dst), ("rsi", b.src), ("rdx", b.length), ("rax", 0)))
    return t.machine.run(call, b, handler or t.kernel, **kw)


@pytest.mark.parametrize("name, bufs, budget, state", [
    ("demo_no_entry", Buffers(length=100, unmapped=(0,)), None, State.OOPS),
    ("demo_no_entry", Buffers(length=100, poison=(50,)), None, State.PANIC),
    ("demo_runaway", Buffers(length=10), 20_000, State.HANG),
    ("demo_refault", Buffers(length=10, poison=(0,)), None, State.HANG),
    ("demo_no_stac", Buffers(length=64), None, State.SMAP_VIOLATION),
    ("demo_movsb", Buffers(length=4096, src_align=3, poison=(100, 3000)), None,
     State.RETURNED),
    ("demo_movsq", Buffers("to", 4096, 0, 7, unmapped=(2000,)), None, State.RETURNED),
    ("demo_unrolled_copy", Buffers(length=9000, src_align=5, poison=(8000,),
                                   unmapped=(4100,)), None, State.RETURNED),
    ("demo_store_src", Buffers(length=200), None, None),
    ("demo_straddle", Buffers(length=200, poison=(64,)), None, None),
])
def test_machine_states_agree(demo: Target, name: str, bufs: Buffers, budget: int | None,
                              state: State | None) -> None:
    t, tp = demo_twins(demo)
    kw = {} if budget is None else {"budget": budget}
    try:
        for _ in range(2):                   # the second time from the memo
            a, b = demo_run(t, name, bufs, **kw), demo_run(tp, name, bufs, **kw)
            same_raw(a, b, name)
            assert state is None or a.state is state
    finally:
        t.machine.close()
        tp.machine.close()


def test_the_memo_answers_only_the_faults_it_models(demo: Target) -> None:
    """The C #PF hook uses the memo only for a page the case made non-present: the same
    instruction, learnt from such a fault, meeting a present user page with EFLAGS.AC clear
    is a SMAP violation, decided in Python."""
    t, tp = demo_twins(demo)
    absent, present = Buffers(length=64, unmapped=(0,)), Buffers(length=64)
    try:
        for b, state in ((absent, State.RETURNED), (present, State.SMAP_VIOLATION),
                         (absent, State.RETURNED), (present, State.SMAP_VIOLATION)):
            a = demo_run(t, "demo_no_stac", b)
            same_raw(a, demo_run(tp, "demo_no_stac", b), b)
            assert a.state is state
    finally:
        t.machine.close()
        tp.machine.close()


def test_pages_put_back_stay_known_as_put_back() -> None:
    """A page a run wrote and the next run put back to its initial contents must not be
    taken for the page it was: a later start carrying the same bytes writes them again."""
    era = ERAS["E"]
    t = copy.copy(era_target(era, CPUS["none"]))
    t.machine = Machine(t.image, smap=t.machine.smap, compiled=True)
    t._calls = Bounded(256, "test.calls")
    tp = python_twin(t)
    r = era.routine("copy_user_generic_unrolled")
    clean, short = Buffers("from", 9000, 5, 3), Buffers("from", 100, 5, 3)
    late = Buffers("from", 9000, 5, 3, poison=(8900,))
    try:
        for tt in (t, tp):
            assert tt.checkpoint(r, late) is not None      # recorded now, on the Python path
        run_both(t, tp, r, clean)          # dirties the destination's three pages
        run_both(t, tp, r, short)          # puts back the two it does not write
        run_both(t, tp, r, late, ff=True)  # starts with two of them written as in `clean`
        for pa in (t.machine._user_pa, t.machine._kern_pa):
            assert t.machine.uc.mem_read(pa, WINDOW_SPAN) == tp.machine.uc.mem_read(
                pa, WINDOW_SPAN)
    finally:
        t.machine.close()
        tp.machine.close()


def test_a_call_out_of_the_image_and_an_invalid_opcode_agree() -> None:
    from tests.regress.test_call_out_of_image_is_an_oops import target
    t0 = target()
    t, tp = copy.copy(t0), python_twin(t0)
    t.machine = Machine(t0.image, smap=t0.machine.smap, compiled=True)
    try:
        for name in ("callout", "bad_opcode"):
            r = Routine(name)
            a, _ = run_both(t, tp, r, Buffers(length=8))
            assert a.state is State.OOPS and a.faults[-1].event.kind is FaultKind.UD
    finally:
        t.machine.close()
        tp.machine.close()


def test_a_policy_that_raises_leaves_both_machines_clean(demo: Target) -> None:
    t, tp = demo_twins(demo)

    def broken(cpu, event):  # type: ignore[no-untyped-def]
        raise EmulationError("policy failure")

    short = Buffers(length=4096, src_align=3, poison=(100,))
    bad = Buffers(length=4096, src_align=3, poison=(3000,))
    try:
        for tt in (t, tp):
            demo_run(tt, "demo_movsb", short)
            with pytest.raises(EmulationError, match="policy failure"):
                demo_run(tt, "demo_movsb", bad, broken)
        same_raw(demo_run(t, "demo_movsb", short), demo_run(tp, "demo_movsb", short), "after")
    finally:
        t.machine.close()
        tp.machine.close()


def test_a_handler_without_reuse_is_asked_about_every_fault(demo: Target) -> None:
    """The memo only holds what a handler promises (``reuse``): a plain function (as
    ``trace`` passes) is called for every fault, on both paths."""
    t, tp = demo_twins(demo)
    calls = {t: 0, tp: 0}
    b = Buffers(length=4096, src_align=3, poison=(100, 3000))
    try:
        for tt in (t, tp):
            def counting(cpu, event, tt=tt):  # type: ignore[no-untyped-def]
                calls[tt] += 1
                return tt.kernel(cpu, event)
            for _ in range(3):
                raw = demo_run(tt, "demo_movsb", b, counting)
        assert calls[t] == calls[tp] == 3 * len(raw.faults) > 0
    finally:
        t.machine.close()
        tp.machine.close()


def test_the_memo_answers_repeated_faults_in_c(demo: Target) -> None:
    t, _ = demo_twins(demo)
    fast = t.machine._fast
    b = Buffers(length=4096, src_align=3, poison=(100,))
    try:
        demo_run(t, "demo_unrolled_copy", b)
        misses, hits = fast.memo_misses, fast.memo_hits
        for _ in range(5):
            demo_run(t, "demo_unrolled_copy", b)
        assert fast.memo_misses == misses and fast.memo_hits == hits + 5
        # another handler (here: another policy object) starts from an empty memo
        other = copy.copy(demo.kernel)
        demo_run(t, "demo_unrolled_copy", b, other)
        assert fast.memo_misses == misses + 1
    finally:
        t.machine.close()


def ptes_of(m: Machine, at: int) -> list[int]:
    raw = bytes(m.uc.mem_read(at, 8 * WINDOW_PAGES))
    return [int.from_bytes(raw[i:i + 8], "little") & ~0x20 for i in range(0, len(raw), 8)]


@pytest.mark.parametrize("era_key", ["A", "D", "E", "F"])
def test_one_machine_moved_between_the_paths_matches_a_python_machine(era_key: str) -> None:
    """Any sequence of full and fast-forwarded runs, recordings (always the Python path),
    cases with more poisoned lines than the C record holds (the Python path too), both
    directions, missing pages, one clean run's checkpoints in any order: the compiled
    machine, handing itself between the paths, sees exactly what a Python machine running
    the same sequence sees, and leaves the same window pages and page tables behind."""
    era = ERAS[era_key]
    t = copy.copy(era_target(era, CPUS["none"]))
    t.machine = Machine(t.image, smap=t.machine.smap, compiled=True)
    t._calls = Bounded(256, "test.calls")
    tp = python_twin(t)
    m, mp = t.machine, tp.machine
    assert (m._user_pa, m._kern_pa, m._pml4) == (mp._user_pa, mp._kern_pa, mp._pml4)
    rnd = random.Random(19)
    seq = []
    for _ in range(120):
        length = rnd.choice((100, 4096, 9000))
        kw: dict[str, tuple[int, ...]] = {}
        roll = rnd.random()
        if roll < 0.4:
            kw["poison"] = (rnd.randrange(length),)
        elif roll < 0.55:
            kw["poison"] = tuple(sorted(rnd.sample(range(length), min(20, length))))
        elif roll < 0.75:
            kw["unmapped"] = (rnd.randrange(length),)
        b = Buffers(rnd.choice(("from", "to")), length, rnd.choice((0, 5)),
                    rnd.choice((0, 3)), **kw)
        seq.append((rnd.choice(era.routines), b, rnd.random() < 0.6))
    unrolled = era.routines[0]
    for off in rnd.sample(range(9000), 30):          # one clean run's checkpoints
        seq.append((unrolled, Buffers("from", 9000, 5, 3, poison=(off,)), True))
        seq.append((unrolled, Buffers("from", 9000, 5, 3, unmapped=(off,)), True))
        seq.append((unrolled, Buffers("from", 9000, 5, 3), False))
    rnd.shuffle(seq)
    many = recorded = 0
    try:
        for r, b, ff in seq:
            many += len({(b.src + off) & ~63 for off in b.poison}) > 16
            recorded += ff and bool(b.poison or b.unmapped)
            a, p = run_both(t, tp, r, b, ff=ff)
            assert a.dst_window == p.dst_window and a.src_window == p.src_window, b
            # what the machines hold for the next case: window pages, their page tables
            for pa in (m._user_pa, m._kern_pa):
                assert m.uc.mem_read(pa, WINDOW_SPAN) == mp.uc.mem_read(pa, WINDOW_SPAN), b
            for _, ptes in m._window_ptes:          # accessed bits aside
                assert ptes_of(m, ptes) == ptes_of(mp, ptes), b
    finally:
        m.close()
        mp.close()
    assert many and recorded        # both reasons to hand the machine to the Python path


def test_emu_pure_selects_the_python_path(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    img = era_target(ERAS["E"], CPUS["none"]).image
    m = Machine(img)
    assert m._fast is not None
    m.close()
    monkeypatch.setenv("EMU_PURE", "1")
    m = Machine(img)
    assert m._fast is None
    m.close()
    with pytest.raises(EmulationError, match="not available"):
        Machine(img, compiled=True)


# ---- outcome.measure: the compiled byte facts against Python's ----------------------------

_bytes = st.binary(min_size=0, max_size=300)


@given(data=st.data(), n=st.integers(0, 300))
@example(data=None, n=0).via("empty")
def test_measure_compiled_matches_python(data, n: int) -> None:  # type: ignore[no-untyped-def]
    if data is None:
        src = dst = fill = b""
        reported = 0
    else:
        src = data.draw(st.binary(min_size=n, max_size=n))
        fill = data.draw(st.binary(min_size=n, max_size=n))
        # dst: a copied prefix, then fill, with some bytes changed anywhere
        k = data.draw(st.integers(0, n))
        dst = bytearray(src[:k] + fill[k:])
        for i in data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=8)):
            if n:
                dst[i] = data.draw(st.sampled_from([src[i], fill[i], (dst[i] + 1) & 0xFF]))
        dst = bytes(dst)
        reported = data.draw(st.integers(-1, n + 1))
        reported = -1 if reported > n else reported
    assert native.measure_function() is not None
    assert outcome.measure(dst, src, fill, n, reported) == \
        outcome.measure_python(dst, src, fill, n, reported)


@given(pages=st.lists(st.integers(0, WINDOW_PAGES - 1), max_size=3, unique=True),
       lo=st.integers(0, WINDOW_SPAN), size=st.integers(0, 3 * 4096))
@example(pages=[1], lo=4096, size=4096).via("one whole page")
@example(pages=[1], lo=4100, size=100).via("inside one page")
def test_raw_run_byte_views_overlay_the_changed_pages(pages: list[int], lo: int,
                                                      size: int) -> None:
    from emu.core.records import DST_WINDOW_BYTES
    changed = tuple((i, bytes([i + 1]) * 4096) for i in sorted(pages))
    raw = RawRun(State.RETURNED, "", (), (), (), changed)
    want = bytearray(DST_WINDOW_BYTES)
    for i, data in changed:
        want[i * 4096:(i + 1) * 4096] = data
    hi = min(lo + size, WINDOW_SPAN)
    assert raw.dst_bytes(lo, hi) == bytes(want[lo:hi])
