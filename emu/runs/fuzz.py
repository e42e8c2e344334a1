"""Fuzzing: search the sweep space with Hypothesis and shrink a failure to a minimal case.

The space is the one ``emu sweep`` enumerates (variants × CPU paths × routines × directions ×
lengths × alignments × fault kinds × offsets, see ``sweep.py``), drawn at random instead of
exhaustively.  A *failure* is a case whose record names a wanted class: an oracle violation
(``outcome.VIOLATIONS``, the uaccess.h contract of kernel-facts.md §1 plus the #MC
invariants), a non-returned machine state (panic, oops, hang, smap_violation,
protection_fault, system_instruction) or a tool_error.  Hypothesis then shrinks it: lengths, alignments and offsets towards 0, variants
and CPU paths towards the first one given.  The shrunk case is printed as an ``emu run``
command and can be saved as a JSON fixture that ``tests/sweep/test_fuzz_fixtures.py``
replays.  ``seed`` fixes the random choices, so a run is repeatable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from emu.core import layout as L
from emu.kernel.eras import parse_cpu
from emu.errors import InputError, UsageError
from emu.core.machine import State
from emu.kernel.outcome import VIOLATIONS
from emu.runs.faults import Where, get_kind
from emu.runs.sweep import Case, Grid, Runner

#: Names ``--want`` accepts besides the violation names.
STATES = tuple(s.value for s in State if s is not State.RETURNED)
GROUPS = ("any", "violation", "tool_error")


@dataclass(frozen=True, slots=True)
class Found:
    """The shrunk failing case, its record, and the wanted classes it showed."""

    case: Case
    record: dict[str, Any]
    failures: tuple[str, ...]
    tried: int
    seed: int


def parse_want(text: str) -> frozenset[str]:
    """``--want`` → the set of failure names to look for."""
    names = frozenset(x.strip() for x in text.split(",") if x.strip())
    bad = names - set(VIOLATIONS) - set(STATES) - set(GROUPS)
    if bad or not names:
        raise UsageError(f"unknown failure class {', '.join(sorted(bad)) or repr(text)} "
                         f"(known: {', '.join((*GROUPS, *STATES, *VIOLATIONS))})")
    return names


def failures(rec: dict[str, Any]) -> set[str]:
    """Every failure name a record shows."""
    out = set(rec["violations"])
    if rec["class"] == "tool_error":
        out.add("tool_error")
    elif rec["state"] != State.RETURNED.value:
        out.add(rec["state"])
    return out


def matches(rec: dict[str, Any], want: frozenset[str]) -> set[str]:
    """The failures of ``rec`` that ``want`` asks for (empty: not a failure)."""
    got = failures(rec)
    if "any" in want:
        return got
    hit = got & want
    if "violation" in want:
        hit |= set(rec["violations"])
    return hit


def cases(grid: Grid, max_len: int, fixed_len: bool, fixed_align: bool) -> Any:
    """A Hypothesis strategy for cases of ``grid``.  Lengths and alignments are drawn from
    the grid's lists when given on the command line, else from 1..max_len and 0..4095."""

    @st.composite
    def draw_case(draw: Any) -> Case:
        v = draw(st.sampled_from(grid.variants))
        cpu = draw(st.sampled_from(grid.cpus))
        routine = draw(st.sampled_from(grid.routines_for(v, parse_cpu(cpu))))
        direction = draw(st.sampled_from(grid.directions))
        kind = draw(st.sampled_from(grid.kinds))
        if fixed_len:
            n = draw(st.sampled_from(grid.lengths))
        else:
            n = draw(st.integers(1, max_len))
        if fixed_align:
            sa = draw(st.sampled_from(grid.src_aligns))
            da = draw(st.sampled_from(grid.dst_aligns))
        else:
            sa = draw(st.integers(0, min(L.PAGE - 1, L.MAX_SPAN - n)))
            da = draw(st.integers(0, min(L.PAGE - 1, L.MAX_SPAN - n)))
        off = draw(st.sampled_from(grid.offsets) if grid.offsets else st.integers(0, n - 1))
        where = Where(n, sa, sa if direction == "from" else da)
        placed = get_kind(kind).place(off, where, partial=True)
        assert placed is not None
        poison, unmapped = placed
        return Case(v.spec, routine.name, cpu, direction, n, sa, da, kind, off, poison,
                    unmapped, v.rules, v.source)

    return draw_case()


class _Hit(Exception):
    """Internal: raised inside the property to make Hypothesis shrink."""


def search(grid: Grid, *, want: frozenset[str], max_len: int = 8192, examples: int = 500,
           seed: int = 0, fixed_len: bool = False, fixed_align: bool = False) -> Found | None:
    """Look for a case whose record shows a wanted failure; shrink it.

    Args:
        grid: the space (its lengths/alignments are used only with ``fixed_*``).
        want: failure names (``parse_want``).
        max_len: largest length drawn.
        examples: how many cases to try before giving up.
        seed: the random seed (same seed, same search, same result).
        fixed_len / fixed_align: draw lengths / alignments from the grid's lists.

    Returns:
        The shrunk case, or None when nothing was found.
    """
    if not 1 <= max_len <= L.MAX_SPAN:
        raise UsageError(f"--max-len must be within 1..{L.MAX_SPAN}")
    for k in grid.kinds:
        get_kind(k)
    runner = Runner()
    state: dict[str, Any] = {"tried": 0}

    @hypothesis_seed(seed)
    @settings(max_examples=max(1, examples), database=None, deadline=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False,
              print_blob=False, verbosity=Verbosity.quiet,
              suppress_health_check=list(HealthCheck))
    @given(cases(grid, max_len, fixed_len, fixed_align))
    def probe(case: Case) -> None:
        state["tried"] += 1
        rec = runner.run(case)
        hit = matches(rec, want)
        if hit:
            state["case"], state["rec"], state["hit"] = case, rec, hit
            raise _Hit

    try:
        probe()
    except _Hit:
        return Found(state["case"], state["rec"], tuple(sorted(state["hit"])), state["tried"],
                     seed)
    return None


def to_json(found: Found | None, saved: str | None = None) -> dict[str, Any]:
    if found is None:
        return {"found": False}
    return {"found": True, "failures": list(found.failures), "command": found.case.command(),
            "case": found.case.to_json(), "record": found.record, "tried": found.tried,
            "seed": found.seed, "saved": saved}


def fixture(found: Found) -> dict[str, Any]:
    """The JSON a saved case holds: the case, its command, and the behaviour to replay."""
    r = found.record
    return {"case": found.case.to_json(), "command": found.case.command(),
            "failures": list(found.failures), "found_with_seed": found.seed,
            "expect": {"class": r["class"], "state": r["state"],
                       "return_value": r["return_value"], "bytes_copied": r["bytes_copied"],
                       "violations": r["violations"]}}


def save(found: Found, directory: str) -> str:
    """Write the fixture as ``DIR/<variant>-<failure>-<hash>.json``; never overwrites a
    different file.  Returns the path."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{directory}: cannot create: {e.strerror}") from None
    body = json.dumps(fixture(found), indent=2, sort_keys=True) + "\n"
    tag = hashlib.sha256(found.case.id.encode()).hexdigest()[:8]
    label = Path(found.case.variant).stem if Path(found.case.variant).suffix \
        else found.case.variant
    path = d / f"{label}-{found.failures[0]}-{tag}.json"
    if path.exists() and path.read_text(encoding="utf-8") != body:
        raise InputError(f"{path} exists with other content; not overwriting it")
    path.write_text(body, encoding="utf-8")
    return str(path)
