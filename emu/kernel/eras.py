"""The era catalog: which source, extable encoding, severity and routines each era had.

Data only (kernel-facts.md §3, §4a, §5a, §6a).  Eras A–E carry the four ≤ v6.3 copy routines
and the shared handle_tail; era F carries rep_movs_alternative and a stand-in for the inlined
≥ v6.4 copy_user_generic().  ``select_routine`` is the ALTERNATIVE choice copy_user_generic()
made for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.paths import ASM_DIR
from emu.errors import UsageError
from emu.kernel.extable import Encoding
from emu.kernel.policy import Severity


@dataclass(frozen=True, slots=True)
class Routine:
    """How a routine is called: which register holds len, which one returns the result."""

    name: str
    len_reg: str = "rdx"
    ret_reg: str = "eax"
    caller_stac: bool = False


LEGACY = (
    Routine("copy_user_generic_unrolled"),
    Routine("copy_user_generic_string"),
    Routine("copy_user_enhanced_fast_string"),
    Routine("__copy_user_nocache"),
)
MODERN = (
    Routine("copy_user_generic", len_reg="rcx", ret_reg="rcx"),
    Routine("rep_movs_alternative", len_reg="rcx", ret_reg="rcx", caller_stac=True),
)


@dataclass(frozen=True, slots=True)
class Era:
    """One kernel era of the user-copy fixups."""

    key: str
    title: str
    versions: str
    source: str
    encoding: Encoding
    ex_layout: int
    severity: Severity
    routines: tuple[Routine, ...]

    @property
    def path(self) -> str:
        return str(ASM_DIR / self.source)

    @property
    def modern(self) -> bool:
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


ERAS: dict[str, Era] = {e.key: e for e in (
    Era("A", "pre-series byte-wise tail", "<= v5.9", "era-A.S",
        Encoding.HANDLER, 516, Severity.V5_9, LEGACY),
    Era("B", "Sept-2020 v1 [PATCH 5/8]: #MC returns 0", "never merged", "era-B.S",
        Encoding.HANDLER, 516, Severity.V5_10, LEGACY),
    Era("C", "#MC returns 0, as merged (a2f73400e4df)", "v5.10 - v5.15", "era-C.S",
        Encoding.HANDLER, 516, Severity.V5_10, LEGACY),
    Era("D", "revert: tail retried after #MC (690658471b5f)", "v5.16", "era-D.S",
        Encoding.TYPE, 516, Severity.V5_16, LEGACY),
    Era("E", "#MC returns edx, no tail (3376136300a0)", "v5.17 - v6.3", "era-E.S",
        Encoding.DATA, 517, Severity.V5_17, LEGACY),
    Era("F", "rep_movs_alternative, EX_TYPE_UACCESS", "v6.4 - today", "era-F.S",
        Encoding.DATA, 610, Severity.V5_17, MODERN),
)}

#: CPU presets for --cpu; a comma list of feature names is accepted too.
CPUS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "rep_good": frozenset({"REP_GOOD"}),
    "erms": frozenset({"REP_GOOD", "ERMS"}),
    "fsrm": frozenset({"REP_GOOD", "ERMS", "FSRM"}),
}
FEATURES = ("REP_GOOD", "ERMS", "FSRM")


def parse_cpu(text: str) -> frozenset[str]:
    """``--cpu`` value → feature set: a preset name or a comma list of features."""
    key = text.strip().lower()
    if key in CPUS:
        return CPUS[key]
    feats = {f.strip().upper() for f in text.split(",") if f.strip()}
    bad = feats - set(FEATURES)
    if bad:
        raise UsageError(f"unknown CPU feature {', '.join(sorted(bad))} (presets: "
                         f"{', '.join(CPUS)}; features: {', '.join(FEATURES)})")
    return frozenset(feats)


def cpu_name(cpu: frozenset[str]) -> str:
    for name, feats in CPUS.items():
        if feats == cpu:
            return name
    return ",".join(f for f in FEATURES if f in cpu)


def get_era(key: str) -> Era:
    era = ERAS.get(key.upper())
    if era is None:
        raise UsageError(f"unknown era '{key}' (known: {', '.join(ERAS)})")
    return era
