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
* the machine states ``oops``, ``panic``, ``hang``, ``smap_violation``;
* ``tool_error`` — the harness failed on this case (an exception, or the worker died).

Fault kinds: ``mc`` poisons the 64-byte source line holding the offset; ``mc2`` also poisons the
next line; ``pf`` makes the user page holding the offset not present (one case per page the
user buffer touches, so the #PF lands on a page boundary); ``pf2`` also unmaps the next user
page; ``mc+pf`` poisons the line and makes the next user page not present.

Execution: a small process pool of our own (``multiprocessing`` 'spawn' context, so no Unicorn
instance is ever forked).  Each worker builds and caches its own Targets.  A worker that dies
costs exactly one case, recorded as ``tool_error``; the rest of its batch is requeued and a new
worker is started.  Results go to a JSON-lines file, one flushed record per case, so an
interrupted sweep can be resumed without redoing or losing cases.

Every byte of one 64-byte line poisons the same line (and every byte of one page unmaps the
same page), so a worker runs each distinct machine input once and reuses the outcome for the
other offsets that map to it; the record carries ``"reused": true`` when it did.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from emu.build.resolve import Spec, parse_spec, resolve, source_of
from emu.caching import Bounded
from emu.core import layout as L
from emu.core.machine import Buffers, State
from emu.errors import EmuError, InputError, UsageError
from emu.kernel.eras import Era, Routine, cpu_name, get_era, parse_cpu
from emu.kernel.outcome import BENIGN_FOR_COPY_FROM_USER, VIOLATIONS, Outcome
from emu.runs.faults import KINDS, placements
from emu.runs.repro import case_options

#: Outcome classes, from best to worst (the heatmap colours follow this order).
CLASSES: tuple[str, ...] = ("ok", "benign", "violation", "smap_violation",
                            "oops", "hang", "panic", "tool_error")
#: Test hooks: a worker kills itself (SIGKILL) or raises on the case with this id.
CRASH_ENV = "EMU_SWEEP_CRASH"
RAISE_ENV = "EMU_SWEEP_RAISE"


# ---- cases and grids -------------------------------------------------------------------


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
        b = self.buffers()
        lines = tuple(sorted({(b.src + p) & ~(L.LINE - 1) for p in b.poison}))
        pages = tuple(sorted({(b.user + p) & ~(L.PAGE - 1) for p in b.unmapped}))
        return (self.variant, self.era, self.routine, self.cpu, self.direction, self.length,
                self.src_align, self.dst_align, lines, pages)

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
        for n in self.lengths:
            for a in self.src_aligns + self.dst_aligns:
                if n < 0 or not 0 <= a < L.PAGE or a + n > L.MAX_SPAN:
                    raise UsageError(f"len {n} with alignment {a:#x} does not fit the "
                                     f"{L.MAX_SPAN}-byte buffer window (alignment < {L.PAGE})")

    def routines_for(self, v: Variant, cpu: frozenset[str]) -> list[Routine]:
        cat = v.catalog
        if not self.routines:
            return [cat.select_routine(cpu)]
        if "all" in self.routines:
            return list(cat.routines)
        if v.era is not None:
            return [v.era.routine(r) for r in self.routines]
        known = {r.name: r for r in cat.routines}
        return [known.get(r) or Routine(r) for r in self.routines]

    def cases(self) -> Iterator[Case]:
        """Every case, in a fixed order (offsets innermost)."""
        for v in self.variants:
            for cname in self.cpus:
                cpu = parse_cpu(cname)
                for r in self.routines_for(v, cpu):
                    for d in self.directions:
                        for n in self.lengths:
                            for sa in self.src_aligns:
                                for da in self.dst_aligns:
                                    for k in self.kinds:
                                        for off, poison, unmapped in placements(
                                                k, n, sa, da, d, self.step, self.offsets):
                                            yield Case(v.spec, r.name, cpu_name(cpu), d, n, sa,
                                                       da, k, off, poison, unmapped, v.rules,
                                                       v.source)

    def to_json(self) -> dict[str, Any]:
        return {"variants": [v.spec for v in self.variants], "routines": list(self.routines),
                "cpus": list(self.cpus), "directions": list(self.directions),
                "lengths": list(self.lengths), "src_aligns": list(self.src_aligns),
                "dst_aligns": list(self.dst_aligns), "kinds": list(self.kinds),
                "step": self.step, "offsets": list(self.offsets)}


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
                out.extend(range(int(lo, 0), int(hi, 0) + 1, int(st, 0) if st else 1))
            else:
                out.append(int(part, 0))
    except ValueError:
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

    def target_and_routine(self, case: Case) -> tuple[Any, Routine]:
        """The case's target (through the one resolver) and its routine."""
        t = resolve(case.source, parse_cpu(case.cpu), routine=case.routine)
        return t, t.routine_for(case.routine)

    def outcome(self, case: Case) -> tuple[Outcome, bool]:
        """Run (or reuse) one case; returns the outcome and whether it was reused."""
        if self._crash == case.id:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._raise == case.id:
            raise RuntimeError(f"test hook {RAISE_ENV} raised on {case.id}")
        b = case.buffers()
        key = case.input_key()
        hit = self._memo.get(key)
        if hit is not None:
            return hit, True
        t, r = self.target_and_routine(case)
        o = t.run(r, b, fast_forward=True)  # same outcome as a full run, see Machine.record
        self._memo[key] = o
        return o, False

    def run(self, case: Case) -> dict[str, Any]:
        """One case → its record; harness failures become ``tool_error`` records."""
        try:
            o, reused = self.outcome(case)
        except EmuError as e:
            return error_record(case, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - any harness failure is recorded, not fatal
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return error_record(case, f"{type(e).__name__}: {e} ({Path(tb.filename).name}:"
                                f"{tb.lineno})")
        rec = record(case, o)
        if reused:
            rec["reused"] = True
        return rec


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive a batch of cases, send one record per case, then ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = Runner()
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        try:
            for case in batch:
                conn.send(runner.run(case))
            conn.send(None)
        except (BrokenPipeError, OSError):  # the parent is gone: stop quietly
            return


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    batch: list[Case]
    returned: int = 0


def run_parallel(cases: Sequence[Case], jobs: int,
                 on_record: Callable[[dict[str, Any]], None]) -> None:
    """Run ``cases`` on ``jobs`` spawned worker processes; ``on_record`` sees each record.

    A worker that dies (signal, os._exit, segfault in Unicorn) costs only the case it was
    running: that case is reported as ``tool_error`` and the rest of its batch is requeued.
    """
    ctx = mp.get_context("spawn")
    todo: deque[Case] = deque(cases)
    workers: list[_Worker] = []

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        p.start()
        child.close()
        return _Worker(p, parent, [])

    def batch_size() -> int:
        return max(1, min(64, len(todo) // (2 * max(1, jobs)) or 1))

    try:
        workers = [start() for _ in range(max(1, min(jobs, len(todo))))]
        while True:
            for w in workers:
                if not w.batch and todo:
                    w.batch = [todo.popleft() for _ in range(min(batch_size(), len(todo)))]
                    w.returned = 0
                    w.conn.send(w.batch)
            busy = [w for w in workers if w.batch]
            if not busy:
                break
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
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
                            w.returned += 1
                            on_record(msg)
                except (EOFError, OSError):
                    dead = True
                if w.batch and (dead or not w.proc.is_alive()):
                    w.proc.join()
                    crashed = w.batch[w.returned]
                    on_record(error_record(crashed, f"worker died (exit code "
                                           f"{w.proc.exitcode}) while running this case"))
                    todo.extendleft(reversed(w.batch[w.returned + 1:]))
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


def run_serial(cases: Iterable[Case], on_record: Callable[[dict[str, Any]], None]) -> None:
    """Run cases in this process (``--jobs 1`` and the fuzzer)."""
    runner = Runner()
    for c in cases:
        on_record(runner.run(c))


# ---- the results file -------------------------------------------------------------------


class Results:
    """The JSON-lines results file: read what is there (``--resume``), append one flushed line
    per new record.  An existing file is never overwritten; a torn last line (the previous run
    was killed mid-write) is cut off before appending."""

    def __init__(self, path: str | None, resume: bool) -> None:
        self.path = Path(path) if path else None
        self.records: dict[str, dict[str, Any]] = {}
        self._fh: Any = None
        if self.path is None:
            if resume:
                raise UsageError("--resume needs --results FILE")
            return
        if self.path.is_dir():
            raise UsageError(f"{self.path}: is a directory")
        if self.path.exists() and not resume:
            raise UsageError(f"{self.path} exists; use --resume to continue it, or name "
                             "another --results file")
        if self.path.exists():
            self._load()
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise InputError(f"{self.path}: cannot write: {e.strerror}") from None

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good = len(data)
        if lines and lines[-1]:  # no final newline: the last write was torn
            good = len(data) - len(lines[-1])
            lines = lines[:-1]
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                Case.from_json(rec["case"])
                rec["id"], rec["class"], rec["violations"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.path}:{n}: not a sweep record; refusing to resume "
                                 "into it") from None
            self.records[rec["id"]] = rec
        if good != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def add(self, rec: dict[str, Any]) -> None:
        if rec["id"] in self.records:
            return
        self.records[rec["id"]] = rec
        if self._fh is not None:
            self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# ---- summary ------------------------------------------------------------------------------


def summarize(grid: Grid, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: counts per outcome class and per violation, each with a minimal
    reproducer (the smallest case by length, fault count, alignment, offset)."""
    variants: dict[str, dict[str, Any]] = {}
    best: dict[tuple[str, str, str], Case] = {}
    order = {v.spec: v for v in grid.variants}
    inputs: dict[str, set[tuple[Any, ...]]] = {}
    for spec in order:
        variants[spec] = {"label": order[spec].label, "cases": 0, "runs": 0, "classes": {},
                          "violations": {}}
        inputs[spec] = set()
    for rec in records:
        case = Case.from_json(rec["case"])
        v = variants.get(case.variant)
        if v is None:
            continue
        v["cases"] += 1
        inputs[case.variant].add(case.input_key())   # distinct runs, whatever the workers did
        for group, name in [("classes", rec["class"])] + [("violations", x)
                                                          for x in rec["violations"]]:
            slot = v[group].setdefault(name, {"count": 0})
            slot["count"] += 1
            k = (case.variant, group, name)
            if k not in best or case.minimality() < best[k].minimality():
                best[k] = case
                slot["example"] = case.command()
                if rec.get("message"):
                    slot["message"] = rec["message"]
                elif "message" in slot:
                    del slot["message"]
    for spec, v in variants.items():
        v["runs"] = len(inputs[spec])
        for name, slot in v["violations"].items():
            slot["benign_for_copy_from_user"] = name in BENIGN_FOR_COPY_FROM_USER
            slot["meaning"] = VIOLATIONS.get(name, "")
        v["classes"] = {c: v["classes"][c] for c in CLASSES if c in v["classes"]}
        v["violations"] = dict(sorted(v["violations"].items()))
    total = sum(v["cases"] for v in variants.values())
    return {"grid": grid.to_json(), "cases": total, "variants": variants}


def execute(grid: Grid, results: Results, *, jobs: int, max_cases: int | None = None,
            progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run the cases of ``grid`` that ``results`` does not have yet, then summarise the grid.

    Args:
        grid: the sweep space.
        results: the results file (records already there are not redone).
        jobs: worker processes; 1 runs in this process.
        max_cases: stop after this many new cases (the rest is left for ``--resume``).
        progress: ``progress(total)`` makes a display with ``advance()`` and ``close()``
            (the CLI passes ``emu.render.report.progress``); None shows nothing.
    """
    cases = list(grid.cases())
    todo = [c for c in cases if c.id not in results.records]
    if max_cases is not None:
        todo = todo[:max(0, max_cases)]
    bar = progress(len(todo)) if progress is not None and todo else None

    def on_record(rec: dict[str, Any]) -> None:
        results.add(rec)
        if bar is not None:
            bar.advance()

    interrupted = False
    try:
        if jobs <= 1 or len(todo) < 2:
            run_serial(todo, on_record)
        else:
            run_parallel(todo, jobs, on_record)
    except KeyboardInterrupt:
        interrupted = True   # Ctrl-C: every finished case is on disk; summarise those
    finally:
        if bar is not None:
            bar.close()
        results.close()
    done = [results.records[c.id] for c in cases if c.id in results.records]
    summary = summarize(grid, done)
    summary["pending"] = len(cases) - len(done)
    if interrupted:
        summary["interrupted"] = True
    return summary
