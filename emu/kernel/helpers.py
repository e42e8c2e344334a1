"""The oracles of the one-value helpers: __get_user_N and __put_user_N.

Conventions (``emu.kernel.conventions``): get_user takes the user address in rax and returns
eax = 0 / -EFAULT with the value in rdx (getuser.S; kernel-facts §4b); put_user takes the
value in rax and the user address in rcx and returns ecx = 0 / -EFAULT (putuser.S).  The
user buffer is where a copy from user has its source (``Buffers.src``).

* get_user: ``ok`` when eax = 0 and rdx holds the user bytes, or eax = -EFAULT and rdx = 0
  (the handler's EX_FLAG_CLEAR_DX / the fixup's ``xor %edx,%edx``).
* put_user: ``ok`` when ecx = 0 and the user bytes are the value, or ecx = -EFAULT and the
  user bytes are unchanged (x86 writes nothing on a faulting store).

Either helper writing anything outside its ``size`` user bytes is ``write_outside_buffer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emu.core.machine import Buffers, RawRun, State
from emu.core.records import SRC_WINDOW_BYTES
from emu.core import layout as L
from emu.kernel.conventions import GET_USER, PUT_USER, Convention
from emu.kernel.outcome import Fault, fault_list, outside_user_buffer

EFAULT = 14


@dataclass(frozen=True, slots=True)
class HelperResult:
    """One call of a get_user / put_user helper.

    ``err`` is the result register as a signed int (0 or -EFAULT).  For get_user ``value`` is
    rdx masked to the access size and ``expected`` the user bytes at the address; for
    put_user ``value`` is what the user bytes hold after the call and ``expected`` the value
    passed in rax.  ``before`` is the user bytes before the call (put_user).
    """

    name: str
    convention: Convention
    size: int
    state: State
    err: int | None
    value: int | None
    expected: int
    faults: tuple[Fault, ...]
    message: str = ""
    before: int | None = None
    written_outside: int = 0

    @property
    def verdict(self) -> str:
        if self.state is not State.RETURNED:
            return self.state.value
        if self.written_outside:
            return "write_outside_buffer"
        if self.convention is PUT_USER:
            if self.err == 0:
                return "ok" if self.value == self.expected else "wrong_value"
            if self.err == -EFAULT:
                return "ok" if self.value == self.before else "efault_with_write"
            return "bad_error_code"
        if self.err == 0:
            return "ok" if self.value == self.expected else "wrong_value"
        if self.err == -EFAULT:
            return "ok" if self.value == 0 else "efault_with_value"
        return "bad_error_code"

    @property
    def mc_count(self) -> int:
        return sum(1 for f in self.faults if f.kind == "mc")

    @property
    def pf_count(self) -> int:
        return sum(1 for f in self.faults if f.kind == "pf")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "routine": self.name, "state": self.state.value, "err": self.err,
            "value": None if self.value is None else hex(self.value),
            "expected": hex(self.expected), "verdict": self.verdict,
            "message": self.message, "faults": [f.to_json() for f in self.faults]}
        if self.convention is not GET_USER:
            out.update(convention=self.convention.name, size=self.size,
                       before=None if self.before is None else hex(self.before),
                       written_outside=self.written_outside)
        return out


def put_value(bufs: Buffers, size: int) -> int:
    """The value a put_user case stores: every byte differs from the user byte it replaces
    (the complement of the source pattern there), so a store that did not happen shows."""
    lo = L.PAGE + bufs.src_align
    return int.from_bytes(bytes(b ^ 0xFF for b in SRC_WINDOW_BYTES[lo:lo + size]), "little")


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def judge(raw: RawRun, bufs: Buffers, name: str, conv: Convention, size: int,
          symbolize: Any) -> HelperResult:
    """Measure and judge one helper call.

    Args:
        raw: what the machine observed.
        bufs: the case (the user buffer is its source, ``size`` bytes at ``bufs.src``).
        name: the helper's symbol.
        conv: ``GET_USER`` or ``PUT_USER``.
        size: the access size.
        symbolize: address → "symbol+off".
    """
    regs = dict(raw.regs)
    sa = bufs.src_align
    user = int.from_bytes(raw.src_bytes(sa, sa + size), "little")
    before = int.from_bytes(SRC_WINDOW_BYTES[L.PAGE + sa:L.PAGE + sa + size], "little")
    faults = fault_list(raw, bufs, symbolize)
    outside = outside_user_buffer(raw, bufs, size)
    err = value = None
    if raw.state is State.RETURNED:
        err = _signed32(regs[conv.result.replace("e", "r", 1)])
    if conv is GET_USER:
        if err is not None:
            assert conv.value is not None
            value = regs[conv.value] & ((1 << (8 * size)) - 1)
        return HelperResult(name, conv, size, raw.state, err, value, user, faults, raw.message,
                            written_outside=outside)
    return HelperResult(name, conv, size, raw.state, err, user if err is not None else None,
                        put_value(bufs, size), faults, raw.message, before, outside)
