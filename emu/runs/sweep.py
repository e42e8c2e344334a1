"""Sweeps: run a grid of cases on every core, judge each with the uaccess.h oracle, summarise.

The grid is variants × routines × CPU paths × directions × lengths × source/destination
alignments × fault kinds × fault offsets.  Each case is one ``Target.run`` and is judged by
``outcome.build`` — the contract of include/linux/uaccess.h plus the #MC invariants
(kernel-facts.md §1, §3).  The sweep adds an *outcome class* on top of the violation names:

* ``ok``     — returned, no violation.  (Then the return value is exactly len − bytes copied:
  a smaller count would leave copied bytes past the report, ``modified_past_reported``.)
* ``benign`` — returned with violations that a copy_from_user() caller does not notice,
  because it zero-pads [len − ret, len) (``BENIGN_FOR_COPY_FROM_USER``, §1 rule 5);
* ``violation`` — any other violation;
* the machine states ``smap_violation``, ``protection_fault``, ``system_instruction``, ``oops``,
  ``hang``, ``panic`` (``emu.core.records.State``);
* ``tool_error`` — the harness failed on this case (an exception, or the worker died).

Fault kinds: ``mc`` poisons the 64-byte source line holding the offset; ``mc2`` also poisons the
next line; ``pf`` makes the user page holding the offset not present (one case per page the
user buffer touches, so the #PF lands on a page boundary); ``pf2`` also unmaps the next user
page; ``mc+pf`` poisons the line and makes the next user page not present.

Execution: a small process pool of our own (``multiprocessing`` 'spawn' context, so no Unicorn
instance is ever forked).  Each worker builds and caches its own Targets.  A worker that dies
costs exactly one case, recorded as ``tool_error``; the rest of its batch is requeued and a new
worker is started.

Every byte of one 64-byte line poisons the same line (and every byte of one page unmaps the
same page), so the cases are grouped into *units*, one per distinct machine input: each unit
runs once, on its first case, and its outcome stands for every offset of the unit.  Results go
to the SQLite store of ``store.py``, one row per unit with its offsets, committed every half
second, so an interrupted sweep can be resumed without redoing or losing cases.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import operator
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from emu.build.resolve import Spec, parse_spec, resolve, source_of
from emu.caching import Bounded
from emu.core import layout as L
from emu.core.machine import Buffers, State
from emu.errors import EmuError, UsageError
from emu.kernel import conventions
from emu.kernel.conventions import Oracle, Routine
from emu.kernel.eras import Era, cpu_name, get_era, parse_cpu
from emu.kernel.outcome import BENIGN_FOR_COPY_FROM_USER, VIOLATIONS, Outcome
from emu.runs.faults import KINDS, count, placements
from emu.runs.repro import case_options
from emu.runs.shards import Shard
from emu.runs.store import Store

#: Outcome classes, from best to worst (the heatmap colours follow this order).
CLASSES: tuple[str, ...] = ("ok", "benign", "violation", "smap_violation",
                            "protection_fault", "system_instruction", "oops", "hang", "panic",
                            "tool_error")
#: Most cells a grid may have (see ``Grid.cells``): a grid is refused at once beyond this.
MAX_CELLS = 1_000_000
#: Most numbers one list option (``--len 0..4096``) may name.
MAX_LIST = 1 << 17
#: Copies this long and longer are fast-forwarded.  Below, a cell's recording (the clean run
#: through the Python path, a checkpoint per line) costs more than fast-forward saves its
#: cases.  Measured on one case per line, recording included (full / fast-forward): the
#: unrolled copy 0.55-0.68 at 4 KiB, 0.83 at 8 KiB, 1.03-1.09 at 16 KiB, 1.32-1.39 at
#: 32 KiB, 1.65-1.79 at 60 KiB; the rep-string routines, whose checkpoints fast-forward
#: skips, 0.78-0.95 at every length.  The catalog's 16 KiB part ran 4% faster without it,
#: its 64 KiB part 26% faster with it.  ``Target.run(fast_forward=True)`` itself is not
#: limited (the tests fast-forward short copies too).
FAST_FORWARD_FROM = 32768
#: Test hooks: a worker kills itself (SIGKILL), raises, or stalls on the case with this id.
#: A stalled worker waits until the process that started it is gone, then exits: the sweep
#: cannot finish, so a test can interrupt it at a moment of its choosing however fast it runs.
CRASH_ENV = "EMU_SWEEP_CRASH"
#: With the crash hook: a file; the worker crashes only if it does not exist yet, and makes
#: it first (a worker killed once, as by the OOM killer, rather than by a case).
CRASH_ONCE_ENV = "EMU_SWEEP_CRASH_ONCE"
RAISE_ENV = "EMU_SWEEP_RAISE"
STALL_ENV = "EMU_SWEEP_STALL"


# ---- cases and grids -------------------------------------------------------------------

_LINE_MASK, _PAGE_MASK = ~(L.LINE - 1), ~(L.PAGE - 1)


def fault_key(direction: str, src_align: int, dst_align: int, poison: tuple[int, ...],
              unmapped: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The poisoned lines and absent pages a case's faults hit (what the machine sees of
    them): the buffers' addresses are ``Buffers``' (``src``, ``user``), computed here
    without building one, as the sweep's parent keys every case of the grid."""
    if direction == "from":
        src = user = L.USER_WINDOW + src_align
    else:
        src, user = L.KERNEL_WINDOW + src_align, L.USER_WINDOW + dst_align
    return (tuple(sorted({(src + p) & _LINE_MASK for p in poison})),
            tuple(sorted({(user + p) & _PAGE_MASK for p in unmapped})))


def _moved(xs: tuple[int, ...], at: int, off: int) -> tuple[int, ...]:
    """Fault offsets ``xs`` with the one at ``at`` moved to ``off``."""
    return tuple(off if x == at else x for x in xs)


@dataclass(frozen=True, slots=True)
class Case:
    """One point of the grid: everything ``emu run`` needs to reproduce it."""

    variant: str
    routine: str
    cpu: str
    direction: str
    length: int
    src_align: int
    dst_align: int
    kind: str
    offset: int
    poison: tuple[int, ...]
    unmapped: tuple[int, ...]
    era: str | None = None
    #: The variant's source spec (not part of the id or the record: ``variant`` names it).
    spec: Spec | None = None

    @property
    def source(self) -> Spec:
        return self.spec if self.spec is not None else parse_spec(self.variant, era=self.era)

    @property
    def id(self) -> str:
        """A stable key: resume uses it to know which cases are done."""
        return (f"{self.variant}|{self.era or ''}|{self.routine}|{self.cpu}|{self.direction}|"
                f"{self.length}|{self.src_align:#x}|{self.dst_align:#x}|{self.kind}|"
                f"{self.offset:#x}")

    def input_key(self) -> tuple[Any, ...]:
        """What the machine sees: cases with the same key have the same outcome (every byte
        of a line poisons that line, every byte of a page unmaps that page)."""
        return (self.variant, self.era, self.routine, self.cpu, self.direction, self.length,
                self.src_align, self.dst_align,
                *fault_key(self.direction, self.src_align, self.dst_align, self.poison,
                           self.unmapped))

    def buffers(self) -> Buffers:
        return Buffers(direction=self.direction, length=self.length, src_align=self.src_align,
                       dst_align=self.dst_align, poison=self.poison, unmapped=self.unmapped)

    def command(self) -> str:
        """The ``emu run`` command line that reproduces this case."""
        return " ".join(["emu", "run", *self.source.run_args(), *case_options(self)])

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "routine": self.routine, "cpu": self.cpu,
                "direction": self.direction, "length": self.length,
                "src_align": self.src_align, "dst_align": self.dst_align, "kind": self.kind,
                "offset": self.offset, "poison": list(self.poison),
                "unmapped": list(self.unmapped), "era": self.era}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Case:
        return cls(**{**d, "poison": tuple(d["poison"]), "unmapped": tuple(d["unmapped"]),
                      "spec": None})

    def minimality(self) -> tuple[int, ...]:
        """Sort key: smaller means a simpler reproducer."""
        return (self.length, len(self.poison) + len(self.unmapped), self.src_align,
                self.dst_align, self.offset)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the constructor's arguments: the default for a slotted dataclass calls
        # fields() per object, and every unit crosses to a worker (3x faster dumps, 2x loads).
        return (Case, _case_fields(self))


_case_fields = operator.attrgetter(*(f.name for f in fields(Case)))


@dataclass(frozen=True, slots=True)
class Variant:
    """A variant as the sweep sees it: its source spec and the routines it offers.

    ``spec`` is the variant as typed (the ``variant`` field of its cases); ``catalog`` is the
    era (era keys) or the file's detection, which names its routines and the CPU's choice.
    """

    spec: str
    source: Spec
    catalog: Any

    @property
    def era(self) -> Era | None:
        return get_era(self.source.value) if self.source.kind == "era" else None

    @property
    def rules(self) -> str | None:
        return self.source.era

    @property
    def label(self) -> str:
        return self.source.value if self.source.kind == "era" else Path(self.spec).name


def variant_of(spec: Spec) -> Variant:
    """A spec → a sweep variant; the source is read (and a built file loaded) here, once,
    so a bad variant fails before any worker starts."""
    if spec.kind == "era" and not spec.patches:
        return Variant(spec.text, spec, get_era(spec.value))
    if spec.kind in ("object", "vmlinux"):
        return Variant(spec.text, spec, resolve(spec, frozenset()).catalog)
    from emu.build.detect import detect
    src = source_of(spec)
    return Variant(spec.text, spec, detect(src.text, name=src.name,
                                           forced=spec.era or (spec.value if spec.kind == "era"
                                                               else None)))


def parse_variant(text: str, rules: str | None) -> Variant:
    """A variant as typed (era key, .S file, debian:…, .o, vmlinux:…) with ``--era`` rules."""
    return variant_of(parse_spec(text, era=rules))


@dataclass(frozen=True, slots=True)
class Grid:
    """The sweep space.  ``routines`` empty means "the routine the CPU selects"."""

    variants: tuple[Variant, ...]
    routines: tuple[str, ...] = ()
    cpus: tuple[str, ...] = ("none",)
    directions: tuple[str, ...] = ("from",)
    lengths: tuple[int, ...] = (4096,)
    src_aligns: tuple[int, ...] = (0,)
    dst_aligns: tuple[int, ...] = (0,)
    kinds: tuple[str, ...] = ("mc",)
    step: int = 1
    offsets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.variants:
            raise UsageError("sweep: no variants")
        for k in self.kinds:
            if k not in KINDS:
                raise UsageError(f"unknown fault kind '{k}' (known: {', '.join(KINDS)})")
        if self.step < 1:
            raise UsageError(f"--step must be at least 1, not {self.step}")
        for c in self.cpus:
            parse_cpu(c)
        for v in self.variants:
            if not self.routines and not v.catalog.routines:
                raise UsageError(f"{v.spec}: no copy routine emu knows how to call in it; "
                                 "name one with --routine")
            for r in self.routines:
                if v.era is not None and r != "all":
                    v.era.routine(r)
                elif r != "all":
                    conventions.routine(r)
        # Checked arithmetically (extremes only): a grid is never walked to be validated.
        aligns = self.src_aligns + self.dst_aligns
        if not self.lengths or not self.src_aligns or not self.dst_aligns:
            raise UsageError("sweep: empty length or alignment list")
        bad_a = next((a for a in aligns if not 0 <= a < L.PAGE), None)
        if bad_a is not None or min(self.lengths) < 0 or \
                max(self.lengths) + max(aligns) > L.MAX_SPAN:
            n = min(self.lengths) if min(self.lengths) < 0 else max(self.lengths)
            a = bad_a if bad_a is not None else max(aligns)
            raise UsageError(f"len {n} with alignment {a:#x} does not fit the "
                             f"{L.MAX_SPAN}-byte buffer window (alignment < {L.PAGE})")
        cells = self.cells()
        if cells > MAX_CELLS:
            raise UsageError(f"sweep: the grid has {cells:,} cells (variant × CPU path × "
                             f"routine × direction × length × alignments × fault kind), more "
                             f"than {MAX_CELLS:,}; sweep fewer lengths or alignments")

    def routines_for(self, v: Variant, cpu: frozenset[str]) -> list[Routine]:
        cat = v.catalog
        if not self.routines:
            return [cat.select_routine(cpu)]
        if "all" in self.routines:
            return list(cat.routines)
        if v.era is not None:
            return [v.era.routine(r) for r in self.routines]
        return [conventions.routine(r) for r in self.routines]

    def paths(self) -> Iterator[tuple[Variant, str, Routine]]:
        """(variant, CPU name, routine) in grid order."""
        for v in self.variants:
            seen: set[str] = set()
            for cname in self.cpus:
                cpu = parse_cpu(cname)
                if cpu_name(cpu) in seen:      # "erms" and "ERMS": one path
                    continue
                seen.add(cpu_name(cpu))
                for r in self.routines_for(v, cpu):
                    _sweepable(r, self.directions)
                    yield v, cpu_name(cpu), r

    def cells(self) -> int:
        """How many (path, direction, length, alignments, kind) cells the grid has: O(paths)."""
        paths = sum(1 for _ in self.paths())
        return (paths * len(self.directions) * len(self.lengths) * len(self.src_aligns)
                * len(self.dst_aligns) * len(self.kinds))

    def count(self) -> int:
        """How many cases the grid has, counted arithmetically (``faults.count``, O(1) a
        cell) and never enumerated.  A kind's count depends on the length and at most one
        alignment (the source's for #MC kinds, the user buffer's for #PF kinds), so the
        cost is O(lengths × alignments), not O(cases)."""
        per_path = 0
        for d in self.directions:
            for k in self.kinds:
                kind = KINDS[k]
                on_user = kind.per_page or kind.second == "page"
                user_dst = on_user and d != "from"   # the user buffer is the destination
                outer = self.dst_aligns if user_dst else self.src_aligns
                other = len(self.src_aligns) if user_dst else len(self.dst_aligns)
                for n in self.lengths:
                    for a in outer:
                        sa, da = (0, a) if user_dst else (a, a)
                        per_path += other * count(k, n, sa, da, d, self.step, self.offsets)
        return per_path * sum(1 for _ in self.paths())

    def cases(self) -> Iterator[Case]:
        """Every case, in a fixed order (offsets innermost), made lazily."""
        for v, cpu, r in self.paths():
            for d in self.directions:
                for n in self.lengths:
                    for sa in self.src_aligns:
                        for da in self.dst_aligns:
                            for k in self.kinds:
                                for off, poison, unmapped in placements(
                                        k, n, sa, da, d, self.step, self.offsets):
                                    yield Case(v.spec, r.name, cpu, d, n, sa, da, k, off,
                                               poison, unmapped, v.rules, v.source)

    def units(self) -> Iterator[Unit]:
        """The grid's units in id order, made lazily: the cases of one unit never span
        two cells, so one cell's cases (at most ``MAX_SPAN``) are grouped at a time.
        The ids are those ``units(grid.cases())`` gives."""
        next_id = 0
        for v, cpu, r in self.paths():
            for d in self.directions:
                for n in self.lengths:
                    for sa in self.src_aligns:
                        for da in self.dst_aligns:
                            for k in self.kinds:
                                case = functools.partial(Case, v.spec, r.name, cpu, d, n, sa,
                                                         da, k, era=v.rules, spec=v.source)
                                cell = placements(k, n, sa, da, d, self.step, self.offsets)
                                for u in cell_units(cell, case, d, sa, da, next_id):
                                    next_id = u.id + 1
                                    yield u

    def to_json(self) -> dict[str, Any]:
        return {"variants": [v.spec for v in self.variants], "routines": list(self.routines),
                "cpus": list(self.cpus), "directions": list(self.directions),
                "lengths": list(self.lengths), "src_aligns": list(self.src_aligns),
                "dst_aligns": list(self.dst_aligns), "kinds": list(self.kinds),
                "step": self.step, "offsets": list(self.offsets)}


def _sweepable(r: Routine, directions: tuple[str, ...]) -> None:
    """Refuse a routine a sweep cannot run: a get_user / put_user helper (one value, not a
    range of offsets), or a clear routine with a copy to user (it has one user buffer)."""
    conv = r.convention
    if conv.oracle in (Oracle.GET_USER, Oracle.PUT_USER):
        raise UsageError(f"sweep: {r.name} takes the {conv.name} convention; sweeps run copy "
                         "and clear routines (emu run and emu check run it)")
    if conv.oracle is Oracle.CLEAR and directions != ("from",):
        raise UsageError(f"sweep: {r.name} has one user buffer ({conv.name} convention): "
                         "--direction does not apply")


@dataclass(frozen=True, slots=True)
class Unit:
    """One distinct machine input of a grid: its first case and the offsets it stands for.

    ``id`` is the unit's position in the grid's case order, so it is the same for the same
    grid however the sweep is run (the store's run id)."""

    id: int
    case: Case
    offsets: tuple[int, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Unit, (self.id, self.case, self.offsets))

    def cases(self) -> Iterator[Case]:
        """The cases of the unit (the first case with each offset)."""
        first = self.case.offset
        for off in self.offsets:
            yield self.case if off == first else member(self.case, off)


def member(case: Case, off: int) -> Case:
    """The case of ``case``'s unit at offset ``off``: the fault that sat at the case's
    offset moves to ``off``, the others (a next line or page) stay."""
    at = case.offset
    return Case(case.variant, case.routine, case.cpu, case.direction, case.length,
                case.src_align, case.dst_align, case.kind, off, _moved(case.poison, at, off),
                _moved(case.unmapped, at, off), case.era, case.spec)


def units(cases: Iterable[Case], first_id: int = 0) -> list[Unit]:
    """Group cases by machine input, in the order of each group's first case (ids from
    ``first_id``)."""
    groups: dict[tuple[Any, ...], list[Case]] = {}
    for c in cases:
        groups.setdefault(c.input_key(), []).append(c)
    out: list[Unit] = []
    for cs in groups.values():
        if any(member(cs[0], c.offset) != c for c in cs[1:]):   # not one fault moving
            out.extend(Unit(first_id + len(out) + i, c, (c.offset,)) for i, c in enumerate(cs))
            continue
        out.append(Unit(first_id + len(out), cs[0], tuple(c.offset for c in cs)))
    return out


def cell_units(cell: Iterable[tuple[int, tuple[int, ...], tuple[int, ...]]],
               case: Callable[[int, tuple[int, ...], tuple[int, ...]], Case], direction: str,
               src_align: int, dst_align: int, first_id: int) -> list[Unit]:
    """``units`` of one cell's cases, given as their (offset, poison, unmapped) and a
    ``case`` maker: the same units, but a ``Case`` is made only for each unit's first case.
    Within a cell only the faults differ, so the input key is the lines and pages they hit
    (``fault_key``) and a member check compares only the faults (``member``)."""
    groups: dict[tuple[Any, ...], list[tuple[int, tuple[int, ...], tuple[int, ...]]]] = {}
    for c in cell:
        key = fault_key(direction, src_align, dst_align, c[1], c[2])
        g = groups.get(key)
        if g is None:
            groups[key] = [c]
        else:
            g.append(c)
    out: list[Unit] = []
    for cs in groups.values():
        at, fp, fu = cs[0]
        if all(p == _moved(fp, at, off) and u == _moved(fu, at, off) for off, p, u in cs[1:]):
            out.append(Unit(first_id + len(out), case(*cs[0]), tuple(c[0] for c in cs)))
        else:                                               # not one fault moving
            out.extend(Unit(first_id + len(out) + i, case(*c), (c[0],))
                       for i, c in enumerate(cs))
    return out


def parse_ints(text: str) -> tuple[int, ...]:
    """``"64,100..110,0x7e0"`` → numbers; ``a..b`` is inclusive, ``a..b/s`` steps by s."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if ".." in part:
                lo, _, rest = part.partition("..")
                hi, _, st = rest.partition("/")
                r = range(int(lo, 0), int(hi, 0) + 1, int(st, 0) if st else 1)
                if len(out) + len(r) > MAX_LIST:     # len(range) is O(1): nothing is built
                    raise UsageError(f"'{text}' names more than {MAX_LIST} numbers")
                out.extend(r)
            else:
                out.append(int(part, 0))
            if len(out) > MAX_LIST:
                raise UsageError(f"'{text}' names more than {MAX_LIST} numbers")
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"'{text}' is not a list of numbers (e.g. 64,128..256/8)") from None
    if not out:
        raise UsageError(f"'{text}' names no numbers")
    return tuple(dict.fromkeys(out))


# ---- classifying one outcome -------------------------------------------------------------


def classify(o: Outcome, direction: str) -> str:
    """The outcome class of one run (see the module docstring)."""
    if o.state is not State.RETURNED:
        return o.state.value
    if o.violations:
        benign = direction == "from" and set(o.violations) <= BENIGN_FOR_COPY_FROM_USER
        return "benign" if benign else "violation"
    return "ok"


def record(case: Case, o: Outcome) -> dict[str, Any]:
    """The JSON record of one case."""
    exact = o.length - o.bytes_copied
    ret = o.return_value
    return {"id": case.id, "case": case.to_json(), "class": classify(o, case.direction),
            "state": o.state.value, "return_value": ret, "exact": exact,
            "error": None if ret is None else ret - exact, "bytes_copied": o.bytes_copied,
            "violations": list(o.violations), "mc": o.mc_count, "pf": o.pf_count,
            "tail_retry": o.retouched, "message": o.message}


def error_record(case: Case, message: str) -> dict[str, Any]:
    return {"id": case.id, "case": case.to_json(), "class": "tool_error", "state": None,
            "return_value": None, "exact": None, "error": None, "bytes_copied": None,
            "violations": [], "mc": 0, "pf": 0, "tail_retry": False, "message": message}


# ---- running cases (in workers) ---------------------------------------------------------


class Runner:
    """Runs cases in this process, caching Targets and outcomes of identical machine inputs."""

    def __init__(self) -> None:
        self._memo: Bounded[tuple[Any, ...], Outcome] = Bounded(4096, "sweep.outcomes")
        self._crash = os.environ.get(CRASH_ENV)
        self._raise = os.environ.get(RAISE_ENV)
        self._stall = os.environ.get(STALL_ENV)
        self._last: tuple[tuple[Any, ...], tuple[Any, Routine]] | None = None

    def target_and_routine(self, case: Case) -> tuple[Any, Routine]:
        """The case's target (through the one resolver) and its routine.

        Units come in grid order, so one path's runs follow each other: the last path's
        target is kept and reused until the path changes.  A spec names its content (an
        era key, inline text, a shipped image's digest) or a file this runner's sweep
        reads, so the same spec means the same target for the runner's life."""
        key = (case.source, case.cpu, case.routine)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        t = resolve(case.source, parse_cpu(case.cpu), routine=case.routine)
        got = (t, t.routine_for(case.routine))
        self._last = (key, got)
        return got

    def outcome(self, case: Case, members: Sequence[str] = ()) -> tuple[Outcome, bool]:
        """Run (or reuse) one case; returns the outcome and whether it was reused."""
        ids = set(members) or {case.id}
        if self._crash in ids:
            once = os.environ.get(CRASH_ONCE_ENV)
            if once is None or _first_time(once):
                os.kill(os.getpid(), signal.SIGKILL)
        if self._raise in ids:
            raise RuntimeError(f"test hook {RAISE_ENV} raised on {self._raise}")
        if self._stall in ids:
            parent = os.getppid()
            while os.getppid() == parent:
                time.sleep(0.05)
            os._exit(0)
        b = case.buffers()
        key = case.input_key()
        hit = self._memo.get(key)
        if hit is not None:
            return hit, True
        t, r = self.target_and_routine(case)
        # same outcome as a full run either way (Machine.record)
        o = t.run(r, b, fast_forward=b.length >= FAST_FORWARD_FROM)
        self._memo[key] = o
        return o, False

    def run(self, case: Case, members: Sequence[str] = ()) -> dict[str, Any]:
        """One case → its record; harness failures become ``tool_error`` records.

        ``members`` are the ids of the cases the run stands for (the test hooks fire on any
        of them; default: the case itself)."""
        try:
            o, _ = self.outcome(case, members)
        except EmuError as e:
            return error_record(case, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - any harness failure is recorded, not fatal
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return error_record(case, f"{type(e).__name__}: {e} ({Path(tb.filename).name}:"
                                f"{tb.lineno})")
        return record(case, o)

    def run_unit(self, unit: Unit) -> dict[str, Any]:
        """One unit → the record of its first case."""
        hooks = {self._crash, self._raise, self._stall} - {None}
        members = [c.id for c in unit.cases()] if hooks else []
        return self.run(unit.case, members)


#: Most seconds the pool's parent waits for records before it lets the store commit.
TICK = 0.25
#: Seconds a worker holds finished records before it sends them (one message for many
#: records: per record, the pipe, the pickling and the parent's wake-up cost more than a
#: short run).  Eager batches send each record as soon as it is made.
SEND_EVERY = 0.05


def _first_time(path: str) -> bool:
    """Make ``path``; False if it was there already (the crash-once test hook)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive ``(batch of units, eager)``, send their records in order as
    lists (each unit's alone when ``eager``, else every ``SEND_EVERY`` seconds), then
    ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = Runner()
    clock = time.monotonic
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        batch, eager = msg
        try:
            out: list[dict[str, Any]] = []
            last = clock()
            for unit in batch:
                out.append(runner.run_unit(unit))
                if eager or clock() - last >= SEND_EVERY:
                    conn.send(out)
                    out = []
                    last = clock()
            if out:
                conn.send(out)
            conn.send(None)
        except (BrokenPipeError, OSError):  # the parent is gone: stop quietly
            return


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    batch: list[Unit]
    returned: int = 0
    eager: bool = False


OnRecord = Callable[[Unit, dict[str, Any]], None]
#: An execution backend: runs the units, reporting each unit's record through ``on_record``
#: in this process (``emu.runs.cluster.dask_backend`` is one).
Backend = Callable[[Sequence[Unit], OnRecord], None]


def run_parallel(todo_units: Iterable[Unit], jobs: int, on_record: OnRecord,
                 tick: Callable[[], None] | None = None) -> None:
    """Run units on ``jobs`` spawned worker processes; ``on_record`` sees each unit's record.

    Units are drawn from ``todo_units`` as workers need them (a look-ahead of a few batches
    per worker), so a lazy source is never materialised.  A worker sends its records a
    few at a time (``SEND_EVERY``).  A worker that dies (signal, os._exit, segfault in
    Unicorn) costs only the unit it was running: the units of its batch it had not reported
    are run again in an *eager* batch, whose worker sends each record as soon as it is
    made, so that the unit a worker dies on is known exactly; that unit is reported as
    ``tool_error`` and the rest of its batch is requeued.  ``tick`` is called at least every
    ``TICK`` seconds, records or not (the store commits from it).
    """
    ctx = mp.get_context("spawn")
    source = iter(todo_units)
    todo: deque[Unit] = deque()
    suspects: deque[Unit] = deque()    # not reported by a worker that died: run eagerly
    ahead = 2 * max(1, jobs) * 64      # enough to size batches as if the total were known
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(todo) < ahead:
            u = next(source, None)
            if u is None:
                exhausted = True
            else:
                todo.append(u)

    workers: list[_Worker] = []

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        p.start()
        child.close()
        return _Worker(p, parent, [])

    def batch_size() -> int:
        return max(1, min(64, len(todo) // (2 * max(1, jobs)) or 1))

    fill()
    if not todo:
        return
    if len(todo) < 2:
        run_serial(todo, on_record)
        return
    try:
        workers = [start() for _ in range(max(1, min(jobs, len(todo))))]
        while True:
            fill()
            for w in workers:
                if not w.batch and (todo or suspects):
                    w.eager = bool(suspects)
                    q = suspects if w.eager else todo
                    w.batch = [q.popleft() for _ in range(min(batch_size(), len(q)))]
                    w.returned = 0
                    w.conn.send((w.batch, w.eager))
            busy = [w for w in workers if w.batch]
            if not busy:
                break
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                         timeout=TICK)
            if tick is not None:
                tick()
            for i, w in enumerate(list(workers)):
                if not w.batch or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                dead = False
                try:
                    while w.batch and w.conn.poll():
                        msg = w.conn.recv()
                        if msg is None:
                            w.batch = []
                        else:
                            for rec in msg:
                                on_record(w.batch[w.returned], rec)
                                w.returned += 1
                except (EOFError, OSError):
                    dead = True
                if w.batch and (dead or not w.proc.is_alive()):
                    w.proc.join()
                    if w.eager:          # it died on the unit after the last it reported
                        crashed = w.batch[w.returned]
                        on_record(crashed, error_record(
                            crashed.case, f"worker died (exit code {w.proc.exitcode}) "
                            "while running this case"))
                        todo.extendleft(reversed(w.batch[w.returned + 1:]))
                    else:                # somewhere after it: find out, one record at a time
                        suspects.extendleft(reversed(w.batch[w.returned:]))
                    w.conn.close()
                    workers[i] = start()
    finally:
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()


def run_serial(todo_units: Iterable[Unit], on_record: OnRecord) -> None:
    """Run units in this process (``--jobs 1``)."""
    runner = Runner()
    for u in todo_units:
        on_record(u, runner.run_unit(u))


# ---- summary ------------------------------------------------------------------------------


def stored_summary(grid: Grid, store: Store) -> dict[str, Any]:
    """Per variant of ``grid``: counts per outcome class and per violation of the runs
    ``store`` holds, each with a minimal reproducer (the smallest case by length, fault
    count, alignment, offset; a unit's first case is its smallest; on a tie the first run
    in id order).  Streamed from the store: memory does not grow with the number of runs,
    and a ``Case`` is built only for a run that becomes some count's reproducer."""
    variants: dict[str, dict[str, Any]] = {}
    best: dict[tuple[str, str, str], tuple[int, ...]] = {}
    order = {v.spec: v for v in grid.variants}
    specs = {v.spec: v.source for v in grid.variants}
    mc_first = {name for name, k in KINDS.items() if k.first == "mc"}
    for spec in order:
        variants[spec] = {"label": order[spec].label, "cases": 0, "runs": 0, "classes": {},
                          "violations": {}}
    for (_rid, variant, era, routine, cpu, direction, length, sa, da, kind, poison, unmapped,
         weight, cls, message, violations) in store.summary_rows():
        v = variants.get(variant)
        if v is None:
            continue
        v["cases"] += weight
        v["runs"] += 1
        p = tuple(int(x) for x in poison.split(",")) if poison else ()
        u = tuple(int(x) for x in unmapped.split(",")) if unmapped else ()
        first = p[0] if kind in mc_first else u[0]
        key = (length, len(p) + len(u), sa, da, first)       # Case.minimality
        for group, name in (("classes", cls), *(("violations", x) for x in violations)):
            slots = v[group]
            slot = slots.get(name)
            if slot is None:
                slot = slots[name] = {"count": 0}
            slot["count"] += weight
            k = (variant, group, name)
            b = best.get(k)
            if b is None or key < b:
                best[k] = key
                case = Case(variant, routine, cpu, direction, length, sa, da, kind, first, p,
                            u, era, specs.get(variant))
                slot["example"] = case.command()
                if message:
                    slot["message"] = message
                elif "message" in slot:
                    del slot["message"]
    for spec, v in variants.items():
        for name, slot in v["violations"].items():
            slot["benign_for_copy_from_user"] = name in BENIGN_FOR_COPY_FROM_USER
            slot["meaning"] = VIOLATIONS.get(name, "")
        v["classes"] = {c: v["classes"][c] for c in CLASSES if c in v["classes"]}
        v["violations"] = dict(sorted(v["violations"].items()))
    total = sum(v["cases"] for v in variants.values())
    return {"grid": grid.to_json(), "cases": total, "variants": variants}


def case_records(todo_units: Iterable[Unit],
                 outcomes: dict[int, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The JSON record of every case of the units that have an outcome, in grid order."""
    for u in todo_units:
        rec = outcomes.get(u.id)
        if rec is None:
            continue
        for c in u.cases():
            yield {"id": c.id, "case": c.to_json(), "violations": list(rec["violations"]),
                   **{k: v for k, v in rec.items() if k != "violations"}}


def stored_case_records(grid: Grid, store: Store) -> Iterator[dict[str, Any]]:
    """The JSON record of every stored case, in grid order (the JSON-lines export and the
    pictures), streamed (``stored_units``)."""
    for u, rec in stored_units(grid, store):
        yield from case_records((u,), {u.id: rec})


def stored_units(grid: Grid, store: Store) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Every stored unit with its outcome record, in grid order: the grid's units and the
    store's runs, both in id order, merged as streams (nothing is held in memory)."""
    runs = ((rid, rec) for rid, _n, _c, rec in store.iter_runs())
    nxt = next(runs, None)
    for u in grid.units():
        while nxt is not None and nxt[0] < u.id:
            nxt = next(runs, None)
        if nxt is None:
            return
        if nxt[0] == u.id:
            yield u, nxt[1]


#: ``progress(cases done, cases to do)``, called after each unit.
Progress = Callable[[int, int], None]


def todo_units(grid: Grid, store: Store, max_cases: int | None,
               shard: Shard | None = None) -> Iterator[Unit]:
    """The grid's (or shard's) units the store lacks, lazily, up to ``max_cases`` cases
    (whole units).  Memory: the stored ids (8 bytes a run), never the grid."""
    have = store.done_ids()
    i = 0
    budget = max_cases
    for u in grid.units():
        if shard is not None and not shard.owns(u.case.id):
            continue
        while i < len(have) and have[i] < u.id:
            i += 1
        if i < len(have) and have[i] == u.id:
            continue
        if budget is not None and budget <= 0:
            return
        yield u
        if budget is not None:
            budget -= len(u.offsets)


def execute(grid: Grid, store: Store, *, jobs: int, max_cases: int | None = None,
            progress: Progress | None = None, shard: Shard | None = None,
            backend: Backend | None = None) -> dict[str, Any]:
    """Run the units of ``grid`` that ``store`` does not have yet, then summarise the grid.

    The grid is never built as a list: units are made lazily, cell by cell, and counted
    arithmetically (``Grid.count``), so ``max_cases`` bounds the work and the memory.

    Args:
        grid: the sweep space.
        store: the results store (runs already there are not redone).
        jobs: worker processes; 1 runs in this process.
        max_cases: stop once this many new cases are done (whole units; the rest is left
            for ``--resume``).
        progress: called as ``progress(cases done, cases to do)`` after each unit (the CLI
            passes ``emu.render.report.SweepProgress``); None shows nothing.
        shard: run and summarise only this shard's units (``emu.runs.shards``); a shard's
            size is known unit by unit (a hash), so it is counted in one lazy pass.
        backend: runs the units instead of the local pool (e.g. on a Dask cluster);
            records still reach ``store`` in this process, as they finish.  It is given
            the units to run as a list (bounded by ``max_cases`` when that is set).

    Returns:
        The summary (``pending``: the grid's, or shard's, cases not in the store); it is
        streamed from the store, and ``stored_units`` gives the stored units themselves.
    """
    if shard is None:
        total_cases = grid.count()
    else:
        total_cases = sum(len(u.offsets) for u in grid.units() if shard.owns(u.case.id))
    store.verify(max_cases=total_cases, variants={v.spec for v in grid.variants},
                 kinds=set(grid.kinds))
    remaining = total_cases - store.stored_cases()
    total = remaining if max_cases is None else min(max_cases, remaining)
    finished = 0

    def on_record(unit: Unit, rec: dict[str, Any]) -> None:
        nonlocal finished
        store.add(unit.id, unit.case, unit.offsets, rec)
        finished += len(unit.offsets)
        if progress is not None:
            progress(finished, max(total, finished))

    interrupted = False
    todo = todo_units(grid, store, max_cases, shard)
    try:
        if backend is not None:
            backend(list(todo), on_record)
        elif jobs <= 1:
            run_serial(todo, on_record)
        else:
            run_parallel(todo, jobs, on_record, tick=store.tick)
    except KeyboardInterrupt:
        interrupted = True   # Ctrl-C: every finished unit is committed; summarise those
    finally:
        store.commit()
    summary = stored_summary(grid, store)
    summary["pending"] = total_cases - summary["cases"]
    if shard is not None:
        summary["shard"] = shard.text
    if interrupted:
        summary["interrupted"] = True
    return summary
