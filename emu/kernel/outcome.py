"""RawRun → ``Outcome``, and the uaccess.h contract as the oracle.

The oracle is the contract at the top of include/linux/uaccess.h (kernel-facts.md §1), not
"returns exactly the fault offset":

* 0 ≤ ret ≤ len;
* the first len − ret destination bytes equal the source;
* nothing past dst + len − ret changes, nothing outside [dst, dst + len) changes;
* ret == len only if nothing could be copied;

plus the machine-check invariants: a poisoned line is not consumed twice within one copy, and
a copy that missed bytes never returns 0.  Violations carry stable names (``VIOLATIONS``).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from emu.caching import Bounded
from emu.core import layout as L
from emu.kernel.extable import ExtableEntry
from emu.core.machine import (Buffers, FaultKind, FaultRecord, Halt, RawRun, Redirect, State,
                      fast_init)
from emu.core.records import DST_WINDOW_BYTES, SRC_WINDOW_BYTES, WINDOW_SPAN, base_slice

#: Stable violation names and what each means.
VIOLATIONS: dict[str, str] = {
    "out_of_range_return": "returned value is not within 0..len",
    "zero_with_missing": "returned 0 although bytes were not copied",
    "bytes_mismatch": "a byte the return value reports as copied differs from the source",
    "modified_past_reported": "bytes past the reported count were written (with source values)",
    "garbage_past_reported": "bytes past the reported count were written with non-source values",
    "claimed_nothing": "returned len although some bytes were copied",
    "write_outside_buffer": "bytes outside [dst, dst+len) changed",
    "poison_consumed_twice": "the same poisoned line was consumed twice in one copy",
}
#: Violations a copy_from_user() caller does not notice: it zero-pads [len-ret, len).
BENIGN_FOR_COPY_FROM_USER = frozenset({"modified_past_reported", "garbage_past_reported"})


@fast_init
@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a run, as reported to users (addresses as numbers, places as symbols)."""

    kind: str
    rip: int
    where: str
    address: int
    offset: int | None
    handler: str | None
    fixup: int | None
    fixup_where: str | None
    action: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "rip": hex(self.rip), "where": self.where,
                "address": hex(self.address), "offset": self.offset, "handler": self.handler,
                "fixup": None if self.fixup is None else hex(self.fixup),
                "fixup_where": self.fixup_where, "action": self.action, "note": self.note}


@fast_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """What one copy did.  Equality means "same behaviour" (instruction counts excluded)."""

    state: State
    return_value: int | None
    length: int
    bytes_copied: int
    written_beyond: int
    written_outside: int
    faults: tuple[Fault, ...]
    retouched: bool
    violations: tuple[str, ...]
    message: str = ""
    ac_at_return: bool = False
    insns: int | None = field(default=None, compare=False)

    @property
    def mc_count(self) -> int:
        return sum(1 for f in self.faults if f.kind == "mc")

    @property
    def pf_count(self) -> int:
        return sum(1 for f in self.faults if f.kind == "pf")

    @property
    def verdict(self) -> str:
        if self.state is not State.RETURNED:
            return self.state.value
        return "ok" if not self.violations else ",".join(self.violations)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "return_value": self.return_value,
            "length": self.length,
            "bytes_copied": self.bytes_copied,
            "written_beyond": self.written_beyond,
            "written_outside": self.written_outside,
            "verdict": self.verdict,
            "violations": list(self.violations),
            "mc_count": self.mc_count,
            "pf_count": self.pf_count,
            "tail_retry": self.retouched,
            "ac_at_return": self.ac_at_return,
            "message": self.message,
            "instructions": self.insns,
            "faults": [f.to_json() for f in self.faults],
        }


def build(raw: RawRun, bufs: Buffers, ret_reg: str, symbolize: Any) -> Outcome:
    """Measure the buffers, read the return register and judge the result.

    Args:
        raw: what the machine observed.
        bufs: the case that was run.
        ret_reg: "eax" (≤ v6.3 routines) or "rcx" (≥ v6.4).
        symbolize: address → "symbol+off" function for the report.
    """
    n = bufs.length
    sa = bufs.src_align
    # the source, usually untouched: a slice of the initial window (kept)
    src = (raw.src_bytes(sa, sa + n) if raw.src_pages else
           base_slice(SRC_WINDOW_BYTES, sa + L.PAGE, sa + n + L.PAGE))
    lo = L.PAGE + bufs.dst_align
    dst = raw.dst_bytes(lo, lo + n)
    initial = DST_WINDOW_BYTES
    fill = base_slice(initial, lo, lo + n)
    ret: int | None = None
    state = raw.state
    if state is _RETURNED:
        ret = (_reg(raw.regs, "rax") & 0xFFFFFFFF if ret_reg == "eax"
               else _reg(raw.regs, ret_reg))
    records = raw.faults
    faults: tuple[Fault, ...] = ()
    if records:
        # bufs.src and bufs.dst, without their properties
        if bufs.direction == "from":
            src_base = user_base = L.USER_WINDOW + sa
        else:
            src_base, user_base = L.KERNEL_WINDOW + sa, L.USER_WINDOW + bufs.dst_align
        out = []
        for r in records:                   # _fault, inlined: a sweep's hot loop
            ev, res = r.event, r.resolution
            rip, kind = ev.rip, ev.kind
            t = _TEMPLATES.get((id(res), rip))
            if t is None or t[0] is not res or t[1] != symbolize or t[9] is not kind:
                t = _TEMPLATES[(id(res), rip)] = _template(kind, rip, res, symbolize)
            base = src_base if kind is _MC else user_base
            address = ev.address
            offset = address - base if base <= address < base + (n or 1) else None
            out.append(Fault(t[2], rip, t[3], address, offset, t[4], t[5], t[6], t[7], t[8]))
        faults = tuple(out)
    reported = n - ret if ret is not None and 0 <= ret <= n else -1
    copied, beyond, clo, chi, same = measure(dst, src, fill, n, reported, faults)
    # Outside [dst, dst+len): only pages the run changed can differ from the initial window.
    #    Pages wholly inside the buffer have nothing outside it.
    outside = 0
    end = lo + n
    for i, page in raw.dst_pages:
        p0 = i * L.PAGE
        if p0 < lo:                                      # before the buffer
            b = min(p0 + L.PAGE, lo)
            outside += differing(page[:b - p0], initial[p0:b])
        if p0 + L.PAGE > end:                            # after it
            a = max(p0, end)
            outside += differing(page[a - p0:], initial[a:p0 + L.PAGE])
    retouched = len(records) > 1 and _retouched(records)
    violations: list[str] = []
    if ret is not None:
        violations = _judge(ret, n, copied, clo, chi, same, outside, records)
    return Outcome(state, ret, n, copied, beyond, outside, faults, retouched,
                   tuple(violations), raw.message, raw.ac_at_return, raw.insns)


def build_clear(raw: RawRun, bufs: Buffers, ret_reg: str, symbolize: Any) -> Outcome:
    """A clear_user-style run (``emu.kernel.conventions.CLEAR``): the user buffer is the
    source of a copy from user (``bufs.src``), and the oracle is a zero-fill.

    The first len − ret bytes must be 0 (``zero_with_missing`` when ret is 0,
    ``bytes_mismatch`` otherwise), 0 ≤ ret ≤ len (``out_of_range_return``), and nothing
    outside [addr, addr + len) may change (``write_outside_buffer``; the kernel window
    counts as outside).  ``bytes_copied`` is the length of the zeroed prefix and
    ``written_beyond`` the bytes changed past it: the clear_user() contract says only how
    many bytes could not be cleared, so bytes zeroed past the reported count are measured,
    not a violation.
    """
    n = bufs.length
    sa = bufs.src_align
    user = raw.src_bytes(sa, sa + n)
    fill = base_slice(SRC_WINDOW_BYTES, L.PAGE + sa, L.PAGE + sa + n)
    ret: int | None = None
    if raw.state is State.RETURNED:
        ret = _reg(raw.regs, "rax") & 0xFFFFFFFF if ret_reg == "eax" else _reg(raw.regs, ret_reg)
    faults = fault_list(raw, bufs, symbolize)
    zeros = bytes(n)
    guesses = [n - ret] if ret is not None and 0 <= ret <= n else []
    cleared = common_prefix(user, zeros, guesses + [f.offset for f in faults
                                                    if f.offset is not None])
    beyond = differing(user[cleared:], fill[cleared:])
    outside = outside_user_buffer(raw, bufs)
    violations: list[str] = []
    if ret is not None:
        if not 0 <= ret <= n:
            violations.append("out_of_range_return")
        elif cleared < n - ret:
            violations.append("zero_with_missing" if ret == 0 else "bytes_mismatch")
    if outside:
        violations.append("write_outside_buffer")
    retouched = len(raw.faults) > 1 and _retouched(raw.faults)
    return Outcome(raw.state, ret, n, cleared, beyond, outside, faults, retouched,
                   tuple(violations), raw.message, raw.ac_at_return, raw.insns)


def outside_user_buffer(raw: RawRun, bufs: Buffers, length: int | None = None) -> int:
    """Bytes a one-buffer helper changed outside its user buffer ([bufs.src, + ``length``),
    default the case's length): in the rest of the user window and anywhere in the kernel
    window."""
    n = bufs.length if length is None else length
    lo, hi = L.PAGE + bufs.src_align, L.PAGE + bufs.src_align + n
    out = 0
    for i, page in raw.src_pages:
        p0 = i * L.PAGE
        for a, b in ((p0, min(p0 + L.PAGE, lo)), (max(p0, hi), p0 + L.PAGE)):
            if a < b:
                out += differing(page[a - p0:b - p0], SRC_WINDOW_BYTES[a:b])
    initial = raw.dst_initial
    for i, page in raw.dst_pages:
        p0 = i * L.PAGE
        out += differing(page, initial[p0:min(p0 + L.PAGE, WINDOW_SPAN)])
    return out


def fault_list(raw: RawRun, bufs: Buffers, symbolize: Any) -> tuple[Fault, ...]:
    """The faults of a run as reported to users (offsets into the case's buffers)."""
    if not raw.faults:
        return ()
    user = bufs.src if bufs.direction == "from" else bufs.dst
    return tuple(_fault(r, bufs.src, user, bufs.length, symbolize) for r in raw.faults)


_RETURNED, _MC = State.RETURNED, FaultKind.MC   # an Enum member is slow to look up


def measure(dst: bytes, src: bytes, fill: bytes, n: int, reported: int,
            faults: tuple[Fault, ...] = ()) -> tuple[int, int, int, int, bool]:
    """The byte facts a copy is judged by, from the destination, source and initial fill
    (``n`` bytes each):

    * the common prefix of ``dst`` and ``src`` (the bytes copied);
    * how many bytes of ``dst`` from there differ from ``fill`` (written beyond);
    * with ``0 <= reported <= n`` (the count the routine reports as copied, else -1):
      [first, last+1) of the positions at or after ``reported`` where ``dst`` differs
      from ``fill`` ((n, n): none), and whether every such changed byte holds the
      source's value.

    Computed by the compiled helper when it is available (``emu_measure``), else in Python
    (``measure_python``); the two agree (tests/unit/test_fastpath.py).
    """
    f = _MEASURE_C[0] if _MEASURE_C else _measure_function()
    if f is None:
        return measure_python(dst, src, fill, n, reported, faults)
    try:
        out = _LOCAL.out
    except AttributeError:                # the first call in this thread
        out = _LOCAL.out = (ctypes.c_uint64 * 5)()
    f(dst, src, fill, n, reported, out)
    a, b, c, d, e = out[:]
    return a, b, c, d, e != 0


_LOCAL = threading.local()       # the result array of ``emu_measure``, one per thread
_MEASURE_C: list[Any] = []     # the compiled function (or None), looked up once


def _measure_function() -> Any:
    from emu.core import native
    f = native.measure_function()
    _MEASURE_C.append(f)
    return f


def measure_python(dst: bytes, src: bytes, fill: bytes, n: int, reported: int,
                   faults: tuple[Fault, ...] = ()) -> tuple[int, int, int, int, bool]:
    """``measure`` in Python (binary searches on C-speed compares)."""
    # Likely answers: the count the routine reports (exact for a correct routine), then the
    # offsets of the faults (where a copy stops).
    guesses = [reported] if reported >= 0 else []
    guesses += [f.offset for f in faults if f.offset is not None]
    copied = common_prefix(dst, src, guesses)
    # dst and fill are n bytes long: "ends with fill[copied:]" is "equal from copied on"
    # (compared through a memoryview: no copy of the tail).
    beyond = (0 if dst.endswith(memoryview(fill)[copied:])
              else differing(dst[copied:], fill[copied:]))
    lo = hi = n
    same = True
    if reported >= 0:
        lo, hi = _changed_after(dst, fill, reported, copied)
        if lo < hi:
            # All of [lo, hi) equal to the source is the usual case: one C-speed compare.
            same = dst[lo:hi] == src[lo:hi] or all(dst[i] == src[i] for i in range(lo, hi)
                                                   if dst[i] != fill[i])
        else:
            lo = hi = n
    return copied, beyond, lo, hi, same


def _reg(regs: tuple[tuple[str, int], ...], name: str) -> int:
    """``dict(regs)[name]`` without building the dict."""
    for k, v in regs:
        if k == name:
            return v
    raise KeyError(name)


def common_prefix(a: bytes, b: bytes, guesses: Iterable[int] = ()) -> int:
    """Length of the common prefix of two byte strings (binary search on C-speed compares).

    ``guesses`` are tried first: a right guess costs two compares, a wrong one narrows the
    search.
    """
    if a == b:
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    if a[:1] != b[:1]:                   # common when the first byte was never written
        return 0
    mb = memoryview(b)                   # probes slice b without copying it
    if a.startswith(mb[:hi]):
        return hi
    for g in guesses:
        if lo < g <= hi:
            if not a.startswith(mb[:g]):
                hi = g - 1
            elif g == hi or a[g] != b[g]:
                return g
            else:
                lo = g
    while lo < hi:                       # invariant: a[:lo] == b[:lo], a[:hi+1] != b[:hi+1]
        mid = (lo + hi + 1) // 2
        if a.startswith(mb[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def common_suffix(a: bytes, b: bytes) -> int:
    """Length of the common suffix of two equally long byte strings."""
    n = len(a)
    if a == b:
        return n
    if a[-1:] != b[-1:]:
        return 0
    lo, hi = 0, n
    mb = memoryview(b)
    while lo < hi:                       # invariant: a[n-lo:] == b[n-lo:]
        mid = (lo + hi + 1) // 2
        if a.endswith(mb[n - mid:]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def diff_span(a: bytes, b: bytes) -> tuple[int, int]:
    """[first, last+1) of the positions where two equally long byte strings differ."""
    first = common_prefix(a, b)
    if first == len(a):
        return first, first
    return first, len(a) - common_suffix(a, b)


def differing(a: bytes, b: bytes) -> int:
    """Number of positions where two equally long byte strings differ."""
    lo, hi = diff_span(a, b)
    return sum(x != y for x, y in zip(a[lo:hi], b[lo:hi]))


def _judge(ret: int, n: int, copied: int, clo: int, chi: int, same: bool, outside: int,
           faults: tuple[FaultRecord, ...]) -> list[str]:
    out: list[str] = []
    if not 0 <= ret <= n:
        out.append("out_of_range_return")
    else:
        reported = n - ret
        if ret == 0 and copied < n:
            out.append("zero_with_missing")
        elif copied < reported:
            out.append("bytes_mismatch")
        if clo < chi:       # bytes past the reported count changed (``measure``)
            out.append("modified_past_reported" if same else "garbage_past_reported")
        if ret == n and n > 0 and copied > 0:
            out.append("claimed_nothing")
    if outside:
        out.append("write_outside_buffer")
    if len(faults) > 1:
        lines = [r.event.address & ~(L.LINE - 1) for r in faults
                 if r.event.kind is _MC]
        if len(lines) != len(set(lines)):
            out.append("poison_consumed_twice")
    return out


def _changed_after(dst: bytes, fill: bytes, start: int, copied: int) -> tuple[int, int]:
    """[first, last+1) of the positions at or after ``start`` where dst differs from its
    initial fill (empty if none).  ``copied`` (the common prefix with the source) is where
    the routine most likely stopped writing.

    The usual case is answered by two byte compares and one tail compare: dst changed at
    ``start`` and at ``copied - 1``, and not at all from ``copied`` on.
    """
    if (start < copied and dst[start] != fill[start] and dst[copied - 1] != fill[copied - 1]
            and dst.endswith(memoryview(fill)[copied:])):     # equal lengths: equal tails
        return start, copied
    lo, hi = diff_span(dst[start:], fill[start:])
    return start + lo, start + hi


def _retouched(faults: tuple[FaultRecord, ...]) -> bool:
    """Did the routine go back to an address that had already faulted (a tail retry)?"""
    seen: set[tuple[str, int]] = set()
    for r in faults:
        kind = r.event.kind
        unit = L.LINE if kind is _MC else L.PAGE
        key = (kind._value_, r.event.address & ~(unit - 1))   # the value: Enums hash slowly
        if key in seen:
            return True
        seen.add(key)
    return False


#: Per-resolution parts of a ``Fault`` (``build``): (id(resolution), rip) → (resolution, symbolize,
#: kind value, where, handler, fixup, fixup_where, action, note, FaultKind).  The resolution is kept so that
#: its id is not reused while the entry lives; resolutions the kernel memoises make this a
#: lookup per fault instead of two symbol look-ups, a type name and the action.
_TEMPLATES: Bounded[tuple[int, int], tuple[Any, ...]] = Bounded(4096, "outcome.templates")


def _fault(r: FaultRecord, src: int, user: int, length: int, symbolize: Any) -> Fault:
    """The ``Fault`` of one record; ``src`` and ``user`` are the case's source and user
    buffer addresses, ``length`` its length (``build`` inlines the same)."""
    ev, res = r.event, r.resolution
    key = (id(res), ev.rip)              # FaultKind (an Enum) hashes slowly: compared below
    t = _TEMPLATES.get(key)
    if t is None or t[0] is not res or t[1] != symbolize or t[9] is not ev.kind:
        t = _template(ev.kind, ev.rip, res, symbolize)
        _TEMPLATES[key] = t
    base = src if ev.kind is FaultKind.MC else user
    address = ev.address
    offset = address - base if base <= address < base + max(length, 1) else None
    return Fault(t[2], ev.rip, t[3], address, offset, t[4], t[5], t[6], t[7], t[8])


def _template(kind: FaultKind, rip: int, res: Any, symbolize: Any) -> tuple[Any, ...]:
    entry = res.entry if isinstance(res.entry, ExtableEntry) else None
    if isinstance(res, Redirect):
        action, fixup = "fixup", res.rip
    else:
        assert isinstance(res, Halt)
        action, fixup = res.state.value, None
    return (res, symbolize, kind.value, symbolize(rip), entry.type_name if entry else None,
            fixup, symbolize(fixup) if fixup is not None else None, action, res.note, kind)
