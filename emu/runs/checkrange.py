"""``emu check --tree T A..B`` and ``emu check --bisect``: the CI check over kernel history.

A range is every commit of ``git log A..B -- FILE`` (the commits that touch the file emu
reads), oldest first.  Each commit is compared with the last commit before it that emu could
build (A for the first), with ``emu.runs.check.run_check`` and each side's own era rules
(a range walks releases, not one patch inside one kernel), so there is one row per commit:
its verdict (``same``, ``better``, ``neutral``, ``worse``, or ``unbuildable`` when the
revision does not assemble) and the classes that changed.  The first commit whose behaviour
changed is named; the exit code is 1 when a row is a regression.

Rows are written to a journal (one JSON line per commit, flushed and fsynced) under the cache
directory, named by the tree, the range's commit ids and the options; the same command run
again, after an interruption or not, reuses the rows it finds and runs only the rest.

``--bisect`` is the exit-code contract of ``git bisect run``: 0 good (no regression against
GOOD), 1 bad, 125 the revision cannot be built (skip), 128 emu cannot judge at all (GOOD
cannot be built, or bad usage): git stops the bisection instead of blaming a commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emu.build.resolve import Spec
from emu.build.sources import COPY_USER, rev_list, rev_parse
from emu.errors import InputError, UsageError
from emu.runs.check import MATRIX_VERSION, Result, SideError, run_check

#: ``git bisect run`` exit codes (git-bisect(1)).
BISECT_GOOD, BISECT_BAD, BISECT_SKIP, BISECT_ABORT = 0, 1, 125, 128
JOURNAL_FORMAT = "emu-check-range-1"


@dataclass
class Row:
    """One commit of a range, compared with the last buildable commit before it."""

    sha: str
    subject: str
    old: str
    verdict: str                 # same, better, neutral, worse, unbuildable
    regression: bool = False
    era: str = ""                # "E" or "E->F"
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # changed classes
    regressions: list[str] = field(default_factory=list)
    message: str = ""            # why it is unbuildable
    command: str = ""            # the emu check that shows the details
    seconds: float = 0.0


@dataclass
class RangeResult:
    tree: str
    start: str
    end: str
    file: str
    rows: list[Row]
    resumed: int = 0
    journal: str = ""

    @property
    def first_change(self) -> Row | None:
        return next((r for r in self.rows if r.verdict in ("better", "neutral", "worse")), None)

    @property
    def first_regression(self) -> Row | None:
        return next((r for r in self.rows if r.regression), None)

    @property
    def exit_code(self) -> int:
        return 1 if any(r.regression for r in self.rows) else 0

    def to_json(self) -> dict[str, Any]:
        fc, fr = self.first_change, self.first_regression
        return {"tree": self.tree, "range": f"{self.start}..{self.end}", "file": self.file,
                "rows": [asdict(r) for r in self.rows], "resumed": self.resumed,
                "first_change": fc.sha if fc else None,
                "first_regression": fr.sha if fr else None, "exit": self.exit_code}


def parse_range(text: str) -> tuple[str, str] | None:
    """``A..B`` (B empty: HEAD) → (A, B); anything else → None.  ``A...B`` is refused."""
    if ".." not in text:
        return None
    if "..." in text:
        raise UsageError(f"'{text}': a symmetric range (A...B) has no order; use A..B")
    a, _, b = text.partition("..")
    if not a:
        raise UsageError(f"'{text}': name the first revision of the range (A..B)")
    return a, b or "HEAD"


def cache_dir() -> Path:
    """Where range journals live (same rule as scripts/linux-sources' cache)."""
    if os.environ.get("EMU_CACHE"):
        return Path(os.environ["EMU_CACHE"]) / "check-range"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emu" / "check-range"


def _journal(tree: str, a: str, b: str, file: str, options: dict[str, Any]) -> Path:
    from emu import __version__
    key = json.dumps({"tree": os.path.realpath(tree), "a": a, "b": b, "file": file,
                      "options": options, "matrix": MATRIX_VERSION, "emu": __version__,
                      "format": JOURNAL_FORMAT}, sort_keys=True)
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"


def _load(path: Path) -> dict[tuple[str, str], Row]:
    rows: dict[tuple[str, str], Row] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            d = json.loads(line)
            row = Row(**d)
        except (ValueError, TypeError):
            continue            # a line cut by the interruption: run that commit again
        rows[(row.old, row.sha)] = row
    return rows


def _append(path: Path, row: Row) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(row), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass                    # no journal: the range still runs, it just cannot resume


def _row(sha: str, subject: str, old: str, res: Result, cmd: str, dt: float) -> Row:
    o, n = res.old.era, res.new.era
    classes = {f.cls: {"worse": f.count("worse"), "better": f.count("better"),
                       "neutral": f.count("neutral")}
               for f in res.findings.values() if f.changed}
    return Row(sha, subject, old, res.verdict, res.exit_code == 1,
               o if o == n else f"{o}->{n}", classes,
               [c for c, f in res.findings.items() if f.regression], "", cmd, round(dt, 2))


def run_range(tree: str, start: str, end: str, *, file: str | None = None,
              era: str | None = None, routines: list[str] | tuple[str, ...] = (),
              allow: set[str] | frozenset[str] = frozenset(), strict: bool = False,
              assembler: str = "gas", on_row: Callable[[Row, bool], None] | None = None
              ) -> RangeResult:
    """Check every commit of ``start..end`` touching ``file`` against the one before it.

    Args:
        tree: the kernel git tree.
        start, end: the range (``start`` itself is the first OLD).
        file: the file in the tree (default arch/x86/lib/copy_user_64.S).
        era: era rules for both sides of each pair (default: each side its own).
        routines, allow, strict: as for ``run_check``.
        on_row: called with each row as it is known (and whether it came from the journal).

    Raises:
        InputError: the tree or a revision is unknown, or ``start`` cannot be built.
    """
    path = file or COPY_USER
    a, b = rev_parse(tree, start), rev_parse(tree, end)
    commits = rev_list(tree, a, b, [path])
    options = {"era": era, "routines": sorted(routines), "allow": sorted(allow),
               "strict": strict, "assembler": assembler}
    journal = _journal(tree, a, b, path, options)
    done = _load(journal)

    def spec(rev: str) -> Spec:
        return Spec("rev", rev, tree, path, (), None, assembler)

    rows: list[Row] = []
    resumed = 0
    old = a
    for sha, subject in commits:
        row = done.get((old, sha))
        cached = row is not None
        if row is None:
            t0 = time.monotonic()
            cmd = shlex.join(["emu", "check", "--tree", tree, *(["--file", path] if file
                              else []), old[:12], sha[:12], "--era", era or "each"])
            try:
                res = run_check(spec(old), spec(sha), era=era or "each", routines=routines,
                                allow=allow, strict=strict)
            except SideError as e:
                if e.side == "old":
                    raise InputError(f"{start}: cannot be built, so the range has no base: "
                                     f"{e}") from None
                row = Row(sha, subject, old, "unbuildable", False, message=str(e),
                          seconds=round(time.monotonic() - t0, 2))
            else:
                row = _row(sha, subject, old, res, cmd, time.monotonic() - t0)
            _append(journal, row)
        else:
            resumed += 1
        rows.append(row)
        if on_row is not None:
            on_row(row, cached)
        if row.verdict != "unbuildable":
            old = sha
    return RangeResult(tree, start, end, path, rows, resumed, str(journal))


def bisect(good: Spec, new: Spec, *, era: str | None = None,
           routines: list[str] | tuple[str, ...] = (),
           allow: set[str] | frozenset[str] = frozenset(), strict: bool = False
           ) -> tuple[int, Result | None, str]:
    """One ``git bisect run`` step: compare GOOD with NEW (the checked-out revision).

    Returns:
        (exit code, the result or None, the message): 0 good, 1 bad, 125 NEW cannot be
        built; 128 when GOOD cannot be built (an ``InputError`` the caller turns into 128).
    """
    try:
        res = run_check(good, new, era=era, routines=routines, allow=allow, strict=strict)
    except SideError as e:
        if e.side == "new":
            return BISECT_SKIP, None, str(e)
        raise
    return (BISECT_BAD if res.exit_code else BISECT_GOOD), res, ""
