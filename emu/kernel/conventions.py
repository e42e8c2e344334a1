"""Calling conventions of the user-access routines: one record per convention, and the table
of the routines emu knows, each with its convention.

A routine's convention says what the caller puts in which register, which register holds the
result (and how wide it is), whether the caller opens the user-access window (STAC) around
the call, which registers the caller presets, and which oracle judges the result.  Facts:

* copy routines ≤ v6.3 (``copy``): copy_user_generic()'s alternative_call_2 in uaccess_64.h,
  output ``"=a"``, inputs rdi/rsi/rdx; each routine does its own ASM_STAC (kernel-facts §4a).
* copy_mc (``copy_mc``): copy_mc_to_user() in copy_mc.c opens the window around
  copy_mc_fragile() / copy_mc_enhanced_fast_string(); rdi/rsi/rdx in, eax out (§4b).
* rep_movs_alternative (``rep_movs``, v6.4+): rdi/rsi/rcx in, rcx out; the inline
  copy_user_generic() does stac()/clac() around the call (§4a).
* emu's ``copy_user_generic`` (``copy_inline``): the bundled era-F stand-in for that inline
  caller: the same registers, but it opens the window itself (asm/era-F.S).
* clear_user (``clear``): 6.1's clear_user_original / _rep_good / _erms and 6.4+'s
  rep_stos_alternative (arch/x86/lib/clear_page_64.S): address in rdi, length in rcx, result
  (bytes not cleared) in rcx.  __clear_user() in uaccess_64.h (6.1 and 6.12 alike) does
  stac() before the call and passes ``"a" (0)``: rax = 0 is the byte ``rep stos`` stores.
* __put_user_N (``put_user``, arch/x86/lib/putuser.S): value in rax, user address in rcx,
  ecx = 0 or -EFAULT; rbx is clobbered; the helper does its own ASM_STAC.
* __get_user_N (``get_user``, arch/x86/lib/getuser.S): user address in rax, the value out in
  rdx, eax = 0 or -EFAULT; the helper does its own ASM_STAC (§4b).

Copy-style routines take two buffers (``--direction`` says which one is user memory); the
others take one user buffer, which emu places where a copy from user has its source (so
``--src-align``, ``--poison`` and ``--unmapped`` address it).

Data only: importing this module loads neither Unicorn nor the assembler.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from emu.errors import UsageError


class Arg(Enum):
    """What the caller puts in an argument register."""

    DST = "dst"
    SRC = "src"
    LEN = "len"
    USER = "addr"
    VALUE = "value"


class Oracle(Enum):
    """Which rule judges a routine's result (``emu.kernel.outcome`` / ``emu.kernel.helpers``)."""

    COPY = "the raw_copy_{from,to}_user() contract of include/linux/uaccess.h"
    CLEAR = "zero-fill: the first len - ret user bytes are 0, nothing outside [addr, addr+len) " \
            "is written, 0 <= ret <= len"
    PUT_USER = "the value is stored exactly and ecx = 0; or ecx = -EFAULT and nothing is written"
    GET_USER = "eax = 0 and rdx = the user value; or eax = -EFAULT and rdx = 0"


@dataclass(frozen=True, slots=True)
class Convention:
    """How one kind of routine is called and judged.

    Attributes:
        name: the ``--convention`` value.
        summary: one line for help texts and refusals.
        args: (register, what goes in it), in the order the caller sets them.
        result: the register holding the result ("eax", "ecx" or "rcx").
        signed: the result is 0 / -errno (read as a signed 32-bit value), not a count.
        value: the register that carries a loaded value out (get_user's rdx), if any.
        caller_stac: the caller executes STAC (EFLAGS.AC set) before the call.
        presets: registers the caller sets besides the arguments (clear's rax = 0).
        oracle: the rule that judges the result.
        noun: what the routine does to the bytes it reports ("copied", "cleared", ...).
        sized: the routine moves one value of a fixed size (1, 2, 4 or 8 bytes).
    """

    name: str
    summary: str
    args: tuple[tuple[str, Arg], ...]
    result: str
    oracle: Oracle
    signed: bool = False
    value: str | None = None
    caller_stac: bool = False
    presets: tuple[tuple[str, int], ...] = ()
    noun: str = "copied"
    sized: bool = False

    @property
    def result_bits(self) -> int:
        return 32 if self.result.startswith("e") else 64

    @property
    def two_buffers(self) -> bool:
        """A copy: a source and a destination, one of them user memory (``--direction``)."""
        return self.oracle is Oracle.COPY

    def reg_of(self, what: Arg) -> str | None:
        """The register that carries ``what``, if the convention has it."""
        return next((r for r, a in self.args if a is what), None)

    def registers(self, *, dst: int, src: int, length: int, user: int,
                  value: int = 0) -> tuple[tuple[str, int], ...]:
        """The registers the caller sets: the arguments, then the presets."""
        values = {Arg.DST: dst, Arg.SRC: src, Arg.LEN: length, Arg.USER: user,
                  Arg.VALUE: value}
        return tuple((r, values[a]) for r, a in self.args) + self.presets

    def describe(self) -> str:
        """``rdi=dst, rsi=src, rdx=len -> eax: bytes not copied``: the registers."""
        parts = [f"{r}={a.value}" for r, a in self.args]
        parts += [f"{r}={v}" for r, v in self.presets]
        if self.signed:
            out = f"{self.result}: 0/-EFAULT" + (f", {self.value}: value" if self.value else "")
        else:
            out = f"{self.result}: bytes not {self.noun}"
        return ", ".join(parts) + " -> " + out + (", caller STAC" if self.caller_stac else "")


_COPY_ARGS = (("rdi", Arg.DST), ("rsi", Arg.SRC))

COPY = Convention("copy", "copy_user_generic() up to v6.3: (dst, src, len) -> bytes not copied",
                  _COPY_ARGS + (("rdx", Arg.LEN),), "eax", Oracle.COPY)
COPY_MC = Convention("copy_mc", "copy_mc_to_user(): (dst, src, len) in the caller's STAC window",
                     _COPY_ARGS + (("rdx", Arg.LEN),), "eax", Oracle.COPY, caller_stac=True)
REP_MOVS = Convention("rep_movs", "rep_movs_alternative (v6.4+): len and result in rcx, in the "
                      "caller's STAC window", _COPY_ARGS + (("rcx", Arg.LEN),), "rcx",
                      Oracle.COPY, caller_stac=True)
COPY_INLINE = Convention("copy_inline", "emu's stand-in for the v6.4+ inline "
                         "copy_user_generic(): len and result in rcx, STAC inside",
                         _COPY_ARGS + (("rcx", Arg.LEN),), "rcx", Oracle.COPY)
CLEAR = Convention("clear", "__clear_user(): (addr, len) -> bytes not cleared, rax = 0, in the "
                   "caller's STAC window", (("rdi", Arg.USER), ("rcx", Arg.LEN)), "rcx",
                   Oracle.CLEAR, caller_stac=True, presets=(("rax", 0),), noun="cleared")
PUT_USER = Convention("put_user", "__put_user_N: value in rax, address in rcx -> ecx 0 / -EFAULT",
                      (("rax", Arg.VALUE), ("rcx", Arg.USER)), "ecx", Oracle.PUT_USER,
                      signed=True, noun="stored", sized=True)
GET_USER = Convention("get_user", "__get_user_N: address in rax -> eax 0 / -EFAULT, value in rdx",
                      (("rax", Arg.USER),), "eax", Oracle.GET_USER, signed=True, value="rdx",
                      noun="read", sized=True)

#: Every convention, by ``--convention`` name.
CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    COPY, COPY_MC, REP_MOVS, COPY_INLINE, CLEAR, PUT_USER, GET_USER)}
#: The sizes a sized convention accepts.
SIZES = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class Routine:
    """A routine to call: its symbol, its convention and, for a sized one, the access size.

    ``size`` None on a sized convention means "the case's --len" (a routine emu does not know
    by name).
    """

    name: str
    convention: Convention = COPY
    size: int | None = None

    @property
    def len_reg(self) -> str:
        """The register that carries the length (copy and clear), else the first argument's."""
        return self.convention.reg_of(Arg.LEN) or self.convention.args[0][0]

    @property
    def ret_reg(self) -> str:
        return self.convention.result

    @property
    def caller_stac(self) -> bool:
        return self.convention.caller_stac


def _sized(prefix: str, conv: Convention) -> dict[str, Routine]:
    return {f"{prefix}{mid}{n}": Routine(f"{prefix}{mid}{n}", conv, n)
            for mid in ("", "nocheck_") for n in SIZES}


#: The routines emu knows, by symbol name: the one place a routine's convention is decided.
KNOWN: dict[str, Routine] = {
    **{n: Routine(n, COPY) for n in ("copy_user_generic_unrolled", "copy_user_generic_string",
                                     "copy_user_enhanced_fast_string", "__copy_user_nocache",
                                     "copy_user_fast_string")},
    **{n: Routine(n, COPY_MC) for n in ("copy_mc_fragile", "copy_mc_enhanced_fast_string",
                                        "__memcpy_mcsafe")},
    "rep_movs_alternative": Routine("rep_movs_alternative", REP_MOVS),
    "copy_user_generic": Routine("copy_user_generic", COPY_INLINE),
    **{n: Routine(n, CLEAR) for n in ("clear_user_original", "clear_user_rep_good",
                                      "clear_user_erms", "rep_stos_alternative")},
    **_sized("__put_user_", PUT_USER),
    **_sized("__get_user_", GET_USER),
    # emu's own fault-in loads for the write(2) model (asm/getuser.S): like __get_user_1
    **{n: Routine(n, GET_USER, 1) for n in ("emu_fault_in_ua", "emu_fault_in_default",
                                            "emu_fault_in_efault_reg")},
}


def known_list() -> str:
    """The conventions, as a refusal or a help text names them."""
    return ", ".join(CONVENTIONS)


def get_convention(name: str) -> Convention:
    """The convention named ``name``.

    Raises:
        UsageError: not a convention.
    """
    c = CONVENTIONS.get(name.strip().lower())
    if c is None:
        raise UsageError(f"unknown --convention '{name}' (known: {known_list()})")
    return c


def routine(name: str, convention: str | None = None) -> Routine:
    """The routine ``name``, called by its known convention, else by ``convention``.

    Raises:
        UsageError: emu does not know ``name`` and no convention is given (the message names
            the conventions); or ``convention`` contradicts the one emu knows for ``name``.
    """
    known = KNOWN.get(name)
    conv = get_convention(convention) if convention is not None else None
    if known is not None:
        if conv is not None and conv is not known.convention:
            raise UsageError(f"{name} takes the {known.convention.name} convention, not "
                             f"--convention {conv.name} ({known.convention.summary})")
        return known
    if conv is None:
        raise UsageError(f"emu does not know how to call '{name}': say how with --convention "
                         f"({known_list()})")
    return Routine(name, conv)

