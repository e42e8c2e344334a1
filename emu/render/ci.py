"""Rendering of ``emu check`` results: rich terminal text, KTAP v1 and JUnit XML.

KTAP follows Documentation/dev-tools/ktap.rst (KTAP version 1) the way kselftest's
kselftest.h prints it: ``KTAP version 1``, the plan ``1..N``, one ``ok N name`` /
``not ok N name`` line per class with ``# `` diagnostic lines before it, ``# XFAIL`` for a
change accepted with ``--allow`` (ksft_test_result_xfail), and a closing ``# Totals:`` line.
JUnit follows the common Ant/Jenkins schema (testsuites/testsuite/testcase/failure).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import IO, TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from emu.render.report import console, print_table

if TYPE_CHECKING:
    from emu.runs.check import Finding, Result

from emu.runs.check import (CLASSES, MATRIX_ALIGNS, MATRIX_CPUS, MATRIX_DIRECTIONS, MATRIX_LENGTHS,
                    MATRIX_VERSION)


def _counts(f: Finding) -> str:
    return f"{f.old_count} -> {f.new_count}"


def _status(f: Finding) -> str:
    if not f.changed:
        return "ok"
    return "allowed" if f.allowed else "REGRESSION"


def _header(res: Result) -> list[str]:
    o, n = res.old, res.new
    cases = sum(1 for k in n.results if k in o.results)
    rules = n.era if o.era == n.era else f"{o.era} (OLD) / {n.era} (NEW)"
    lines = [f"emu check: {o.label} -> {n.label}",
             f"era rules: {rules}" + (f"; NEW alone would detect era {n.detected}"
                                      if n.detected and n.detected != n.era else ""),
             f"matrix {MATRIX_VERSION}: {len(res.common)} routine(s) x {len(MATRIX_CPUS)} CPU "
             f"paths x {len(MATRIX_DIRECTIONS)} directions x {len(MATRIX_LENGTHS)} lengths x "
             f"{len(MATRIX_ALIGNS)} alignments x faults = {cases} cases per side; static map of "
             f"{len({a.function for acc in n.accesses.values() for a in acc})} function(s)"]
    if not res.common:
        lines.append("note: no routine present in both that emu knows how to call; only the "
                     "static map is compared (name routines with --routine)")
    return lines


def _details(f: Finding) -> list[str]:
    out: list[str] = []
    ex = f.example
    if ex and f.cases:
        out.append(f"example: {ex['case']}")
        out.append(f"  old: {ex['old']}")
        out.append(f"  new: {ex['new']}")
        out.append(f"reproduce: {ex['command']}")
        if ex.get("old_command"):
            out.append(f"       old: {ex['old_command']}")
    for s in f.sites[:8]:
        if "routine" in s:
            out.append(f"routine {s['routine']} {s['change']}" +
                       (f": {s['command']}" if s.get("command") else ""))
        else:
            hit = "" if s["in_matrix"] else " (not reached by the matrix)"
            out.append(f"map: {s['where']} {s['insn']}: {'; '.join(s['what'])} "
                       f"[{s['flag']}]{hit}")
    if len(f.sites) > 8:
        out.append(f"... and {len(f.sites) - 8} more map site(s) (--json lists all)")
    return out


def terminal(res: Result, stream: IO[str]) -> None:
    """A summary table (one row per class), then per changed class its reproducer as plain
    lines, so commands are never wrapped."""
    w = stream.write
    for line in _header(res):
        w(line + "\n")
    c = console(stream)
    t = Table(title="changes by class", title_justify="left")
    for col in ("class", "status", "cases", "map sites", "old -> new", "measured as"):
        t.add_column(col)
    for f in res.findings.values():
        style = {"REGRESSION": "bold red", "allowed": "yellow", "ok": "green"}[_status(f)]
        t.add_row(f.cls, f"[{style}]{_status(f)}[/]", str(len(f.cases)), str(len(f.sites)),
                  _counts(f), escape(CLASSES[f.cls][1]))
    print_table(c, t)
    for f in res.findings.values():
        if not f.changed:
            continue
        w(f"\n{f.cls}: {CLASSES[f.cls][0]} ({_status(f)}; {len(f.cases)} case(s), "
          f"{len(f.sites)} map site(s); {CLASSES[f.cls][1]}: {_counts(f)})\n")
        for line in _details(f):
            w(f"  {line}\n")
    bad = [c for c, f in res.findings.items() if f.regression]
    w("\n" + (f"result: regression ({', '.join(bad)}); exit 1\n" if bad
              else "result: no regression; exit 0\n"))


def ktap(res: Result) -> str:
    """KTAP v1: one test per class, in ``CLASSES`` order (a stable plan)."""
    lines = ["KTAP version 1"]
    lines += [f"# {x}" for x in _header(res)]
    lines.append(f"1..{len(res.findings)}")
    npass = nfail = nxfail = 0
    for i, f in enumerate(res.findings.values(), 1):
        title, measure = CLASSES[f.cls]
        lines.append(f"# {f.cls}: {title}: {len(f.cases)} case(s), {len(f.sites)} map "
                     f"site(s); {measure}: {_counts(f)}")
        if f.changed:
            lines += [f"# {x}" for x in _details(f)]
        if not f.changed:
            lines.append(f"ok {i} {f.cls}")
            npass += 1
        elif f.allowed:
            lines.append(f"ok {i} {f.cls} # XFAIL allowed by --allow")
            nxfail += 1
        else:
            lines.append(f"not ok {i} {f.cls}")
            nfail += 1
    lines.append(f"# Totals: pass:{npass} fail:{nfail} xfail:{nxfail} xpass:0 skip:0 error:0")
    return "\n".join(lines) + "\n"


def junit(res: Result) -> str:
    """JUnit XML: a testsuite "emu check" with one testcase per class."""
    fails = sum(1 for f in res.findings.values() if f.regression)
    skipped = sum(1 for f in res.findings.values() if f.changed and f.allowed)
    root = ET.Element("testsuites", name="emu check", tests=str(len(res.findings)),
                      failures=str(fails), errors="0", skipped=str(skipped))
    suite = ET.SubElement(root, "testsuite", name=f"emu check {res.old.label} -> "
                          f"{res.new.label}", tests=str(len(res.findings)),
                          failures=str(fails), errors="0", skipped=str(skipped))
    props = ET.SubElement(suite, "properties")
    for k, v in (("old", res.old.label), ("new", res.new.label), ("era", res.new.era),
                 ("routines", ",".join(res.common))):
        ET.SubElement(props, "property", name=k, value=v)
    for f in res.findings.values():
        title, measure = CLASSES[f.cls]
        tc = ET.SubElement(suite, "testcase", classname="emu.check", name=f.cls)
        text = "\n".join([f"{title}: {len(f.cases)} case(s), {len(f.sites)} map site(s); "
                          f"{measure}: {_counts(f)}", *_details(f)])
        if f.regression:
            el = ET.SubElement(tc, "failure", message=f"{title} ({len(f.cases)} cases, "
                               f"{len(f.sites)} map sites)", type=f.cls)
            el.text = text
        elif f.changed:
            el = ET.SubElement(tc, "skipped", message=f"allowed by --allow: {title}")
            el.text = text
        else:
            ET.SubElement(tc, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"
