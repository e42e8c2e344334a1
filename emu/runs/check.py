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
≤ v6.3 routines make 11936 cases per side.  __get_user_N helpers (getuser.S; address in rax,
kernel-facts §4b) get their own cells: user address at page offsets 0, 1, 0x3f and 0xfff
(straddling a line, a page), each clean, with an #MC on the line of the first and of the last
byte, and with a #PF on the page of the first and of the last byte (12 to 15 cases per CPU
path).

A CPU path whose assembled image is byte-identical to one already run (most ≤ v6.3 routines
have no ALTERNATIVE site) reuses that path's outcomes, and so does a NEW image identical to
OLD's (a comment-only change), because an image plus the era rules fully determine the
outcome.  Measured on the 2-core development machine (shared with other jobs), one process,
``emu check`` wall time including start-up and assembly: era-D.S vs era-E.S (4 routines,
2 x 11936 cases, 2 x 2984 distinct runs) 5.0 s; era-F.S vs a one-entry type change
(2 routines, 2 x 5968 cases; three distinct CPU images, 2 x 4476 runs) 6.6 s; a
comment-only change 2.8 s.  No worker pool is needed to stay under a minute.

Outcomes are compared case by case and each difference is put in a class (``CLASSES``, stable
names).  Every class that is not ``--allow``-ed and has at least one case or map site is a
regression: exit 1.  Bad input is exit 2 (``EmuError``).

Era rules: by default OLD's detected era (``emu.detect``) is used for both sides, because a CI
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

from emu.build.detect import GET_USER_SIZES, KNOWN_ROUTINES
from emu.build.resolve import Spec, resolve, source_of
from emu.caching import Bounded
from emu.core.machine import Buffers, State
from emu.errors import InputError, UsageError
from emu.kernel.eras import CPUS, ERAS, Routine, get_era
from emu.kernel.outcome import Outcome
from emu.runs import map as umap
from emu.runs.getuser import GetUserResult, run_get_user
from emu.runs.repro import case_options

MATRIX_VERSION = "std-1"
SNAPSHOT_FORMAT = "emu-check-snapshot"
SNAPSHOT_VERSION = 1

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
CLASSES: dict[str, tuple[str, str]] = {
    "return_changed": ("returned value changed", "cases returning the exact remainder"),
    "new_violation": ("new contract violation", "cases with a contract violation"),
    "new_mc_panic": ("new #MC panic", "cases ending in an #MC panic"),
    "mc_count_changed": ("#MC count changed", "machine checks taken over the matrix"),
    "new_smap_violation": ("new SMAP violation", "cases ending in a SMAP violation"),
    "routine_added_or_removed": ("routine added or removed", "routines"),
    "state_changed": ("other outcome state changed (oops, hang, fixed panic)",
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
        if self.routine in GET_USER_SIZES:
            return (f"{self.routine} cpu {self.cpu}, user address at page offset "
                    f"{self.src_align:#x}, {' '.join(faults) or 'no fault'}")
        return (f"{self.routine} cpu {self.cpu}, copy_{self.direction}_user len {self.length} "
                f"src+{self.src_align:#x} dst+{self.dst_align:#x}, "
                f"{' '.join(faults) or 'no fault'}")


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
        size = GET_USER_SIZES.get(r)
        if size is not None:
            for cpu in cpus:
                for sa in GET_USER_ALIGNS:
                    for kind, po, un in get_user_faults(size, sa):
                        out.append(MCase(r, cpu, "from", size, sa, 0, kind, po, un))
            continue
        for cpu in cpus:
            for d in MATRIX_DIRECTIONS:
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


def compact_get_user(g: GetUserResult) -> dict[str, Any]:
    """The same record for a __get_user_N call: ``ret`` is eax (0 / -EFAULT), ``copied`` the
    size when rdx holds the user value, and a verdict other than ok is the violation."""
    size = GET_USER_SIZES[g.name]
    mc = sum(1 for f in g.faults if f.kind == "mc")
    pf = sum(1 for f in g.faults if f.kind == "pf")
    return {"state": g.state.value, "ret": g.err,
            "copied": size if g.value is not None and g.value == g.expected else 0,
            "violations": [] if g.verdict in ("ok", g.state.value) else [g.verdict],
            "mc": mc, "pf": pf, "retry": False}


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
    distinct_runs: int = 0

    @property
    def run_prefix(self) -> list[str]:
        """``emu run`` and the source arguments, up to (not including) ``--era``."""
        if self.spec is None:
            return []
        return ["emu", "run", *replace(self.spec, era=None).run_args()]

    def command(self, c: MCase) -> str:
        return shlex.join([*self.run_prefix, "--era", self.era, *c.args()])


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


def _panic_site(o: Outcome | GetUserResult) -> str | None:
    for f in o.faults:
        if f.kind == "mc" and f.action == "panic":
            return f.where
    return None


def _targets(side: Side, cpus: tuple[str, ...]) -> dict[str, Any]:
    assert side.spec is not None
    spec = replace(side.spec, era=side.era)
    return {c: resolve(spec, CPUS[c]) for c in cpus}


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
    known.update({g: Routine(g, len_reg="rax", ret_reg="eax") for g in t.detection.get_user})
    if names:
        for n in names:
            if n in t.image.symbols:
                side.routines[n] = known.get(n) or KNOWN_ROUTINES.get(n) or (
                    Routine(n, len_reg="rax", ret_reg="eax") if n in GET_USER_SIZES
                    else Routine(n))
    else:
        side.routines = dict(known)


def run_side(side: Side, routines: list[str]) -> None:
    """Run the matrix for ``routines`` on ``side`` (results keyed by ``MCase.key``)."""
    targets = _targets(side, MATRIX_CPUS)
    for cpu, t in targets.items():
        fp = _fingerprint(t)
        cases = [c for c in matrix(routines, (cpu,))]
        for r in routines:
            memo_key = (fp, r)
            got = _MEMO.get(memo_key)
            if got is None:
                got = {}
                routine = side.routines[r]
                for c in cases:
                    if c.routine != r:
                        continue
                    if r in GET_USER_SIZES:
                        g = run_get_user(t, r, c.buffers())
                        got[_cpuless(c.key)] = (compact_get_user(g), _panic_site(g))
                    else:
                        o = t.run(routine, c.buffers())
                        got[_cpuless(c.key)] = (compact(o), _panic_site(o))
                    side.distinct_runs += 1
                _MEMO[memo_key] = got
            for c in cases:
                if c.routine == r:
                    rec, site = got[_cpuless(c.key)]
                    side.results[c.key] = rec
                    if site is not None:
                        side.panic_at[c.key] = site
        sev = t.settings.severity
        side.accesses[cpu] = umap.build(t.image, sev)


def _cpuless(key: str) -> str:
    parts = key.split("|")
    parts[1] = "*"
    return "|".join(parts)


# ---- comparing ----------------------------------------------------------------------------


@dataclass
class Finding:
    """One class of change: its cases, static map sites and the chosen reproducer."""

    cls: str
    cases: list[str] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)
    old_count: int = 0
    new_count: int = 0
    allowed: bool = False
    example: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.cases or self.sites)

    @property
    def regression(self) -> bool:
        return self.changed and not self.allowed

    def to_json(self) -> dict[str, Any]:
        title, measure = CLASSES[self.cls]
        return {"class": self.cls, "title": title, "changed": self.changed,
                "regression": self.regression, "allowed": self.allowed,
                "cases": len(self.cases), "map_sites": len(self.sites),
                "old": self.old_count, "new": self.new_count, "measure": measure,
                "example": self.example, "sites": self.sites}


def _short(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r["state"] != "returned":
        return f"{r['state']} (#MC {r['mc']}, #PF {r['pf']})"
    v = ",".join(r["violations"]) or "ok"
    return f"returned {r['ret']} (copied {r['copied']}, #MC {r['mc']}, {v})"


def classify(old: dict[str, Any], new: dict[str, Any], kind: str) -> list[str]:
    """The classes one case's change falls in (empty when the outcomes are equal)."""
    if old == new:
        return []
    out: list[str] = []
    if old["state"] != new["state"]:
        if new["state"] == State.PANIC.value and "mc" in kind:
            out.append("new_mc_panic")
        elif new["state"] == State.SMAP_VIOLATION.value:
            out.append("new_smap_violation")
        else:
            out.append("state_changed")
    elif new["state"] == State.RETURNED.value:
        if old["ret"] != new["ret"]:
            out.append("return_changed")
        if set(new["violations"]) - set(old["violations"]):
            out.append("new_violation")
    if old["mc"] != new["mc"] and old["state"] == new["state"]:
        out.append("mc_count_changed")   # with a state change, the state is the finding
    if not out:
        out.append("other_change")
    return out


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


def compare(old: Side, new: Side, allow: set[str]) -> dict[str, Finding]:
    """Case-by-case comparison of the matrix plus the static map diff, grouped by class."""
    found = {c: Finding(c, allowed=c in allow) for c in CLASSES}
    common = [k for k in old.results if k in new.results]
    for k in common:
        case = MCase.from_key(k)
        for cls in classify(old.results[k], new.results[k], case.kind):
            found[cls].cases.append(k)
    for cls, f in found.items():
        if cls != "routine_added_or_removed":
            f.old_count = _measure(cls, old.results, common)
            f.new_count = _measure(cls, new.results, common)
        if f.cases:
            best = min(f.cases, key=lambda k: MCase.from_key(k).minimality())
            c = MCase.from_key(best)
            f.example = {"case": c.describe(), "key": best, "old": _short(old.results[best]),
                         "new": _short(new.results[best]), "command": new.command(c),
                         "old_command": old.command(c) if old.run_prefix else None}
    ra = found["routine_added_or_removed"]
    ra.old_count, ra.new_count = len(old.routines), len(new.routines)
    for name in sorted(set(old.routines) ^ set(new.routines)):
        side, what = (new, "added") if name in new.routines else (old, "removed")
        c = MCase(name, "none", "from", 4096, 0, 0, "none")
        ra.sites.append({"routine": name, "change": what,
                         "command": side.command(c) if side.run_prefix else None})
    if ra.sites:
        s = ra.sites[0]
        ra.example = {"case": f"{s['routine']} {s['change']}", "key": None, "old": "-",
                      "new": "-", "command": s["command"], "old_command": None}
    _static(old, new, found)
    return found


def _static(old: Side, new: Side, found: dict[str, Finding]) -> None:
    """Fold the recoverability map diff in: a load whose #MC now panics is a new #MC panic
    even if no matrix case reaches it; an access that lost its entry is a state change."""
    hit = {new.panic_at[k] for k in found["new_mc_panic"].cases if k in new.panic_at}
    seen: set[tuple[str, str, str]] = set()
    for cpu in MATRIX_CPUS:
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
                cls = "new_mc_panic"
            elif "oopses" in ch.flag or "without __ex_table" in ch.flag:
                cls = "state_changed"
            else:
                continue
            site = {"function": acc.function, "where": acc.where, "insn": acc.text,
                    "flag": ch.flag, "what": list(ch.what), "cpu": cpu,
                    "in_matrix": acc.where in hit,
                    "why": acc.why}
            found[cls].sites.append(site)


# ---- snapshots ----------------------------------------------------------------------------


def snapshot_json(side: Side) -> dict[str, Any]:
    return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "matrix": matrix_json(),
            "source": side.label, "era": side.era, "detected_era": side.detected,
            "routines": sorted(side.routines),
            "conventions": {n: [r.len_reg, r.ret_reg, r.caller_stac]
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
        for n, (lr, rr, st) in d["conventions"].items():
            side.routines[n] = Routine(n, lr, rr, st)
        side.results = {k: dict(v) for k, v in d["cases"].items()}
        side.accesses = {cpu: tuple(_access(x) for x in xs) for cpu, xs in d["map"].items()}
        for k, v in side.results.items():
            MCase.from_key(k)
            v["state"], v["ret"], v["copied"], v["violations"], v["mc"], v["pf"], v["retry"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{path}: malformed emu snapshot") from None
    if d["era"] not in ERAS:
        raise InputError(f"{path}: unknown era '{d['era']}' in snapshot")
    return side


# ---- the commands -------------------------------------------------------------------------


def _allow(values: list[str]) -> set[str]:
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


@dataclass
class Result:
    old: Side
    new: Side
    findings: dict[str, Finding]
    common: list[str]

    @property
    def exit_code(self) -> int:
        return 1 if any(f.regression for f in self.findings.values()) else 0

    def to_json(self) -> dict[str, Any]:
        return {"old": _side_json(self.old), "new": _side_json(self.new),
                "matrix": {**matrix_json(), "routines": self.common,
                           "cases_per_side": sum(1 for k in self.new.results
                                                 if k in self.old.results)},
                "classes": [f.to_json() for f in self.findings.values()],
                "regressions": [c for c, f in self.findings.items() if f.regression],
                "exit": self.exit_code}


def _side_json(s: Side) -> dict[str, Any]:
    return {"source": s.label, "era": s.era, "detected_era": s.detected,
            "routines": sorted(s.routines)}


def run_check(old_spec: Spec | None, new_spec: Spec, *, against: str | None = None,
              era: str | None = None, routines: list[str] | tuple[str, ...] = (),
              allow: set[str] | frozenset[str] = frozenset()) -> Result:
    """Run the matrix on OLD (or load the snapshot ``against``) and NEW, and compare.

    Args:
        old_spec: OLD's source (None with ``against``).
        new_spec: NEW's source.
        against: a snapshot file standing for OLD.
        era: an era key for both sides, "each" (each side its own), or None (OLD's).
        routines: only these routines (default: every routine emu can call in the files).
        allow: classes accepted as intended.
    """
    names = list(routines)
    if against:
        old = load_snapshot(against)
        new = side_of(new_spec)
        rules = old.era if era is None else rules_for(era, old)
        prepare(new, detected_era(new) if rules == "each" else rules, names)
    else:
        assert old_spec is not None
        old, new = side_of(old_spec), side_of(new_spec)
        rules = rules_for(era, old)
        prepare(old, rules if rules != "each" else detected_era(old), names)
        prepare(new, rules if rules != "each" else detected_era(new), names)
    if names:
        missing = [n for n in names if n not in old.routines and n not in new.routines]
        if missing:
            raise UsageError(f"--routine {', '.join(missing)}: defined in neither OLD nor NEW "
                             f"(NEW functions: {', '.join(new.functions) or 'none'})")
    common = [r for r in old.routines if r in new.routines]
    if not against:
        run_side(old, common)
    run_side(new, common)
    if not common and not set(old.routines) ^ set(new.routines) and not any(
            old.accesses.values()) and not any(new.accesses.values()):
        raise UsageError(f"{new.label}: nothing to compare: no routine emu knows how to call "
                         "and no instruction that touches user memory (name routines with "
                         f"--routine; functions: {', '.join(new.functions) or 'none'})")
    return Result(old, new, compare(old, new, set(allow)), common)


def run_snapshot(spec: Spec, *, era: str | None = None,
                 routines: list[str] | tuple[str, ...] = ()) -> Side:
    """Run the matrix on one source, for ``emu snapshot``."""
    side = side_of(spec)
    rules = detected_era(side) if era is None else era.upper()
    if rules not in ERAS:
        raise UsageError(f"unknown --era '{era}' (known: {', '.join(ERAS)})")
    prepare(side, rules, list(routines))
    run_side(side, list(side.routines))
    if not side.routines and not any(side.accesses.values()):
        raise UsageError(f"{side.label}: nothing to record: no routine emu knows how to call "
                         "and no instruction that touches user memory (name routines with "
                         f"--routine; functions: {', '.join(side.functions) or 'none'})")
    return side
