"""get_user helpers (getuser.S): address in rax, value out in rdx, 0 / -EFAULT in eax
(kernel-facts §4b), so they have their own small runner next to the copy routines'.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.build.detect import GET_USER_SIZES
from emu.build.target import Target
from emu.core.machine import Buffers, Call, State
from emu.errors import UsageError
from emu.kernel import outcome
from emu.kernel.outcome import Fault

EFAULT = 14

@dataclass(frozen=True, slots=True)
class GetUserResult:
    """One call of a __get_user_N helper.

    ``err`` is eax as a signed int (0 or -EFAULT), ``value`` rdx masked to the access size,
    ``expected`` the user bytes at the address.  ``ok`` holds when the helper either read the
    right value and returned 0, or returned -EFAULT with rdx cleared.
    """

    name: str
    state: State
    err: int | None
    value: int | None
    expected: int
    faults: tuple[Fault, ...]
    message: str = ""

    @property
    def verdict(self) -> str:
        if self.state is not State.RETURNED:
            return self.state.value
        if self.err == 0:
            return "ok" if self.value == self.expected else "wrong_value"
        if self.err == -EFAULT:
            return "ok" if self.value == 0 else "efault_with_value"
        return "bad_error_code"

    def to_json(self) -> dict[str, object]:
        return {"routine": self.name, "state": self.state.value, "err": self.err,
                "value": None if self.value is None else hex(self.value),
                "expected": hex(self.expected), "verdict": self.verdict,
                "message": self.message, "faults": [f.to_json() for f in self.faults]}


def is_get_user(name: str) -> bool:
    return name in GET_USER_SIZES


def run_get_user(t: Target, name: str, bufs: Buffers) -> GetUserResult:
    """Call ``name`` with rax = the user source address of ``bufs`` (direction "from")."""
    if bufs.direction != "from":
        raise UsageError(f"{name} reads user memory: --direction must be 'from'")
    size = GET_USER_SIZES[name]
    if bufs.length < size:
        raise UsageError(f"{name} reads {size} bytes: --len must be at least {size}")
    entry = t.image.symbol(name).addr
    raw = t.machine.run(Call(entry, (("rax", bufs.src),)), bufs, t.kernel)
    o = outcome.build(raw, bufs, "eax", t.image.symbolize)
    regs = dict(raw.regs)
    src = raw.src_window[bufs.src_align:bufs.src_align + size]
    err = value = None
    if raw.state is State.RETURNED:
        e = regs["rax"] & 0xFFFFFFFFFFFFFFFF
        err = e - (1 << 64) if e >> 63 else e
        value = regs["rdx"] & ((1 << (8 * size)) - 1)
    return GetUserResult(name, raw.state, err, value, int.from_bytes(src, "little"),
                         o.faults, raw.message)


