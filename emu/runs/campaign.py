"""Campaigns: one sweep grid over every revision of a kernel tree that touched the file.

A campaign is a revision range ``A..B`` of a kernel git tree, the file emu reads from it
(``arch/x86/lib/copy_user_64.S`` by default), CPU models and a grid.  Its revisions are
``A`` (the baseline) and every commit of ``git log A..B -- FILE``, oldest first; each is
one variant (``REV:FILE``) of one ordinary sweep grid, so a campaign keeps one results
store, runs locally, in shards or on a Dask cluster like any sweep, and resumes like one.

The report has one row per revision × CPU model: the era whose rules the revision's file
was judged by (detected from the text), the outcome classes and the violations with their
case counts.  Along the revisions, per CPU model, it lists each change: which classes and
violations appeared and which went away, and so the first revision at which each did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from emu.build.resolve import Spec
from emu.build.sources import revisions
from emu.runs.sweep import CLASSES, Grid, Unit, Variant, variant_of


@dataclass(frozen=True, slots=True)
class Revision:
    """One revision of the campaign: its commit (12 hex digits), subject and variant."""

    commit: str
    subject: str
    variant: Variant


def revision_range(tree: str, span: str, path: str, *, patches: tuple[str, ...] = (),
                   era: str | None = None, assembler: str = "gas") -> list[Revision]:
    """The campaign's revisions of ``tree`` in ``span`` (``A..B``), each read and detected.

    Raises:
        UsageError: not a range.
        InputError: not a tree, an unknown revision, or a revision without the file.
    """
    return [Revision(commit, subject,
                     variant_of(Spec("rev", commit, tree, path, patches, era, assembler)))
            for commit, subject in revisions(tree, span, [path])]


def report(grid: Grid, revs: Sequence[Revision],
           done: Iterable[tuple[Unit, dict[str, Any]]]) -> dict[str, Any]:
    """Per revision × CPU model: era, cases, classes, violations; then the changes.

    Args:
        grid: the campaign's grid (its variants are the revisions' variants, in order).
        revs: the revisions, oldest first.
        done: every stored unit with its outcome record.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rev in revs:
        era = getattr(rev.variant.catalog, "era", None)
        for cpu in _cpus(grid):
            rows[(rev.variant.spec, cpu)] = {
                "revision": rev.commit, "subject": rev.subject, "cpu": cpu,
                "era": era.key if era is not None else None, "cases": 0,
                "classes": Counter(), "violations": Counter()}
    for unit, rec in done:
        row = rows.get((unit.case.variant, unit.case.cpu))
        if row is None:
            continue
        weight = len(unit.offsets)
        row["cases"] += weight
        row["classes"][rec["class"]] += weight
        for name in rec["violations"]:
            row["violations"][name] += weight
    out_rows = []
    for row in rows.values():
        row["classes"] = {c: row["classes"][c] for c in CLASSES if c in row["classes"]}
        row["violations"] = dict(sorted(row["violations"].items()))
        out_rows.append(row)
    changes = _changes(out_rows, _cpus(grid))
    first: dict[str, dict[str, dict[str, str]]] = {}
    for ch in changes:
        for group in ("classes", "violations"):
            for how in ("appeared", "went_away"):
                for name in ch[group][how]:
                    first.setdefault(ch["cpu"], {}).setdefault(name, {}).setdefault(
                        how, ch["revision"])
    return {"revisions": len(revs), "cpus": _cpus(grid), "rows": out_rows,
            "changes": changes, "first": first}


def _cpus(grid: Grid) -> list[str]:
    from emu.kernel.eras import cpu_name, parse_cpu
    return list(dict.fromkeys(cpu_name(parse_cpu(c)) for c in grid.cpus))


def _changes(rows: list[dict[str, Any]], cpus: list[str]) -> list[dict[str, Any]]:
    """Per CPU model, along the revisions: what appeared and what went away."""
    out = []
    for cpu in cpus:
        mine = [r for r in rows if r["cpu"] == cpu and r["cases"]]
        for before, now in zip(mine, mine[1:]):
            change: dict[str, Any] = {"revision": now["revision"], "cpu": cpu,
                                      "previous": before["revision"]}
            for group in ("classes", "violations"):
                old, new = set(before[group]), set(now[group])
                change[group] = {"appeared": sorted(new - old), "went_away": sorted(old - new)}
            if any(change[g][k] for g in ("classes", "violations")
                   for k in ("appeared", "went_away")):
                out.append(change)
    return out
