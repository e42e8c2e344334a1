"""Which kernel era a real arch/x86/lib source belongs to, read from the file itself.

A kernel file does not say which release it came from, but its text carries the marks of the
changes that matter to emu (kernel-facts.md §3, §4, §5a, §6a):

* ``rep_movs_alternative`` defined: the v6.4+ rewrite (era F, EX_TYPE_UACCESS everywhere);
* ``_ASM_EXTABLE_CPY`` on the copy instructions: v5.10 or later (278b917f), and then the
  place of the ``X86_TRAP_MC`` test in ``.Lcopy_user_handle_tail`` decides the era: after
  ``movl %edx,%ecx`` is the 2020 "pretend success" code (era C), before it is the 2021
  re-add (era E, 3376136300a0), and no test at all is the v5.16 revert (era D);
* only ``_ASM_EXTABLE_UA`` / ``_ASM_EXTABLE``: before v5.10 (era A);
* ``.fixup`` sections existed until v5.16 and ``RET`` replaced ``ret`` in v5.17 (straight-line
  speculation series); these two cross-check the choice and date the copy_mc / getuser files.
  Stable trees blur this: Debian's 5.10.223 has ``RET`` (backported) and still ``.fixup``, and
  its getuser.S differs from 6.1's only by objtool annotations, so such a file is reported
  with the later era unless ``--era`` says otherwise;
* copy_mc_64.S: ``_ASM_EXTABLE_FAULT`` up to v5.15, ``EX_TYPE_DEFAULT_MCE_SAFE`` from v5.16;
* getuser.S: plain ``_ASM_EXTABLE`` (EX_TYPE_DEFAULT) on the load in 6.4-6.7 (b19b74bc99b1),
  ``_ASM_EXTABLE_UA`` before and after.

Comments are removed before matching, so a stale comment (era D keeps "Don't try to copy
the tail if machine check happened") does not count.  The result is data: ``Detection``
names the era whose extable encoding, EX_TYPE layout and #MC severity rules apply, the
routines the file defines, and the evidence, so the CLI can show why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emu.caching import Bounded
from emu.kernel.conventions import CLEAR, GET_USER, KNOWN, PUT_USER, Routine
from emu.kernel.eras import Era, SourceMarks, default_era, get_era, sniff
from emu.errors import UsageError

#: The symbols that make a file a getuser.S / putuser.S / clear_page_64.S.
GET_USER_NAMES = frozenset(n for n, r in KNOWN.items()
                           if r.convention is GET_USER and n.startswith("__get_user"))
PUT_USER_NAMES = frozenset(n for n, r in KNOWN.items() if r.convention is PUT_USER)
CLEAR_NAMES = frozenset(n for n, r in KNOWN.items() if r.convention is CLEAR)


@dataclass(frozen=True, slots=True)
class Detection:
    """What a kernel source file is and which era's rules apply to it.

    Attributes:
        kind: "copy_user", "copy_mc", "getuser", "putuser", "clear_user" or "unknown".
        era: the era whose encoding, layout and severity rules apply.
        routines: the routines emu knows (``emu.kernel.conventions.KNOWN``) that the file
            defines, in file order, whatever their convention.
        evidence: one phrase per fact the decision rests on.
        forced: True when ``--era`` chose the era instead of the file.
    """

    kind: str
    era: Era
    routines: tuple[Routine, ...]
    evidence: tuple[str, ...]
    forced: bool = False

    @property
    def get_user(self) -> tuple[str, ...]:
        """The get_user-convention helpers the file defines."""
        return tuple(r.name for r in self.routines if r.convention is GET_USER)

    def describe(self) -> str:
        how = "forced by --era" if self.forced else "; ".join(self.evidence)
        return f"{self.kind} file, era {self.era.key} ({self.era.versions}): {how}"

    def select_routine(self, cpu: frozenset[str]) -> Routine:
        """The routine the kernel would call for this CPU, among those the file defines.

        Raises:
            UsageError: on this CPU the kernel calls nothing of this file (an inline ``rep
                stosb`` at the call site), or the file holds nothing emu knows how to call.
        """
        names = {r.name: r for r in self.routines}
        if self.kind == "copy_user" and not self.era.modern:
            for feat, name in (("ERMS", "copy_user_enhanced_fast_string"),
                               ("REP_GOOD", "copy_user_generic_string")):
                if feat in cpu and name in names:
                    return names[name]
            if "copy_user_generic_unrolled" in names:
                return names["copy_user_generic_unrolled"]
        if self.kind == "copy_mc":
            if "ERMS" in cpu and "copy_mc_enhanced_fast_string" in names:
                return names["copy_mc_enhanced_fast_string"]
        if self.kind == "clear_user":
            return _clear_user_choice(names, cpu)
        for pref in ("copy_user_generic", "rep_movs_alternative", "copy_mc_fragile"):
            if pref in names:
                return names[pref]
        if self.routines:
            return self.routines[0]
        raise UsageError(f"no routine emu knows how to call in this {self.kind} file "
                         "(name one with --routine, and its --convention)")


def _clear_user_choice(names: dict[str, Routine], cpu: frozenset[str]) -> Routine:
    """What __clear_user() calls (uaccess_64.h): in 6.1 an ALTERNATIVE_3 whose later
    alternatives win — clear_user_original without REP_GOOD, clear_user_rep_good without
    ERMS, clear_user_erms without FSRM, else an inline ``rep stosb``; from 6.4 an
    ALTERNATIVE calling rep_stos_alternative without FSRS, else the inline ``rep stosb``."""
    if "rep_stos_alternative" in names:
        choice, inline = (None, "FSRS") if "FSRS" in cpu else ("rep_stos_alternative", "")
    elif "REP_GOOD" not in cpu:
        choice, inline = "clear_user_original", ""
    elif "ERMS" not in cpu:
        choice, inline = "clear_user_rep_good", ""
    elif "FSRM" not in cpu:
        choice, inline = "clear_user_erms", ""
    else:
        choice, inline = None, "FSRM"
    if choice is None:
        raise UsageError(f"on a CPU with {inline} __clear_user() is an inline rep stosb at the "
                         "call site, not a routine of this file: name one with --routine")
    if choice not in names:
        raise UsageError(f"__clear_user() calls {choice} on this CPU, which this file does not "
                         "define: name a routine with --routine")
    return names[choice]


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINED = re.compile(r"SYM_(?:FUNC|CODE)_START(?:_LOCAL|_WEAK|_ALIAS|_NOALIGN|_LOCAL_NOALIGN)*"
                      r"\(\s*([.\w]+)\s*\)|^\s*(?:ENTRY|GLOBAL)\(\s*([.\w]+)\s*\)|"
                      r"^\s*([A-Za-z_.][\w.]*):", re.M)


def strip_comments(text: str) -> str:
    """The source without C comments (line structure kept, so offsets map to lines)."""
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def defined_symbols(text: str) -> list[str]:
    """Functions and labels a source defines, in order (comments ignored)."""
    out: list[str] = []
    for m in _DEFINED.finditer(strip_comments(text)):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in out:
            out.append(name)
    return out


def _body(code: str, label: str) -> str:
    """Text from ``label:`` (or its SYM_CODE_START) to the next SYM_*_END or SYM_*_START."""
    m = re.search(rf"(?:SYM_CODE_START(?:_LOCAL)?\(\s*{re.escape(label)}\s*\)|^\s*"
                  rf"{re.escape(label)}:)", code, re.M)
    if m is None:
        return ""
    end = re.search(r"SYM_(?:CODE|FUNC)_(?:END|START)\w*\(", code[m.end():])
    return code[m.end():m.end() + end.start()] if end else code[m.end():]


def marks(text: str, *, name: str = "input.S") -> SourceMarks:
    """The facts era marks test, read off a source (comments ignored)."""
    code = strip_comments(text)
    has = frozenset(defined_symbols(text))
    if has & {"rep_movs_alternative", "copy_user_generic_unrolled",
              "copy_user_enhanced_fast_string", ".Lcopy_user_handle_tail",
              "copy_user_handle_tail", "copy_user_fast_string"}:
        kind = "copy_user"
    elif has & {"copy_mc_fragile", "copy_mc_enhanced_fast_string", "__memcpy_mcsafe"}:
        kind = "copy_mc"
    elif has & GET_USER_NAMES:
        kind = "getuser"
    elif has & PUT_USER_NAMES:
        kind = "putuser"
    elif has & CLEAR_NAMES:
        kind = "clear_user"
    else:
        kind = "unknown"
    tail = _body(code, ".Lcopy_user_handle_tail") or _body(code, "copy_user_handle_tail")
    mc = re.search(r"X86_TRAP_MC|\$18\b", tail)
    mov = re.search(r"movl\s+%edx\s*,\s*%ecx", tail)
    mc_test = ("none" if mc is None else
               "before_mov" if mov is not None and mc.start() < mov.start() else "other")
    loads = re.findall(r"_ASM_EXTABLE(_UA)?\s*\(", code)
    return SourceMarks(
        kind=kind, defines=has, code=code,
        cpy_extable=bool(re.search(r"_ASM_EXTABLE_CPY\b|EX_TYPE_COPY\b", code)),
        mc_test=mc_test,
        fixup=bool(re.search(r"\.section\s+\.fixup|\.pushsection\s+\"?\.fixup", code)),
        big_ret=bool(re.search(r"^\s*(?:\d+:\s*)?RET\b", code, re.M)),
        small_ret=bool(re.search(r"^\s*(?:\d+:\s*)?ret[lq]?\b", code, re.M)),
        mce_safe=bool(re.search(r"EX_TYPE_DEFAULT_MCE_SAFE", code)),
        plain_loads=bool(loads) and not any(loads),
        modern_getuser=bool(re.search(r"RUNTIME_CONST_PTR|\.macro\s+UACCESS|check_range",
                                      code)))


#: Detections by (text, name, forced): reading a file's marks costs ~1 ms of regular
#: expressions, and a sweep resolves the same text spec for every run it makes.
_DETECTED: Bounded[tuple[str, str, str | None], Detection] = Bounded(64, "detect.detections")


def detect(text: str, *, name: str = "input.S", forced: str | None = None) -> Detection:
    """Decide which era's rules apply to a kernel source: the era whose marks it carries.

    Args:
        text: the .S source.
        name: its file name (for messages).
        forced: an era key given with ``--era``; the file still supplies the routines.

    Raises:
        UsageError: ``forced`` is not an era key.
    """
    key = (text, name, forced)
    got = _DETECTED.get(key)
    if got is None:
        got = _DETECTED[key] = _detect(text, name, forced)
    return got


def _detect(text: str, name: str, forced: str | None) -> Detection:
    m = marks(text, name=name)
    ev: list[str] = []
    if m.fixup:
        ev.append(".fixup section (<= v5.16)")
    if m.big_ret:
        ev.append("RET macro (v5.17+, or a stable tree with the SLS backport)")
    elif m.small_ret:
        ev.append("plain ret (<= v5.16)")
    hit = sniff(m.kind, m) if m.kind != "unknown" else None
    if hit is not None:
        era, why = hit
        ev.insert(0, why)
    else:
        era = default_era()
        ev.insert(0, f"no kernel copy routine recognised; era {era.key} rules by default"
                  if m.kind == "unknown" else
                  f"a {m.kind} file no era's marks match; era {era.key} rules by default")
    if forced is not None:
        era = get_era(forced)
    syms = defined_symbols(text)
    routines = tuple(KNOWN[s] for s in syms if s in KNOWN)
    return Detection(m.kind, era, routines, tuple(ev), forced is not None)
