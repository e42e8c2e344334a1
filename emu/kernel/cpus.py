"""CPU models for ``--cpu``: real server generations, and the kernel's feature bit numbers.

Data only.  A CPU is a frozenset of feature names (the X86_FEATURE_* suffixes); what the
kernel does with them at boot is decided elsewhere (``emu.build.objects``: the alternatives,
return-thunk and retpoline passes of arch/x86/kernel/alternative.c; ``Machine(smap=...)``:
CR4.SMAP).  The features emu models:

* SMAP, SMEP: CR4 bits; ``ASM_STAC``/``ASM_CLAC`` are ALTERNATIVEs on SMAP.
* REP_GOOD, ERMS, FSRM, FSRS: the copy / clear routine selection (kernel-facts §4a).
* RETPOLINE, RETHUNK: the spectre_v2 / retbleed / SRSO mitigations the kernel picks by
  default on that part (``spectre_v2=auto``, ``retbleed=auto``, ``spec_rstack_overflow=auto``):
  retpolines on parts without enhanced IBRS, a return thunk on AMD Zen (untrain_ret / SRSO
  safe-RET).  Intel parts use IBRS/eIBRS for retbleed, so their returns are plain ``ret``.

The models' features follow the parts' CPUID (Intel ARK / AMD PPR leaf 7: SMEP from Haswell,
SMAP from Broadwell, ERMS on every Intel server part since Ivy Bridge and on AMD from Zen 3,
FSRM from Ice Lake and Zen 3, FSRS from Sapphire Rapids); REP_GOOD is set by the kernel
itself for Intel family 6 model >= 0xd and for AMD family >= 0x10 (early_init_intel/amd).

The old presets (``none``, ``rep_good``, ``erms``, ``fsrm``) keep their meaning: emu's machine
always enforced SMAP, so they are SMAP machines with those copy features and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Feature names ``--cpu`` lists accept.
FEATURES = ("SMAP", "SMEP", "REP_GOOD", "ERMS", "FSRM", "FSRS", "RETPOLINE", "RETHUNK")


@dataclass(frozen=True, slots=True)
class Model:
    """A server CPU generation and the features the kernel sees on it."""

    name: str
    part: str
    features: frozenset[str]


def _m(name: str, part: str, *feats: str) -> Model:
    return Model(name, part, frozenset(feats))


MODELS: dict[str, Model] = {m.name: m for m in (
    _m("haswell-ep", "Intel Xeon E5 v3 (2014)", "SMEP", "REP_GOOD", "ERMS", "RETPOLINE"),
    _m("skylake-sp", "Intel Xeon Scalable 1st gen (2017)", "SMAP", "SMEP", "REP_GOOD", "ERMS",
       "RETPOLINE"),
    _m("cascadelake-sp", "Intel Xeon Scalable 2nd gen (2019), eIBRS", "SMAP", "SMEP",
       "REP_GOOD", "ERMS"),
    _m("icelake-sp", "Intel Xeon Scalable 3rd gen (2021)", "SMAP", "SMEP", "REP_GOOD", "ERMS",
       "FSRM"),
    _m("sapphirerapids", "Intel Xeon Scalable 4th gen (2023)", "SMAP", "SMEP", "REP_GOOD",
       "ERMS", "FSRM", "FSRS"),
    _m("rome", "AMD EPYC 7002, Zen 2 (2019)", "SMAP", "SMEP", "REP_GOOD", "RETPOLINE",
       "RETHUNK"),
    _m("milan", "AMD EPYC 7003, Zen 3 (2021)", "SMAP", "SMEP", "REP_GOOD", "ERMS", "FSRM",
       "RETPOLINE", "RETHUNK"),
)}

#: The pre-issue-14 presets: SMAP machines with the named copy features.
PRESETS: dict[str, frozenset[str]] = {
    "none": frozenset({"SMAP"}),
    "rep_good": frozenset({"SMAP", "REP_GOOD"}),
    "erms": frozenset({"SMAP", "REP_GOOD", "ERMS"}),
    "fsrm": frozenset({"SMAP", "REP_GOOD", "ERMS", "FSRM"}),
}


# ---- X86_FEATURE_* numbers per kernel version ----------------------------------------------

#: Bits that are the same in every release emu reads (arch/x86/include/asm/cpufeatures.h,
#: v5.10 - v6.12): word * 32 + bit.
_COMMON = {"REP_GOOD": 3 * 32 + 16, "ALWAYS": 3 * 32 + 21, "SMEP": 9 * 32 + 7,
           "ERMS": 9 * 32 + 9, "SMAP": 9 * 32 + 20, "RETPOLINE": 7 * 32 + 12,
           "FSRM": 18 * 32 + 4}
#: Per release range: the bits that moved, and what the row was checked against.
#: RETPOLINE/RETHUNK sit in word 11 from v5.19 (the retbleed series); CLEAR_CPU_BUF is 11*32+18
#: in 6.1 stable and 3*32+18 in 6.12, where LFENCE_RDTSC moved from 3*32+18 to 20*32+2;
#: FSRS (12*32+11) exists from v6.2.  Rows not checked against a cpufeatures.h say UNVERIFIED.
FEATURE_BITS: tuple[tuple[tuple[int, int], tuple[int, int], dict[str, int], str], ...] = (
    ((5, 10), (5, 18), {**_COMMON}, "UNVERIFIED"),
    ((5, 19), (6, 1), {**_COMMON, "RETPOLINE": 11 * 32 + 12, "RETHUNK": 11 * 32 + 14,
                       "CLEAR_CPU_BUF": 11 * 32 + 18, "LFENCE_RDTSC": 3 * 32 + 18},
     "checked against Debian 6.1.192's cpufeatures.h"),
    ((6, 2), (6, 8), {**_COMMON, "RETPOLINE": 11 * 32 + 12, "RETHUNK": 11 * 32 + 14,
                      "FSRS": 12 * 32 + 11, "LFENCE_RDTSC": 3 * 32 + 18}, "UNVERIFIED"),
    ((6, 9), (6, 12), {**_COMMON, "RETPOLINE": 11 * 32 + 12, "RETHUNK": 11 * 32 + 14,
                       "FSRS": 12 * 32 + 11, "CLEAR_CPU_BUF": 3 * 32 + 18,
                       "LFENCE_RDTSC": 20 * 32 + 2},
     "checked against Debian 6.12.118's cpufeatures.h"),
)


def feature_bits(version: tuple[int, int]) -> tuple[dict[str, int], str] | None:
    """The X86_FEATURE_* numbers of a kernel release and their provenance, or None if emu
    has no table for it."""
    for lo, hi, bits, checked in FEATURE_BITS:
        if lo <= version <= hi:
            return bits, f"feature bits of v{lo[0]}.{lo[1]}-v{hi[0]}.{hi[1]} ({checked})"
    return None


def known_versions() -> str:
    return ", ".join(f"v{lo[0]}.{lo[1]}-v{hi[0]}.{hi[1]}" for lo, hi, _, _ in FEATURE_BITS)


@dataclass(frozen=True, slots=True)
class KernelVersion:
    """What an image's banner (``linux_banner``, "Linux version ...") says it is."""

    release: str                 # UTS release, e.g. "6.1.0-57-amd64"
    version: tuple[int, int]     # major, minor
    banner: str
    distro: str = ""             # e.g. "Debian 6.1.192-3", the stable version when known

    @property
    def stable(self) -> tuple[int, int, int] | None:
        """The upstream stable version (x.y.z) from the distribution string, if any."""
        m = re.search(r"\b(\d+)\.(\d+)\.(\d+)", self.distro)
        return (int(m[1]), int(m[2]), int(m[3])) if m else None

    def describe(self) -> str:
        return self.release + (f" ({self.distro})" if self.distro else "")


def parse_banner(text: str) -> KernelVersion | None:
    """Parse a ``Linux version R (...) #N ...`` banner; None if it is not one."""
    m = re.match(r"Linux version (\S+)", text)
    if m is None:
        return None
    v = re.match(r"(\d+)\.(\d+)", m[1])
    if v is None:
        return None
    distro = ""
    tail = text.split(" #", 1)[1] if " #" in text else ""      # after the compiler part
    d = re.search(r"\b(Debian|Ubuntu|SUSE|Red Hat)\s+([^\s)]+)", tail)
    if d:
        distro = f"{d[1]} {d[2]}"
    return KernelVersion(m[1], (int(v[1]), int(v[2])), text.strip(), distro)
