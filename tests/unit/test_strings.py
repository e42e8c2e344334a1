"""rep movs / rep stos in bulk (emu/core/strings.py) against iteration-by-iteration execution.

The machine with ``bulk_strings=False`` lets Unicorn run every iteration; with it on, the
unwatched iterations run in one step, in the compiled helper (``_fast.c``) or in Python
(``EMU_PURE=1``).  All three must leave the same registers, memory, faults and end state for
any length, element size, direction, alignment, overlap and fault placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emu.core import layout as L
from emu.core import native, strings
from emu.core.machine import Buffers, Call, Halt, Machine, RawRun, Redirect, State

# ---- a hand-assembled image: one routine per (op, size, direction) -----------------------

OPS = {("movs", 1): b"\xf3\xa4", ("movs", 2): b"\x66\xf3\xa5", ("movs", 4): b"\xf3\xa5",
       ("movs", 8): b"\xf3\x48\xa5", ("stos", 1): b"\xf3\xaa", ("stos", 2): b"\x66\xf3\xab",
       ("stos", 4): b"\xf3\xab", ("stos", 8): b"\xf3\x48\xab"}
SLOT = 32


@dataclass(frozen=True)
class _Section:
    addr: int
    data: bytes
    executable: bool = True
    writable: bool = False

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


class _Code:
    """``std|cld; rep <op>; cld; ret`` for every op and direction, SLOT bytes apart."""

    def __init__(self) -> None:
        code = bytearray()
        self.entry: dict[tuple[str, int, bool], int] = {}
        self.resume: dict[tuple[str, int, bool], int] = {}
        for (op, size), enc in OPS.items():
            for down in (False, True):
                at = len(code)
                self.entry[op, size, down] = L.TEXT_BASE + at
                self.resume[op, size, down] = L.TEXT_BASE + at + 1 + len(enc)
                code += (b"\xfd" if down else b"\xfc") + enc + b"\xfc\xc3"
                code += b"\xcc" * (SLOT - (len(code) - at))
        self.sections = (_Section(L.TEXT_BASE, bytes(code)),)
        self.stubs: dict[str, int] = {}

    def symbolize(self, addr: int) -> str:
        return hex(addr)


CODE = _Code()


@pytest.fixture(scope="module", params=[True, False], ids=["smap", "no-smap"])
def machines(request):  # type: ignore[no-untyped-def]
    """(compiled bulk, Python bulk, iterating) machines on the same image, on a CPU with
    SMAP and on one without (where user pages need no EFLAGS.AC)."""
    if native.load() is None:
        pytest.skip("the compiled helper cannot be built here (gcc missing, or EMU_PURE=1)")
    smap = request.param
    ms = (Machine(CODE, compiled=True, smap=smap), Machine(CODE, compiled=False, smap=smap),
          Machine(CODE, bulk_strings=False, smap=smap))
    assert ms[0]._native is not None and ms[1]._native is None and ms[1]._string_ops
    assert not ms[2]._string_ops
    yield ms
    for m in ms:
        m.close()


def handler_for(resume: int):  # type: ignore[no-untyped-def]
    """#MC: a fixup that skips the rest of the string instruction (rax = 18); anything else
    (no present page, SMAP) is an oops."""
    def handler(cpu, event):  # type: ignore[no-untyped-def]
        if event.kind.value == "mc":
            return Redirect(resume, (("rax", 18),))
        return Halt(State.OOPS, f"{event.kind.value} at {event.address:#x}")
    return handler


def same(a: RawRun, b: RawRun) -> None:
    assert a.state == b.state and a.message == b.message
    assert a.regs == b.regs
    assert a.faults == b.faults
    assert [f.before for f in a.faults] == [f.before for f in b.faults]
    assert a.src_pages == b.src_pages and a.dst_pages == b.dst_pages
    assert a.ac_at_return == b.ac_at_return


WINDOWS = {"user": L.USER_WINDOW, "kernel": L.KERNEL_WINDOW}
SPAN = L.MAX_SPAN


@given(op=st.sampled_from(sorted(OPS)), down=st.booleans(),
       src_win=st.sampled_from(["user", "kernel"]), dst_win=st.sampled_from(["user", "kernel"]),
       src_off=st.integers(-64, SPAN + 64), dst_off=st.integers(-64, SPAN + 64),
       count=st.integers(0, 3000), stac=st.booleans(),
       poison=st.lists(st.integers(0, SPAN - 1), max_size=3),
       unmapped=st.lists(st.integers(0, SPAN - 1), max_size=2),
       rax=st.integers(0, 2**64 - 1))
@example(op=("movs", 1), down=False, src_win="user", dst_win="kernel", src_off=0x7E0,
         dst_off=0, count=4096, stac=True, poison=[0x960 + 0x7E0], unmapped=[], rax=0
         ).via("the seed: rep movsb into a poisoned line")
@example(op=("movs", 1), down=False, src_win="user", dst_win="user", src_off=100, dst_off=103,
         count=2000, stac=True, poison=[], unmapped=[], rax=0).via("overlap, dst 3 ahead")
@example(op=("movs", 8), down=False, src_win="user", dst_win="user", src_off=100, dst_off=103,
         count=900, stac=True, poison=[], unmapped=[], rax=0).via("overlap under one qword")
@example(op=("movs", 4), down=True, src_win="kernel", dst_win="kernel", src_off=8000,
         dst_off=7990, count=1500, stac=True, poison=[], unmapped=[], rax=0
         ).via("backward, dst leading")
@example(op=("stos", 8), down=True, src_win="user", dst_win="user", src_off=0,
         dst_off=0x3FF8, count=3000, stac=True, poison=[], unmapped=[0x2100], rax=0x1122
         ).via("backward stos into an absent page")
@example(op=("movs", 2), down=False, src_win="user", dst_win="kernel", src_off=SPAN - 64,
         dst_off=0, count=100, stac=True, poison=[], unmapped=[], rax=0
         ).via("reads run into the guard page and off the window")
@example(op=("movs", 1), down=False, src_win="user", dst_win="kernel", src_off=0,
         dst_off=0, count=64, stac=False, poison=[], unmapped=[], rax=0).via("SMAP")
def test_bulk_matches_iteration_by_iteration(machines, op, down, src_win, dst_win,  # type: ignore[no-untyped-def]
                                             src_off, dst_off, count, stac, poison,
                                             unmapped, rax) -> None:
    compiled, python, iterate = machines
    name, size = op
    rsi, rdi = WINDOWS[src_win] + src_off, WINDOWS[dst_win] + dst_off
    call = Call(CODE.entry[name, size, down],
                (("rsi", rsi), ("rdi", rdi), ("rcx", count), ("rax", rax)), stac=stac)
    bufs = Buffers("from", SPAN, 0, 0, poison=tuple(poison), unmapped=tuple(unmapped))
    handler = handler_for(CODE.resume[name, size, down])
    want = iterate.run(call, bufs, handler)
    same(compiled.run(call, bufs, handler), want)
    same(python.run(call, bufs, handler), want)


def test_the_compiled_hook_copies_a_4k_movsb_in_one_step(machines) -> None:  # type: ignore[no-untyped-def]
    compiled = machines[0]
    st = compiled._native
    calls, bulked = st.calls, st.bulked
    call = Call(CODE.entry["movs", 1, False],
                (("rsi", L.USER_WINDOW), ("rdi", L.KERNEL_WINDOW), ("rcx", 4096), ("rax", 0)),
                stac=True)
    raw = compiled.run(call, Buffers("from", 4096), handler_for(0))
    assert raw.state is State.RETURNED and dict(raw.regs)["rcx"] == 0
    # The first iteration runs in the block that reached the instruction; the hook takes
    # the rest at the start of the next block (and sees RCX = 0 once more).
    assert st.bulked - bulked == 4095 and st.calls - calls <= 2


def test_bulk_takes_the_iterations_a_4k_copy_would_run_one_by_one(machines) -> None:  # type: ignore[no-untyped-def]
    """The Python hook runs once for the whole copy (and once more for the RCX = 0 pass)."""
    bulk = machines[1]
    calls = []
    real = bulk._on_string
    bulk._on_string = lambda addr: (calls.append(addr), real(addr))  # type: ignore[method-assign]
    try:
        call = Call(CODE.entry["movs", 1, False],
                    (("rsi", L.USER_WINDOW), ("rdi", L.KERNEL_WINDOW), ("rcx", 4096),
                     ("rax", 0)), stac=True)
        raw = bulk.run(call, Buffers("from", 4096), handler_for(0))
    finally:
        del bulk._on_string
    assert raw.state is State.RETURNED and dict(raw.regs)["rcx"] == 0
    assert len(calls) <= 2


# ---- the pure functions against brute force ---------------------------------------------

@given(base=st.integers(0, 4000), size=st.sampled_from([1, 2, 4, 8]), down=st.booleans(),
       count=st.integers(0, 300), a=st.integers(0, 4000), w=st.integers(1, 200))
def test_first_hit_is_the_first_overlapping_element(base, size, down, count, a, w) -> None:  # type: ignore[no-untyped-def]
    b = a + w
    want = next((i for i in range(count)
                 if (lo := base - i * size if down else base + i * size) < b
                 and lo + size > a), count)
    assert strings.first_hit(base, size, down, count, a, b) == want


@given(src=st.integers(0, 200), dst=st.integers(0, 200), size=st.sampled_from([1, 2, 4, 8]),
       down=st.booleans(), count=st.integers(0, 20), data=st.binary(min_size=400, max_size=400))
def test_sequential_copy_is_element_by_element(src, dst, size, down, count, data) -> None:  # type: ignore[no-untyped-def]
    if down:
        src, dst = src + (count * size), dst + (count * size)   # keep the span inside
    mem = bytearray(data)
    want = bytearray(data)
    for i in range(count):
        s = src - i * size if down else src + i * size
        d = dst - i * size if down else dst + i * size
        want[d:d + size] = bytes(want[s:s + size])
    strings.sequential_copy(mem, src, dst, count, size, down)
    assert mem == want


def test_decode_takes_only_rep_string_forms() -> None:
    assert strings.decode(b"\xf3\x48\xa5", 0) == strings.StringOp(0, 3, "movs", 8)
    assert strings.decode(b"\x66\xf3\xab", 5) == strings.StringOp(5, 3, "stos", 2)
    assert strings.decode(b"\xa4", 0) is None                 # no rep
    assert strings.decode(b"\xf3\x67\xa4", 0) is None         # 32-bit addressing
    assert strings.decode(b"\xf3\x90", 0) is None             # pause


def test_emu_pure_selects_the_python_hook(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EMU_PURE", "1")
    assert native.load() is None
    m = Machine(CODE)
    try:
        assert m._native is None and m._string_ops     # the Python bulk hook
    finally:
        m.close()


def test_without_gcc_or_source_the_python_hook_is_used(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A failed build is no error: ``load()`` gives None and the machine uses Python."""
    monkeypatch.setenv("EMU_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))             # no gcc on it
    assert native.build() is None and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(native, "SOURCE", tmp_path / "missing.c")
    assert native.build() is None
