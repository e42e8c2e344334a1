"""``emu check OLD NEW``: behavioural regression detection for changes to the copy assembly.

Follows the uaccess.h contract (kernel-facts.md §1) as the oracle, the per-era #MC severity
rules (§6a) and the lesson of §8: the 4c132d1d844a class of regression changed only the
``__ex_table`` *type* of user accesses, so the dynamic matrix below is complemented by the
static recoverability map diff (``emu.map``), which flags such a change even where the
matrix never executes the instruction.

The standard matrix (``MATRIX_VERSION`` names it; snapshots record it) is, for every routine
present in both OLD and NEW:

* CPU paths ``none``, ``rep_good``, ``erms``, ``fsrm`` (the ALTERNATIVE sites of §4a);
* directions ``from`` and ``to`` (copy_from_user / copy_to_user);
* lengths 1, 7, 8, 63, 64, 65, 200, 4096 (below/at/above the 8- and 64-byte thresholds of
  the byte, word and unrolled loops, and a page);
* (source, destination) alignments (0, 0), (0x8, 0), (0x10, 0), (0x18, 0), (0x7e0, 0) (the
  seed scenario), (0x28, 0), (0x30, 0), (0x38, 0): with the destination aligned, the first
  poisoned line starts at each of the eight qword offsets of a 64-byte block, so every load
  of an unrolled block is the one that takes the #MC in some case; plus (3, 5) and
  (0xff9, 7) (unaligned destination: ALIGN_DESTINATION runs; a page boundary 7 bytes in);
* per (length, alignment): a clean copy; one #MC (the 64-byte source line holding the offset
  is poisoned) at offsets 0, 8, 40, len/2, len-1 and 0x960 (the seed's mid-block offset),
  one case per distinct line; two #MC (the lines of len/2 and len-1, when they differ);
  one #PF per user page the buffer touches, at the first byte of that page (offset 0 and
  every page boundary inside the buffer).

That is 746 cases per routine and CPU path (both directions), 2984 per routine; the four
≤ v6.3 routines make 11936 cases per side.  __get_user_N and __put_user_N helpers
(getuser.S, putuser.S; their conventions in ``emu.kernel.conventions``) get their own cells:
user address at page offsets 0, 1, 0x3f and 0xfff (straddling a line, a page), each clean,
with an #MC on the line of the first and of the last byte, and with a #PF on the page of the
first and of the last byte (12 to 15 cases per CPU path).  clear_user routines (one user
buffer) run the copy cells of the "from" direction only.

A CPU path whose assembled image is byte-identical to one already run (most ≤ v6.3 routines
have no ALTERNATIVE site) reuses that path's outcomes, and so does a NEW image identical to
OLD's (a comment-only change), because an image plus the era rules fully determine the
outcome.  Measured on the 2-core development machine (shared with other jobs), one process,
``emu check`` wall time including start-up and assembly: era-D.S vs era-E.S (4 routines,
2 x 11936 cases, 2 x 2984 distinct runs) 5.0 s; era-F.S vs a one-entry type change
(2 routines, 2 x 5968 cases; three distinct CPU images, 2 x 4476 runs) 6.6 s; a
comment-only change 2.8 s.  No worker pool is needed to stay under a minute.

**What callers get.**  Besides the per-name comparison (a routine present in both files is
compared with itself), each CPU preset compares the routine copy_user_generic() reaches on
that CPU in OLD with the one it reaches in NEW (``Detection.select_routine`` /
``Era.select_routine``, kernel-facts §4a), whatever their names: the v6.4 rewrite replaced
the unrolled / string / ERMS routines by ``rep_movs_alternative`` (and in a v6.4+ file
copy_user_generic() is inline C, so the file has only rep_movs_alternative).  These cases
carry the pseudo-routine ``CALLER`` and are added only on the CPUs where the two sides reach
routines of different names (where the names match, the per-name cases already compare
them).  Their reproducers name each side's own routine.

Outcomes are compared case by case and each difference is put in a class (``CLASSES``, stable
names) and judged ``worse``, ``better`` or ``neutral`` against the uaccess contract and the
#MC invariants (``judge``): fewer machine checks, a violation removed, a panic removed and a
return value closer to the exact remainder are better; the reverse is worse; a change the
contract does not order (a routine added or removed, bytes copied, #PF count, tail retry on
a #PF) is neutral.  A class with a worse case or map site that is not ``--allow``-ed is a
regression: exit 1; with ``strict`` any change that is not allowed is.  Bad input is exit 2
(``EmuError``).

Era rules: by default OLD's detected era (``emu.build.detect``) is used for both sides, because a CI
change replaces the file inside the same kernel; ``--era KEY`` forces one, ``--era each``
lets each side use its own detection (for distant revisions).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emu.build.resolve import Spec, resolve, source_of, tree_rules
from emu.caching import Bounded
from emu.core.machine import Buffers, State
from emu.errors import EmuError, InputError, UsageError
from emu.kernel import conventions as cv
from emu.kernel.conventions import Oracle, Routine
from emu.kernel.eras import CPUS, ERAS, get_era
from emu.kernel.helpers import HelperResult
from emu.kernel.severity import MceRules
from emu.kernel.outcome import Outcome
from emu.runs import map as umap
from emu.runs.repro import case_options

MATRIX_VERSION = "std-1"
SNAPSHOT_FORMAT = "emu-check-snapshot"
#: 2: the snapshot records what copy_user_generic() reaches per CPU (``callers``) and its cases.
#: 3: a routine's convention is recorded by name (``emu.kernel.conventions``) and size.
SNAPSHOT_VERSION = 3
#: The pseudo-routine of the caller comparison: the C entry every copy_{from,to}_user goes
#: through, whichever routine of the file it reaches on a CPU.
CALLER = "copy_user_generic()"
#: How one case's change is judged against the contract (see the module docstring).
DIRECTIONS = ("worse", "better", "neutral")

MATRIX_CPUS = ("none", "rep_good", "erms", "fsrm")
MATRIX_DIRECTIONS = ("from", "to")
MATRIX_LENGTHS = (1, 7, 8, 63, 64, 65, 200, 4096)
MATRIX_ALIGNS = ((0, 0), (0x8, 0), (0x10, 0), (0x18, 0), (0x7E0, 0), (0x28, 0), (0x30, 0),
                 (0x38, 0), (3, 5), (0xFF9, 7))
MC_OFFSETS = (0, 8, 40, "half", "last", 0x960)
#: __get_user_N source alignments: aligned, odd, straddling a line, straddling a page.
GET_USER_ALIGNS = (0, 1, 0x3F, 0xFFF)
PAGE, LINE = 0x1000, 64

#: Finding classes: stable name → (title, what the old → new counts measure).
#: The names are stable; each class holds changes in both directions (a ``new_mc_panic``
#: case that is ``better`` is a panic removed).
CLASSES: dict[str, tuple[str, str]] = {
    "return_changed": ("returned value changed", "cases returning the exact remainder"),
    "new_violation": ("contract violation added or removed", "cases with a contract violation"),
    "new_mc_panic": ("#MC panic added or removed", "cases ending in an #MC panic"),
    "mc_count_changed": ("#MC count changed", "machine checks taken over the matrix"),
    "new_smap_violation": ("SMAP violation added or removed", "cases ending in a SMAP violation"),
    "routine_added_or_removed": ("routine added or removed", "routines"),
    "state_changed": ("other outcome state changed (oops, hang, protection fault, "
                      "system instruction)",
                      "cases that did not return"),
    "other_change": ("bytes copied, #PF count or tail retry changed", "cases with a tail retry"),
}


# ---- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MCase:
    """One matrix case of one routine; ``key`` is the same on both sides."""

    routine: str
    cpu: str
    direction: str
    length: int
    src_align: int
    dst_align: int
    kind: str           # none, mc, mc2, pf
    poison: tuple[int, ...] = ()
    unmapped: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return (f"{self.routine}|{self.cpu}|{self.direction}|{self.length}|"
                f"{self.src_align:#x}|{self.dst_align:#x}|{self.kind}|"
                f"{','.join(hex(p) for p in self.poison)}|"
                f"{','.join(hex(p) for p in self.unmapped)}")

    @classmethod
    def from_key(cls, key: str) -> MCase:
        r, cpu, d, n, sa, da, kind, po, un = key.split("|")
        return cls(r, cpu, d, int(n), int(sa, 16), int(da, 16), kind,
                   tuple(int(x, 16) for x in po.split(",") if x),
                   tuple(int(x, 16) for x in un.split(",") if x))

    def buffers(self) -> Buffers:
        return Buffers(self.direction, self.length, self.src_align, self.dst_align,
                       self.poison, self.unmapped)

    def args(self) -> list[str]:
        """The ``emu run`` options of this case."""
        return case_options(self)

    def minimality(self) -> tuple[int, ...]:
        return (self.length, len(self.poison) + len(self.unmapped), self.src_align,
                self.dst_align, MATRIX_CPUS.index(self.cpu) if self.cpu in MATRIX_CPUS else 9,
                MATRIX_DIRECTIONS.index(self.direction), *self.poison, *self.unmapped)

    def describe(self) -> str:
        faults = []
        if self.poison:
            faults.append("#MC at " + ",".join(f"+{p:#x}" for p in self.poison))
        if self.unmapped:
            faults.append("#PF at " + ",".join(f"+{p:#x}" for p in self.unmapped))
        oracle = _oracle(self.routine)
        if oracle in (Oracle.GET_USER, Oracle.PUT_USER):
            return (f"{self.routine} cpu {self.cpu}, user address at page offset "
                    f"{self.src_align:#x}, {' '.join(faults) or 'no fault'}")
        if oracle is Oracle.CLEAR:
            return (f"{self.routine} cpu {self.cpu}, clear_user len {self.length} "
                    f"user+{self.src_align:#x}, {' '.join(faults) or 'no fault'}")
        return (f"{self.routine} cpu {self.cpu}, copy_{self.direction}_user len {self.length} "
                f"src+{self.src_align:#x} dst+{self.dst_align:#x}, "
                f"{' '.join(faults) or 'no fault'}")


def _oracle(name: str) -> Oracle:
    """How a routine of the matrix is judged (a name emu does not know: as a copy)."""
    r = cv.KNOWN.get(name)
    return r.convention.oracle if r is not None else Oracle.COPY


def _line(src_align: int, off: int) -> int:
    return (src_align + off) // LINE


def case_faults(direction: str, n: int, sa: int, da: int
                ) -> Iterator[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """The fault set of one (direction, length, alignment) cell (see the module docstring)."""
    yield "none", (), ()
    seen: set[int] = set()
    for o in MC_OFFSETS:
        off = n // 2 if o == "half" else n - 1 if o == "last" else int(o)
        if 0 <= off < n and _line(sa, off) not in seen:
            seen.add(_line(sa, off))
            yield "mc", (off,), ()
    a, b = n // 2, n - 1
    if n > 0 and _line(sa, a) != _line(sa, b):
        yield "mc2", (a, b), ()
    user = sa if direction == "from" else da
    for p in range(0, user + n, PAGE):
        off = max(0, p - user)
        if off < n:
            yield "pf", (), (off,)


def get_user_faults(size: int, sa: int) -> Iterator[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """The cells of a __get_user_N helper: clean, #MC on the line of the first and of the
    last byte, #PF on the page of the first and of the last byte (distinct ones only)."""
    yield "none", (), ()
    for kind, unit in (("mc", LINE), ("pf", PAGE)):
        seen: set[int] = set()
        for off in (0, size - 1):
            if (sa + off) // unit not in seen:
                seen.add((sa + off) // unit)
                yield (kind, (off,), ()) if kind == "mc" else (kind, (), (off,))


def matrix(routines: list[str], cpus: tuple[str, ...] = MATRIX_CPUS) -> list[MCase]:
    """Every case of the standard matrix for ``routines``, in a fixed order."""
    out: list[MCase] = []
    for r in routines:
        known = cv.KNOWN.get(r)
        size = known.size if known is not None else None
        if size is not None:
            for cpu in cpus:
                for sa in GET_USER_ALIGNS:
                    for kind, po, un in get_user_faults(size, sa):
                        out.append(MCase(r, cpu, "from", size, sa, 0, kind, po, un))
            continue
        # a clear routine has one user buffer: the "from" layout only
        dirs = ("from",) if _oracle(r) is Oracle.CLEAR else MATRIX_DIRECTIONS
        for cpu in cpus:
            for d in dirs:
                for n in MATRIX_LENGTHS:
                    for sa, da in MATRIX_ALIGNS:
                        for kind, po, un in case_faults(d, n, sa, da):
                            out.append(MCase(r, cpu, d, n, sa, da, kind, po, un))
    return out


def matrix_json() -> dict[str, Any]:
    return {"version": MATRIX_VERSION, "cpus": list(MATRIX_CPUS),
            "directions": list(MATRIX_DIRECTIONS), "lengths": list(MATRIX_LENGTHS),
            "aligns": [list(x) for x in MATRIX_ALIGNS],
            "mc_offsets": [str(x) if isinstance(x, str) else x for x in MC_OFFSETS],
            "get_user_aligns": list(GET_USER_ALIGNS)}


def compact(o: Outcome) -> dict[str, Any]:
    """What the comparison looks at (and a snapshot stores) of one outcome."""
    return {"state": o.state.value, "ret": o.return_value, "copied": o.bytes_copied,
            "violations": list(o.violations), "mc": o.mc_count, "pf": o.pf_count,
            "retry": o.retouched}


def compact_helper(g: HelperResult) -> dict[str, Any]:
    """The same record for a get_user / put_user call: ``ret`` is the error code (0 /
    -EFAULT), ``copied`` the size when the value arrived (rdx for get_user, the user bytes
    for put_user), and a verdict other than ok is the violation."""
    return {"state": g.state.value, "ret": g.err,
            "copied": g.size if g.value is not None and g.value == g.expected else 0,
            "violations": [] if g.verdict in ("ok", g.state.value) else [g.verdict],
            "mc": g.mc_count, "pf": g.pf_count, "retry": False}


# ---- sides --------------------------------------------------------------------------------


@dataclass
class Side:
    """OLD or NEW: the source spec, how to name it in a reproducer, and its results.

    A side loaded from a snapshot has no spec (only NEW can be re-run).
    """

    label: str
    spec: Spec | None
    era: str = ""
    detected: str = ""
    routines: dict[str, Routine] = field(default_factory=dict)
    functions: tuple[str, ...] = ()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    accesses: dict[str, tuple[umap.Access, ...]] = field(default_factory=dict)
    panic_at: dict[str, str] = field(default_factory=dict)   # case key -> where the #MC panicked
    #: CPU preset -> the routine copy_user_generic() reaches on it (copy_user files only).
    callers: dict[str, str] = field(default_factory=dict)
    #: Every routine of the file emu knows how to call (a caller may reach one not selected).
    known: dict[str, Routine] = field(default_factory=dict, repr=False)
    distinct_runs: int = 0
    #: The #MC rules both sides run under when they come from OLD's tree (its severity.c)
    #: rather than from the era; None: the era's.
    mce: MceRules | None = None

    @property
    def run_prefix(self) -> list[str]:
        """``emu run`` and the source arguments, up to (not including) ``--era``."""
        if self.spec is None:
            return []
        return ["emu", "run", *replace(self.spec, era=None).run_args()]

    def command(self, c: MCase) -> str:
        if c.routine == CALLER:
            c = replace(c, routine=self.callers[c.cpu])
        rules = ["--mce-rules", self.mce.severity.value] if self.mce else []
        return shlex.join([*self.run_prefix, "--era", self.era, *rules, *c.args()])


def side_of(spec: Spec) -> Side:
    """A source spec → a Side (the source is read now, so a bad spec fails before any run).

    An era key is checked as its bundled file, so its reproducer can carry any ``--era``.
    """
    if spec.kind == "era":
        era = get_era(spec.value)
        path = era.path
        rel = os.path.relpath(path)
        spec = replace(spec, kind="file", value=rel if not rel.startswith("..") else path)
        if not spec.patches:
            return Side(f"era {era.key}:{Path(path).name}", spec)
    if spec.kind in ("object", "vmlinux"):
        if not Path(spec.value).is_file():
            raise InputError(f"{spec.value}: no such file")
        return Side(Path(spec.value).name, spec)
    return Side(source_of(spec).name, spec)


def detected_era(side: Side) -> str:
    """The era the side's file shows (``--era`` aside)."""
    assert side.spec is not None
    return resolve(replace(side.spec, era=None), CPUS["none"]).era.key  # type: ignore[union-attr]


# ---- running ------------------------------------------------------------------------------


def _fingerprint(t: Any) -> str:
    h = hashlib.sha256()
    for s in t.image.sections:
        h.update(f"{s.name}@{s.addr:#x}:".encode())
        h.update(s.data)
    for e in t.image.extable:
        h.update(f"{e.insn:#x}>{e.fixup:#x}:{e.type.value}:{e.data}:{e.handler}".encode())
    for s in sorted(t.image.symbols.values(), key=lambda s: (s.addr, s.name)):
        h.update(f"{s.name}={s.addr:#x}/{s.size}".encode())
    h.update(t.settings.severity.value.encode())
    return h.hexdigest()


#: Outcomes per (image fingerprint, routine): a CPU path or side with an identical image
#: reuses them.  Bounded: a range check over many revisions would otherwise keep them all.
_MEMO: Bounded[tuple[str, str], dict[str, tuple[dict[str, Any], str | None]]] = Bounded(
    64, "check.outcomes")


def _panic_site(o: Outcome | HelperResult) -> str | None:
    for f in o.faults:
        if f.kind == "mc" and f.action == "panic":
            return f.where
    return None


def _targets(side: Side, cpus: tuple[str, ...]) -> dict[str, Any]:
    assert side.spec is not None
    spec = replace(side.spec, era=side.era)
    sev = side.mce.severity if side.mce else None
    return {c: resolve(spec, CPUS[c], severity=sev) for c in cpus}


def prepare(side: Side, era: str, names: list[str]) -> None:
    """Assemble ``side`` under ``era``'s rules and pick its routines.

    Raises:
        EmuError: the source does not assemble, or a ``--routine`` is not defined.
    """
    side.era = era
    side.detected = detected_era(side)
    t = _targets(side, ("none",))["none"]
    side.functions = tuple(s.name for s in t.image.functions())
    known = {r.name: r for r in t.detection.routines}
    if names:
        for n in names:
            if n in t.image.symbols:
                side.routines[n] = known.get(n) or cv.routine(n)
    else:
        side.routines = dict(known)
    side.callers = {}
    det = t.detection
    if det is not None and det.kind == "copy_user" and det.routines:
        # what copy_user_generic() reaches on each CPU preset (kernel-facts §4a); on an FSRM
        # CPU a v6.4+ copy_user_generic() is an inline `rep movsb` at the call site, which a
        # real copy_user_64.S does not hold (the bundled era-F.S models it as a routine)
        names = {r.name for r in det.routines}
        side.callers = {cpu: det.select_routine(CPUS[cpu]).name for cpu in MATRIX_CPUS
                        if not (cpu == "fsrm" and det.era.modern
                                and "copy_user_generic" not in names)}
    side.known = {**known, **side.routines}


def caller_cpus(old: Side, new: Side, common: list[str]) -> tuple[str, ...]:
    """The CPU presets whose copy_user_generic() is compared as ``CALLER``: both sides reach
    a routine there, and the per-name comparison does not already cover the pair."""
    return tuple(cpu for cpu in MATRIX_CPUS
                 if cpu in old.callers and cpu in new.callers
                 and not (old.callers[cpu] == new.callers[cpu] and old.callers[cpu] in common))


def _outcomes(side: Side, t: Any, fp: str, r: str, cpu: str
              ) -> dict[str, tuple[dict[str, Any], str | None]]:
    """The matrix outcomes of routine ``r`` on target ``t`` (memoised by image)."""
    memo_key = (fp, r)
    got = _MEMO.get(memo_key)
    if got is None:
        got = {}
        routine = side.routines.get(r) or side.known.get(r) or cv.routine(r)
        for c in matrix([r], (cpu,)):
            res = t.call(routine, c.buffers())
            rec = compact_helper(res) if isinstance(res, HelperResult) else compact(res)
            got[_cpuless(c.key)] = (rec, _panic_site(res))
            side.distinct_runs += 1
        _MEMO[memo_key] = got
    return got


def run_side(side: Side, routines: list[str], callers: tuple[str, ...] = ()) -> None:
    """Run the matrix for ``routines`` on ``side`` (results keyed by ``MCase.key``), and on
    the CPUs ``callers`` the routine copy_user_generic() reaches there, as ``CALLER``."""
    targets = _targets(side, MATRIX_CPUS)
    for cpu, t in targets.items():
        fp = _fingerprint(t)
        todo = [(r, r) for r in routines]
        if cpu in callers:
            todo.append((CALLER, side.callers[cpu]))
        for label, r in todo:
            got = _outcomes(side, t, fp, r, cpu)
            for c in matrix([r], (cpu,)):
                rec, site = got[_cpuless(c.key)]
                key = c.key if label == r else replace(c, routine=label).key
                side.results[key] = rec
                if site is not None:
                    side.panic_at[key] = site
        sev = t.settings.severity
        side.accesses[cpu] = umap.build(t.image, sev)


def _cpuless(key: str) -> str:
    parts = key.split("|")
    parts[1] = "*"
    return "|".join(parts)


# ---- comparing ----------------------------------------------------------------------------


@dataclass
class Finding:
    """One class of change: its cases (each judged worse, better or neutral), static map
    sites and the chosen reproducer."""

    cls: str
    cases: list[str] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)
    old_count: int = 0
    new_count: int = 0
    allowed: bool = False
    strict: bool = False
    example: dict[str, Any] | None = None
    #: case key -> "worse" | "better" | "neutral"
    direction: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.cases or self.sites)

    def count(self, direction: str) -> int:
        """Cases plus map sites judged ``direction``."""
        return (sum(1 for k in self.cases if self.direction.get(k) == direction)
                + sum(1 for s in self.sites if s.get("direction", "worse") == direction))

    @property
    def worse(self) -> bool:
        return self.count("worse") > 0

    @property
    def verdict(self) -> str:
        """``worse`` if anything got worse, else ``better`` if anything got better, else
        ``neutral`` for a change, ``same`` for none."""
        if not self.changed:
            return "same"
        for d in ("worse", "better"):
            if self.count(d):
                return d
        return "neutral"

    @property
    def regression(self) -> bool:
        if self.allowed or not self.changed:
            return False
        return self.strict or self.worse

    def to_json(self) -> dict[str, Any]:
        title, measure = CLASSES[self.cls]
        return {"class": self.cls, "title": title, "changed": self.changed,
                "regression": self.regression, "allowed": self.allowed,
                "verdict": self.verdict, "worse": self.count("worse"),
                "better": self.count("better"), "neutral": self.count("neutral"),
                "cases": len(self.cases), "map_sites": len(self.sites),
                "old": self.old_count, "new": self.new_count, "measure": measure,
                "example": self.example, "sites": self.sites}


def _short(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r["state"] != "returned":
        return f"{r['state']} (#MC {r['mc']}, #PF {r['pf']})"
    v = ",".join(r["violations"]) or "ok"
    extra = (f", #PF {r['pf']}" if r["pf"] else "") + (", tail retry" if r["retry"] else "")
    return f"returned {r['ret']} (copied {r['copied']}, #MC {r['mc']}{extra}, {v})"


def _miss(r: dict[str, Any], length: int) -> int | None:
    """How far a returned value is from the exact remainder (len - bytes copied)."""
    if r["ret"] is None:
        return None
    return abs(r["ret"] - (length - r["copied"]))


def judge(old: dict[str, Any], new: dict[str, Any], case: MCase | str
          ) -> list[tuple[str, str]]:
    """The classes one case's change falls in, each with its direction.

    Args:
        old, new: the case's outcome records (``compact``).
        case: the case (or only its fault kind, "none", "mc", "mc2", "pf").

    Returns:
        ``[(class, "worse" | "better" | "neutral"), ...]``; empty when the outcomes are equal.
    """
    if old == new:
        return []
    kind = case.kind if isinstance(case, MCase) else case
    length = case.length if isinstance(case, MCase) else None
    exactness = isinstance(case, MCase) and _oracle(case.routine) not in (Oracle.GET_USER,
                                                                           Oracle.PUT_USER)
    returned, panic, smap = State.RETURNED.value, State.PANIC.value, State.SMAP_VIOLATION.value
    out: list[tuple[str, str]] = []
    os_, ns = old["state"], new["state"]
    if os_ != ns:
        if ns == panic and "mc" in kind:
            out.append(("new_mc_panic", "worse"))
        elif os_ == panic and "mc" in kind:
            out.append(("new_mc_panic", "better"))       # a panic removed ...
            if ns == returned and new["violations"]:
                out.append(("new_violation", "worse"))   # ... for a wrong count (era C)
        elif ns == smap:
            out.append(("new_smap_violation", "worse"))
        elif os_ == smap:
            out.append(("new_smap_violation", "better"))
        else:
            out.append(("state_changed", "worse" if os_ == returned else
                        "better" if ns == returned else "neutral"))
    elif ns == returned:
        if old["ret"] != new["ret"]:
            d = "neutral"
            if exactness and length is not None:
                mo, mn = _miss(old, length), _miss(new, length)
                if mo is not None and mn is not None and mo != mn:
                    d = "better" if mn < mo else "worse"
            out.append(("return_changed", d))
        added = set(new["violations"]) - set(old["violations"])
        removed = set(old["violations"]) - set(new["violations"])
        if added:
            out.append(("new_violation", "worse"))
        elif removed:
            out.append(("new_violation", "better"))      # a violation removed
    if old["mc"] != new["mc"] and os_ == ns:   # with a state change, the state is the finding
        out.append(("mc_count_changed", "worse" if new["mc"] > old["mc"] else "better"))
    if not out:
        out.append(("other_change", "neutral"))
    return out


def classify(old: dict[str, Any], new: dict[str, Any], case: MCase | str) -> list[str]:
    """The classes one case's change falls in (empty when the outcomes are equal)."""
    return [c for c, _ in judge(old, new, case)]


def _measure(cls: str, results: dict[str, dict[str, Any]], keys: list[str]) -> int:
    rs = [results[k] for k in keys]
    if cls == "return_changed":
        return sum(1 for k, r in zip(keys, rs) if r["ret"] is not None
                   and r["ret"] == MCase.from_key(k).length - r["copied"])
    if cls == "new_violation":
        return sum(1 for r in rs if r["violations"])
    if cls == "new_mc_panic":
        return sum(1 for r in rs if r["state"] == "panic" and r["mc"])
    if cls == "mc_count_changed":
        return sum(r["mc"] for r in rs)
    if cls == "new_smap_violation":
        return sum(1 for r in rs if r["state"] == "smap_violation")
    if cls == "state_changed":
        return sum(1 for r in rs if r["state"] != "returned")
    if cls == "other_change":
        return sum(1 for r in rs if r["retry"])
    return 0


def _example(f: Finding, old: Side, new: Side, keys: list[str]) -> dict[str, Any]:
    best = min(keys, key=lambda k: MCase.from_key(k).minimality())
    c = MCase.from_key(best)
    ex: dict[str, Any] = {"case": c.describe(), "key": best, "direction": f.direction[best],
                          "old": _short(old.results[best]), "new": _short(new.results[best]),
                          "command": new.command(c),
                          "old_command": old.command(c) if old.run_prefix else None}
    if c.routine == CALLER:
        ex["case"] = (f"{c.describe()} (reaches {old.callers.get(c.cpu, '?')} in OLD, "
                      f"{new.callers.get(c.cpu, '?')} in NEW)")
    return ex


def compare(old: Side, new: Side, allow: set[str], *, strict: bool = False,
            cpu: str | None = None) -> dict[str, Finding]:
    """Case-by-case comparison of the matrix plus the static map diff, grouped by class.

    Args:
        old, new: the two sides, run.
        allow: classes accepted as intended.
        strict: any change is a regression, not only a worse one.
        cpu: only this CPU preset's cases and map sites (KTAP subtests).
    """
    found = {c: Finding(c, allowed=c in allow, strict=strict) for c in CLASSES}
    common = [k for k in old.results if k in new.results
              and (cpu is None or MCase.from_key(k).cpu == cpu)]
    for k in common:
        case = MCase.from_key(k)
        for cls, d in judge(old.results[k], new.results[k], case):
            found[cls].cases.append(k)
            found[cls].direction[k] = d
    for cls, f in found.items():
        if cls != "routine_added_or_removed":
            f.old_count = _measure(cls, old.results, common)
            f.new_count = _measure(cls, new.results, common)
        if f.cases:
            for d in DIRECTIONS:      # the reproducer shows the worst direction there is
                keys = [k for k in f.cases if f.direction[k] == d]
                if keys:
                    f.example = _example(f, old, new, keys)
                    break
    ra = found["routine_added_or_removed"]
    ra.old_count, ra.new_count = len(old.routines), len(new.routines)
    for name in sorted(set(old.routines) ^ set(new.routines)):
        side, what = (new, "added") if name in new.routines else (old, "removed")
        c = MCase(name, "none", "from", 4096, 0, 0, "none")
        # neutral: no copy behaves differently for it; what callers reach is compared as
        # copy_user_generic() (CALLER)
        ra.sites.append({"routine": name, "change": what, "direction": "neutral",
                         "command": side.command(c) if side.run_prefix else None})
    if ra.sites:
        s = ra.sites[0]
        ra.example = {"case": f"{s['routine']} {s['change']}", "key": None, "old": "-",
                      "new": "-", "command": s["command"], "old_command": None,
                      "direction": "neutral"}
    _static(old, new, found, cpu)
    return found


def _static(old: Side, new: Side, found: dict[str, Finding], only: str | None = None) -> None:
    """Fold the recoverability map diff in: a load whose #MC now panics is a new #MC panic
    (worse) even if no matrix case reaches it, one whose #MC is now recovered is better; an
    access that lost its entry is a state change (worse)."""
    hit = {new.panic_at[k] for k in found["new_mc_panic"].cases if k in new.panic_at}
    healed = {old.panic_at[k] for k in found["new_mc_panic"].cases if k in old.panic_at}
    seen: set[tuple[str, str, str]] = set()
    for cpu in MATRIX_CPUS:
        if only is not None and cpu != only:
            continue
        a, b = old.accesses.get(cpu), new.accesses.get(cpu)
        if a is None or b is None:
            continue
        for ch in umap.diff(a, b):
            if not ch.flag:
                continue
            acc = ch.after or ch.before
            assert acc is not None
            key = (acc.function, acc.text, ch.flag)
            if key in seen:
                continue
            seen.add(key)
            if "panics" in ch.flag:
                cls, d = "new_mc_panic", "worse"
            elif "now recovered" in ch.flag:
                cls, d = "new_mc_panic", "better"
            elif "oopses" in ch.flag or "without __ex_table" in ch.flag:
                cls, d = "state_changed", "worse"
            else:
                continue
            site = {"function": acc.function, "where": acc.where, "insn": acc.text,
                    "flag": ch.flag, "what": list(ch.what), "cpu": cpu,
                    "in_matrix": acc.where in (hit if d == "worse" else healed),
                    "direction": d,
                    "why": acc.why}
            found[cls].sites.append(site)


# ---- snapshots ----------------------------------------------------------------------------


def snapshot_json(side: Side) -> dict[str, Any]:
    return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "matrix": matrix_json(),
            "source": side.label, "era": side.era, "detected_era": side.detected,
            "routines": sorted(side.routines), "callers": dict(sorted(side.callers.items())),
            "conventions": {n: [r.convention.name, r.size]
                            for n, r in sorted(side.routines.items())},
            "map": {cpu: [x.to_json() for x in acc] for cpu, acc in sorted(side.accesses.items())},
            "cases": dict(sorted(side.results.items()))}


def dumps_snapshot(side: Side) -> str:
    """Deterministic text: sorted keys, one case per line (reviewable as a diff)."""
    d = snapshot_json(side)
    cases, amap = d.pop("cases"), d.pop("map")
    head = json.dumps(d, indent=1, sort_keys=True)
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                      for k, v in cases.items())
    maps = ",\n".join(f"  {json.dumps(cpu)}: [\n" + ",\n".join(
        f"   {json.dumps(x, sort_keys=True)}" for x in xs) + "\n  ]" for cpu, xs in amap.items())
    return (head[:-2] + ',\n "cases": {\n' + body + '\n },\n "map": {\n' + maps
            + "\n }\n}\n")


def _access(d: dict[str, Any]) -> umap.Access:
    return umap.Access(d["function"], int(d["address"], 16), d["where"], d["insn"],
                       d["access"], d["pointer"], d["extable"], d["fixup"], d["copyin"],
                       d["mc"], d["why"])


def load_snapshot(path: str) -> Side:
    """A snapshot file as the OLD side (no reproducer: only NEW can be re-run).

    Raises:
        InputError: unreadable, not a snapshot, or recorded with another matrix.
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such snapshot file (--against)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a snapshot (--against)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not an emu snapshot ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != SNAPSHOT_FORMAT:
        raise InputError(f"{path}: not an emu snapshot (no \"format\": \"{SNAPSHOT_FORMAT}\")")
    if d.get("version") != SNAPSHOT_VERSION:
        raise InputError(f"{path}: snapshot version {d.get('version')} (this emu reads "
                         f"{SNAPSHOT_VERSION}); record it again with emu snapshot")
    if d.get("matrix") != matrix_json():
        m = d.get("matrix")
        raise InputError(f"{path}: recorded with matrix "
                         f"{m.get('version') if isinstance(m, dict) else m}, "
                         f"this emu runs {MATRIX_VERSION}; record it again with emu snapshot "
                         "--force")
    try:
        side = Side(d["source"], None, era=d["era"],
                    detected=d["detected_era"])
        for n, (conv, size) in d["conventions"].items():
            side.routines[n] = Routine(n, cv.CONVENTIONS[conv], size)
        side.callers = {str(c): str(r) for c, r in d["callers"].items()}
        side.results = {k: dict(v) for k, v in d["cases"].items()}
        side.accesses = {cpu: tuple(_access(x) for x in xs) for cpu, xs in d["map"].items()}
        for k, v in side.results.items():
            MCase.from_key(k)
            v["state"], v["ret"], v["copied"], v["violations"], v["mc"], v["pf"], v["retry"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{path}: malformed emu snapshot") from None
    if d["era"] not in ERAS:
        raise InputError(f"{path}: unknown era '{d['era']}' in snapshot")
    # A snapshot stands for a whole matrix run: no cases, or cases missing or added by hand,
    # would make a check pass on what was never recorded.
    if not side.results and not any(side.accesses.values()):
        raise InputError(f"{path}: snapshot has no cases and no map; record it again with "
                         "emu snapshot")
    want = {c.key for c in matrix(sorted(side.routines))}
    if set(side.callers) - set(MATRIX_CPUS):
        raise InputError(f"{path}: snapshot callers name CPUs {', '.join(side.callers)}, "
                         f"not only {', '.join(MATRIX_CPUS)}")
    want |= {replace(c, routine=CALLER).key for cpu, r in side.callers.items()
             for c in matrix([r], (cpu,))}
    if set(side.results) != want:
        miss, extra = len(want - set(side.results)), len(set(side.results) - want)
        raise InputError(f"{path}: snapshot cases do not match the matrix of its routines "
                         f"({miss} missing, {extra} unexpected); record it again with "
                         "emu snapshot")
    return side


# ---- the commands -------------------------------------------------------------------------


def parse_allow(values: list[str]) -> set[str]:
    """``--allow`` values (repeatable, comma lists) → class names, each one checked."""
    out: set[str] = set()
    for v in values:
        for name in (x.strip() for x in v.split(",")):
            if not name:
                continue
            if name not in CLASSES:
                raise UsageError(f"--allow: unknown class '{name}' (classes: "
                                 f"{', '.join(CLASSES)})")
            out.add(name)
    return out


def rules_for(era: str | None, old: Side) -> str:
    """The era key both sides are judged by: ``era`` (a key, or "each"), else OLD's own."""
    if era is None:
        return old.era or detected_era(old)
    if era.lower() == "each":
        return "each"
    if era.upper() not in ERAS:
        raise UsageError(f"unknown --era '{era}' (known: {', '.join(ERAS)}, each)")
    return era.upper()


class SideError(InputError):
    """OLD or NEW cannot be read, assembled or run (``side`` says which): ``emu check
    --bisect`` skips a NEW it cannot build (exit 125) and stops on a bad OLD."""

    def __init__(self, message: str, side: str) -> None:
        super().__init__(message)
        self.side = side


@dataclass
class Result:
    old: Side
    new: Side
    findings: dict[str, Finding]
    common: list[str]
    allow: frozenset[str] = frozenset()
    strict: bool = False
    callers: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if any(f.regression for f in self.findings.values()) else 0

    @property
    def verdict(self) -> str:
        """``worse``, ``better``, ``neutral`` (changed, not ordered) or ``same``."""
        vs = {f.verdict for f in self.findings.values()}
        for v in ("worse", "better", "neutral"):
            if v in vs:
                return v
        return "same"

    def cpus(self) -> list[str]:
        """The CPU presets the matrix ran on (one KTAP subtest each)."""
        seen = {MCase.from_key(k).cpu for k in self.new.results}
        return [c for c in MATRIX_CPUS if c in seen or c in self.new.accesses]

    def for_cpu(self, cpu: str) -> dict[str, Finding]:
        """The findings of one CPU preset's cases and map sites."""
        return compare(self.old, self.new, set(self.allow), strict=self.strict, cpu=cpu)

    def to_json(self) -> dict[str, Any]:
        return {"old": _side_json(self.old), "new": _side_json(self.new),
                "matrix": {**matrix_json(), "routines": self.common,
                           "callers": {c: [self.old.callers[c], self.new.callers[c]]
                                       for c in self.callers},
                           "cases_per_side": sum(1 for k in self.new.results
                                                 if k in self.old.results)},
                "strict": self.strict, "verdict": self.verdict,
                "classes": [f.to_json() for f in self.findings.values()],
                "regressions": [c for c, f in self.findings.items() if f.regression],
                "improvements": [c for c, f in self.findings.items()
                                 if f.count("better")],
                "exit": self.exit_code}


def _side_json(s: Side) -> dict[str, Any]:
    return {"source": s.label, "era": s.era, "detected_era": s.detected,
            "routines": sorted(s.routines), "callers": dict(s.callers),
            "mce_rules": (s.mce.to_json() if s.mce else None)}


def _modern(key: str) -> bool:
    return ERAS[key].modern


def run_check(old_spec: Spec | None, new_spec: Spec, *, against: str | None = None,
              era: str | None = None, routines: list[str] | tuple[str, ...] = (),
              allow: set[str] | frozenset[str] = frozenset(), strict: bool = False) -> Result:
    """Run the matrix on OLD (or load the snapshot ``against``) and NEW, and compare.

    Args:
        old_spec: OLD's source (None with ``against``).
        new_spec: NEW's source.
        against: a snapshot file standing for OLD.
        era: an era key for both sides, "each" (each side its own), or None: OLD's, except
            across the v6.4 rewrite (one side era F), where each side uses its own because
            the EX_TYPE numbering itself changed.
        routines: only these routines (default: every routine emu can call in the files).
        allow: classes accepted as intended.
        strict: any change that is not allowed is a regression (default: only worse ones).

    Raises:
        SideError: OLD or NEW cannot be read, assembled or run (``.side`` says which).
        UsageError: the options do not fit the sources.
    """
    names = list(routines)

    def step(which: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SideError:
            raise
        except UsageError:
            raise
        except EmuError as e:
            raise SideError(str(e), which) from e

    if against:
        old = load_snapshot(against)
        new = step("new", side_of, new_spec)
        rules = old.era if era is None else rules_for(era, old)
        ndet = step("new", detected_era, new)
        if era is None and _modern(ndet) != _modern(old.era):
            rules = "each"
        step("new", prepare, new, ndet if rules == "each" else rules, names)
    else:
        assert old_spec is not None
        old = step("old", side_of, old_spec)
        odet = step("old", detected_era, old)
        new = step("new", side_of, new_spec)
        ndet = step("new", detected_era, new)
        rules = odet if era is None else rules_for(era, old)
        if era is None and _modern(ndet) != _modern(odet):
            rules = "each"
        if era is None:
            # the #MC rules of OLD's own tree (its severity.c) judge both sides, as the era
            # does; with each side on its own era, each side's tree rules
            old.mce = step("old", lambda: tree_rules(old.spec)[0])  # type: ignore[arg-type]
            new.mce = (step("new", lambda: tree_rules(new.spec)[0])  # type: ignore[arg-type]
                       if rules == "each" else old.mce)
        step("old", prepare, old, odet if rules == "each" else rules, names)
        step("new", prepare, new, ndet if rules == "each" else rules, names)
    if names:
        missing = [n for n in names if n not in old.routines and n not in new.routines]
        if missing:
            raise UsageError(f"--routine {', '.join(missing)}: defined in neither OLD nor NEW "
                             f"(NEW functions: {', '.join(new.functions) or 'none'})")
    common = [r for r in old.routines if r in new.routines]
    callers = caller_cpus(old, new, common)
    if not against:
        step("old", run_side, old, common, callers)
    step("new", run_side, new, common, callers)
    if not common and not callers and not set(old.routines) ^ set(new.routines) and not any(
            old.accesses.values()) and not any(new.accesses.values()):
        raise UsageError(f"{new.label}: nothing to compare: no routine emu knows how to call "
                         "and no instruction that touches user memory (name routines with "
                         f"--routine; functions: {', '.join(new.functions) or 'none'})")
    return Result(old, new, compare(old, new, set(allow), strict=strict), common,
                  frozenset(allow), strict, callers)


def run_snapshot(spec: Spec, *, era: str | None = None,
                 routines: list[str] | tuple[str, ...] = ()) -> Side:
    """Run the matrix on one source, for ``emu snapshot``."""
    side = side_of(spec)
    rules = detected_era(side) if era is None else era.upper()
    if rules not in ERAS:
        raise UsageError(f"unknown --era '{era}' (known: {', '.join(ERAS)})")
    prepare(side, rules, list(routines))
    run_side(side, list(side.routines), tuple(side.callers))
    if not side.routines and not any(side.accesses.values()):
        raise UsageError(f"{side.label}: nothing to record: no routine emu knows how to call "
                         "and no instruction that touches user memory (name routines with "
                         f"--routine; functions: {', '.join(side.functions) or 'none'})")
    return side
