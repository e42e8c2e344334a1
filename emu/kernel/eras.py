"""The era catalog: one record per kernel era of the user-copy fixups.

An era is one ``Era`` record and nothing else in the code: its bundled source (asm/), its
``__ex_table`` encoding and EX_TYPE numbering, its #MC severity rules, its routines and the
ALTERNATIVE choice copy_user_generic() made, the write(2) caller model around the copy
(``emu.kernel.writemodel``), and the marks by which a real source file or built image is
recognised as belonging to it.  Facts: kernel-facts.md §3, §4a, §5a, §6a, §7, §8.

Adding an era: append its record to ``CATALOG``, add ``asm/<source>`` and its golden rows
(``make golden``).  ``tests/eras/test_new_era.py`` does exactly that in a scratch copy.

Data only: importing this module loads neither Unicorn nor the assembler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emu.errors import UsageError
from emu.kernel import writemodel as wm
from emu.kernel.conventions import KNOWN, Routine
from emu.kernel.cpus import FEATURES, MODELS, PRESETS
from emu.kernel.extable import Encoding, ExType
from emu.kernel.severity import Severity
from emu.paths import ASM_DIR


LEGACY = tuple(KNOWN[n] for n in ("copy_user_generic_unrolled", "copy_user_generic_string",
                                   "copy_user_enhanced_fast_string", "__copy_user_nocache"))
MODERN = tuple(KNOWN[n] for n in ("copy_user_generic", "rep_movs_alternative"))


# ---- how a real file shows its era ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SourceMarks:
    """What ``emu.build.detect`` reads off a kernel source; era marks test these.

    Attributes:
        kind: "copy_user", "copy_mc", "getuser", "putuser", "clear_user" or "unknown" (from
            the symbols it defines).
        defines: functions and labels the file defines.
        code: the text without comments (a new era may test anything in it).
        cpy_extable: ``_ASM_EXTABLE_CPY`` / ``EX_TYPE_COPY`` entries (v5.10+).
        mc_test: where handle_tail tests ``X86_TRAP_MC``: "none", "before_mov" (before
            ``movl %edx,%ecx``) or "other".
        fixup: a ``.fixup`` section (≤ v5.16).
        big_ret / small_ret: the ``RET`` macro (v5.17+ or an SLS backport) / plain ``ret``.
        mce_safe: ``EX_TYPE_DEFAULT_MCE_SAFE`` entries (copy_mc, v5.16+).
        plain_loads: getuser's loads carry plain ``_ASM_EXTABLE`` (EX_TYPE_DEFAULT).
        modern_getuser: getuser.S of v6.x shape (runtime-const / UACCESS macro / check_range).
    """

    kind: str
    defines: frozenset[str]
    code: str = field(repr=False)
    cpy_extable: bool = False
    mc_test: str = "none"
    fixup: bool = False
    big_ret: bool = False
    small_ret: bool = False
    mce_safe: bool = False
    plain_loads: bool = False
    modern_getuser: bool = False


@dataclass(frozen=True, slots=True)
class ImageMarks:
    """What ``emu.build.objects`` reads off a built .o or vmlinux; era marks test these."""

    handler_encoding: bool          # third __ex_table word points at ex_handler_* (≤ v5.15)
    types: frozenset[ExType]
    sections: frozenset[str]
    symbols: frozenset[str]


@dataclass(frozen=True, slots=True)
class Mark:
    """One way a file shows it belongs to an era.

    ``kind`` is the source kind the mark applies to (``SourceMarks.kind``), or
    "image" for built files.  Among the marks that hold, the lowest ``priority`` wins.
    """

    kind: str
    test: Callable[[Any], bool]
    evidence: str
    priority: int = 50


# ---- the record -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Era:
    """One kernel era of the user-copy fixups (see the module docstring)."""

    key: str
    title: str
    versions: str
    source: str
    encoding: Encoding
    ex_layout: int
    severity: Severity
    routines: tuple[Routine, ...]
    write: wm.WriteModel
    marks: tuple[Mark, ...] = ()

    @property
    def path(self) -> str:
        return str(ASM_DIR / self.source)

    @property
    def modern(self) -> bool:
        """copy_user_generic() is inline C that calls rep_movs_alternative (v6.4+)."""
        return self.routines is MODERN

    def routine(self, name: str) -> Routine:
        for r in self.routines:
            if r.name == name:
                return r
        raise UsageError(f"era {self.key} has no routine '{name}' (it has: "
                         f"{', '.join(r.name for r in self.routines)})")

    def select_routine(self, cpu: frozenset[str]) -> Routine:
        """The routine copy_user_generic() ran on a CPU with these features (§4a)."""
        if self.modern:
            return self.routines[0]
        if "ERMS" in cpu:
            return self.routine("copy_user_enhanced_fast_string")
        if "REP_GOOD" in cpu:
            return self.routine("copy_user_generic_string")
        return self.routine("copy_user_generic_unrolled")


def _cu(test: Callable[[SourceMarks], bool]) -> Callable[[SourceMarks], bool]:
    """A copy_user mark of the ≤ v6.3 file (no rep_movs_alternative)."""
    return lambda m: "rep_movs_alternative" not in m.defines and test(m)


def _dated_ret(m: SourceMarks) -> bool:
    return m.fixup or (m.small_ret and not m.big_ret)


CATALOG: tuple[Era, ...] = (
    Era("A", "pre-series byte-wise tail", "<= v5.9", "era-A.S",
        Encoding.HANDLER, 516, Severity.V5_9, LEGACY,
        write=wm.WriteModel(
            "A", Severity.V5_9, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES_LAST, True,
            wm.TaskWork.NONE, False, wm.COMMON + (
            wm.PAGES_READABLE,
            "≤ v5.9: a kernel-mode #MC recovers only at an ex_handler_fault entry, so an #MC in "
            "copy_user or in __get_user panics; the panic text is the 6.4-era log wording "
            "(whether ≤ v5.9 printed the same is UNVERIFIED, kernel-facts §6c).",
            "The fault-in load carries _ASM_EXTABLE_UA (ex_handler_uaccess).")),
        marks=(
            Mark("copy_user", _cu(lambda m: not m.cpy_extable),
                 "no _ASM_EXTABLE_CPY: uaccess entries only (<= v5.9)"),
            Mark("copy_mc", lambda m: "__memcpy_mcsafe" in m.defines,
                 "defines __memcpy_mcsafe (<= v5.9)", 40),
            Mark("image", lambda m: m.handler_encoding and not m.types & {ExType.COPY,
                                                                        ExType.FAULT},
                 "__ex_table points at uaccess handlers only (<= v5.9)"),
        )),
    Era("B", "Sept-2020 v1 [PATCH 5/8]: #MC returns 0", "never merged", "era-B.S",
        Encoding.HANDLER, 516, Severity.V5_10, LEGACY,
        write=wm.WriteModel(
            "B", Severity.V5_10, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES_LAST, True,
            wm.TaskWork.KILL_ME_MAYBE, False, wm.COMMON + (
            wm.PAGES_READABLE,
            "The rest of the Sept-2020 v1 series is applied (CPY entries, is_copy_from_user "
            "severity, task_work kill_me_maybe); the follow-up is as in era C (UNVERIFIED for v1).",
            "No mce_count (it is from 2021): a second COPYIN #MC before the return to user "
            "re-adds the same callback_head (the infinite task_work loop of 81065b35e248).",
            "The fault-in load carries _ASM_EXTABLE_UA."))),
    Era("C", "#MC returns 0, as merged (a2f73400e4df)", "v5.10 - v5.15", "era-C.S",
        Encoding.HANDLER, 516, Severity.V5_10, LEGACY,
        write=wm.WriteModel(
            "C", Severity.V5_10, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES_LAST, True,
            wm.TaskWork.KILL_ME_MAYBE, True, wm.COMMON + (
            wm.PAGES_READABLE,
            "Models v5.15 and 5.10-LTS from 5.10.68: mce_count is present (81065b35e248, "
            "backported as 619d747c1850). --no-mce-count models 5.10.0-5.10.67 and 5.11-5.14.",
            "kill_me_maybe: memory_failure() then SIGBUS BUS_MCEERR_AR at current->mce_vaddr, "
            "the address the last is_copy_from_user() decoded.",
            "The fault-in load carries _ASM_EXTABLE_UA.")),
        marks=(
            Mark("copy_user", _cu(lambda m: m.cpy_extable and m.mc_test == "other"),
                 "_ASM_EXTABLE_CPY entries, X86_TRAP_MC tested after movl %edx,%ecx "
                 "(v5.10 pretend-success)"),
            Mark("copy_mc", lambda m: not m.mce_safe,
                 "_ASM_EXTABLE_FAULT entries (v5.10 - v5.15)", 60),
            Mark("getuser", lambda m: not m.big_ret,
                 "_ASM_EXTABLE_UA on the loads, plain ret (<= v5.16)"),
            Mark("putuser", lambda m: not m.big_ret, "plain ret (<= v5.16)"),
            Mark("image", lambda m: m.handler_encoding and ExType.COPY in m.types,
                 "__ex_table points at ex_handler_copy (v5.10 - v5.15)"),
            Mark("image", lambda m: m.handler_encoding and ExType.FAULT in m.types,
                 "__ex_table points at ex_handler_fault (copy_mc, <= v5.15)", 60),
        )),
    Era("D", "revert: tail retried after #MC (690658471b5f)", "v5.16", "era-D.S",
        Encoding.TYPE, 516, Severity.V5_16, LEGACY,
        write=wm.WriteModel("D", Severity.V5_16, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES, False,
            wm.TaskWork.KILL_ME_NEVER, True, wm.COMMON + (
            wm.READABLE,
            "The fault-in load carries EX_TYPE_UACCESS (v5.16 has no EFAULT_REG yet).",
            "kill_me_never: mce_count = 0, 'Kernel accessed poison in user space', "
            "memory_failure(pfn, 0); no signal.")),
        marks=(
            Mark("copy_user", _cu(lambda m: m.cpy_extable and m.mc_test == "none"),
                 "_ASM_EXTABLE_CPY entries, no X86_TRAP_MC test in handle_tail (v5.16 revert)"),
            Mark("copy_mc", lambda m: m.mce_safe and _dated_ret(m),
                 "EX_TYPE_DEFAULT_MCE_SAFE entries (>= v5.16)"),
            Mark("image", lambda m: not m.handler_encoding and ExType.COPY in m.types
                 and ".fixup" in m.sections,
                 "EX_TYPE_COPY entries and a .fixup section (v5.16)"),
        )),
    Era("E", "#MC returns edx, no tail (3376136300a0)", "v5.17 - v6.3", "era-E.S",
        Encoding.DATA, 517, Severity.V5_17, LEGACY,
        write=wm.WriteModel("E", Severity.V5_17, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES, False,
            wm.TaskWork.KILL_ME_NEVER, True, wm.COMMON + (
            wm.READABLE,
            "CHOICE (kernel-facts §7b/§8 mark the exact fault-in path UNVERIFIED): the fault-in "
            "load carries EX_TYPE_UACCESS, as getuser.S up to v6.3 and inline get_user built with "
            "asm goto outputs.  --fault-in efault_reg selects the 5.17-6.14 EX_TYPE_EFAULT_REG "
            "class (99641e094d6c / 4c132d1d844a; inline get_user without asm goto outputs, "
            "UNVERIFIED), which the 5.17 severity rules do not recover: the 'copyin case: kernel "
            "panic since v5.17' report.",
            "kill_me_never; no signal.")),
        marks=(
            Mark("copy_user", _cu(lambda m: m.cpy_extable and m.mc_test == "before_mov"),
                 "_ASM_EXTABLE_CPY entries, X86_TRAP_MC tested before movl %edx,%ecx "
                 "(v5.17 re-add)"),
            Mark("copy_mc", lambda m: m.mce_safe and not _dated_ret(m),
                 "EX_TYPE_DEFAULT_MCE_SAFE entries (>= v5.16)"),
            Mark("getuser", lambda m: m.big_ret and not (m.modern_getuser or m.plain_loads),
                 "_ASM_EXTABLE_UA on the loads"),
            Mark("putuser", lambda m: m.big_ret and not m.modern_getuser,
                 "RET, the TASK_SIZE_MAX compare (v5.17 - v6.1 shape)"),
            Mark("clear_user", lambda m: "clear_user_original" in m.defines,
                 "defines clear_user_original (clear_page_64.S of v6.1 - v6.3)"),
            Mark("image", lambda m: not m.handler_encoding and ExType.COPY in m.types
                 and ".fixup" not in m.sections,
                 "EX_TYPE_COPY entries, no .fixup section (v5.17 - v6.3)"),
        )),
    Era("F", "rep_movs_alternative, EX_TYPE_UACCESS", "v6.4 - today", "era-F.S",
        Encoding.DATA, 610, Severity.V5_17, MODERN,
        write=wm.WriteModel("F", Severity.V5_17, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES, False,
            wm.TaskWork.KILL_ME_NEVER, True, wm.COMMON + (
            wm.READABLE,
            "Models v6.8-v6.14: 5.17 severity rules, fault-in load EX_TYPE_UACCESS (getuser.S "
            "after the 2024 revert, lore 20240129063842.61584-1).  "
            "--fault-in default models v6.4-v6.7 (b19b74bc99b1, EX_TYPE_DEFAULT: an #MC there "
            "panics); --fault-in efault_reg the inline get_user class; --mce-rules 2025 the "
            "is_copy_from_user-first rules of 1a15bb8303b6 (stable 6.12.23, ~v6.15).",
            "kill_me_never; no signal.")),
        marks=(
            Mark("copy_user", lambda m: "rep_movs_alternative" in m.defines,
                 "defines rep_movs_alternative (v6.4+ rewrite)", 10),
            Mark("getuser", lambda m: m.big_ret and m.plain_loads,
                 "plain _ASM_EXTABLE on the loads: EX_TYPE_DEFAULT (v6.4 - v6.7)", 40),
            Mark("getuser", lambda m: m.big_ret and m.modern_getuser,
                 "_ASM_EXTABLE_UA on the loads"),
            Mark("putuser", lambda m: m.big_ret and m.modern_getuser,
                 "check_range macro (the v6.x range check, as in getuser.S)"),
            Mark("clear_user", lambda m: "rep_stos_alternative" in m.defines,
                 "defines rep_stos_alternative (v6.4+ rewrite)"),
            Mark("image", lambda m: not m.handler_encoding
                 and "rep_movs_alternative" in m.symbols,
                 "defines rep_movs_alternative (v6.4+); type/data __ex_table", 10),
        )),
)

ERAS: dict[str, Era] = {e.key: e for e in CATALOG}
#: The era whose rules apply when nothing says otherwise (a file emu does not recognise).
DEFAULT_ERA = "E"


def get_era(key: str) -> Era:
    """The era named ``key`` (case-insensitive): the one lookup every input goes through.

    Raises:
        UsageError: not an era key.
    """
    era = ERAS.get(key.strip().upper())
    if era is None:
        raise UsageError(f"unknown era '{key}' (known: {', '.join(ERAS)})")
    return era


def default_era() -> Era:
    return ERAS[DEFAULT_ERA]


def sniff(kind: str, marks: SourceMarks | ImageMarks) -> tuple[Era, str] | None:
    """The era whose marks ``marks`` carry, with the evidence; None when no era's do."""
    hits = [(m.priority, i, e, m.evidence) for i, e in enumerate(CATALOG) for m in e.marks
            if m.kind == kind and m.test(marks)]
    if not hits:
        return None
    _p, _i, era, evidence = min(hits, key=lambda h: (h[0], h[1]))
    return era, evidence


#: CPU presets for --cpu that ``--cpu all`` sweeps (the pre-issue-14 presets: SMAP machines
#: with these copy features); real server models are in ``emu.kernel.cpus.MODELS``.
CPUS: dict[str, frozenset[str]] = dict(PRESETS)


def parse_cpu(text: str) -> frozenset[str]:
    """``--cpu`` value → feature set: a preset, a server model (``emu.kernel.cpus``), or a
    comma list of features.  A list keeps the old meaning of an SMAP machine unless it
    names NOSMAP."""
    key = text.strip().lower()
    if key in CPUS:
        return CPUS[key]
    if key in MODELS:
        return MODELS[key].features
    feats = {f.strip().upper() for f in text.split(",") if f.strip()}
    if not feats:
        raise UsageError(f"--cpu '{text}' names no CPU (presets: {', '.join(CPUS)}; "
                         f"models: {', '.join(MODELS)}; features: {', '.join(FEATURES)})")
    bad = feats - set(FEATURES) - {"NOSMAP"}
    if bad:
        raise UsageError(f"unknown CPU feature {', '.join(sorted(bad))} (presets: "
                         f"{', '.join(CPUS)}; models: {', '.join(MODELS)}; features: "
                         f"{', '.join(FEATURES)}, NOSMAP)")
    if "NOSMAP" in feats:
        return frozenset(feats - {"NOSMAP", "SMAP"})
    return frozenset(feats | {"SMAP"})


def cpu_name(cpu: frozenset[str]) -> str:
    for name, feats in CPUS.items():
        if feats == cpu:
            return name
    for m in MODELS.values():
        if m.features == cpu:
            return m.name
    names = [f for f in FEATURES if f in cpu]
    if "SMAP" not in cpu:
        names.append("NOSMAP")
    return ",".join(names)

