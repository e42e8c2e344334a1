"""Rendering of ``emu check`` results: rich terminal text, KTAP v1 and JUnit XML.

KTAP follows Documentation/dev-tools/ktap.rst (KTAP version 1) the way kselftest's
kselftest.h prints it: ``KTAP version 1`` and the plan ``1..N`` with one test per era x CPU
preset; each is a nested KTAP document (its lines indented by two spaces, starting with its
own version line and plan) with one ``ok N class`` / ``not ok N class`` per class, ``# ``
diagnostic lines before each result, ``# XFAIL`` for a change accepted with ``--allow``
(ksft_test_result_xfail); the parent's result line follows, unindented, and fails when a
subtest fails.  A closing ``# Totals:`` line counts the parent tests.  An input error is still
KTAP: a plan of one, ``# error:`` and ``not ok 1 emu_check # ERROR ...``.
JUnit follows the common Ant/Jenkins schema (testsuites/testsuite/testcase/failure/error,
``time`` in seconds and an ISO 8601 ``timestamp``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import IO, TYPE_CHECKING

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from emu.render.report import console, print_table

if TYPE_CHECKING:
    from emu.kernel.severity import MceRules
    from emu.runs.check import Finding, Result
    from emu.runs.checkrange import RangeResult, Row

from emu.runs.check import (CLASSES, MATRIX_ALIGNS, MATRIX_CPUS, MATRIX_DIRECTIONS,
                            MATRIX_LENGTHS, MATRIX_VERSION, MCase)


def _counts(f: Finding) -> str:
    return f"{f.old_count} -> {f.new_count}"


def _status(f: Finding) -> str:
    """ok (no change), REGRESSION, allowed (--allow), better, or changed (neutral only)."""
    if not f.changed:
        return "ok"
    if f.allowed:
        return "allowed"
    if f.regression:
        return "REGRESSION"
    return "better" if f.verdict == "better" else "changed"


_STYLE = {"REGRESSION": "bold red", "allowed": "yellow", "ok": "green", "better": "green",
          "changed": "cyan"}


def _split(f: Finding) -> str:
    return f"worse {f.count('worse')}, better {f.count('better')}, neutral {f.count('neutral')}"


def _mce_line(old: MceRules | None, new: MceRules | None) -> str:
    """Which #MC rules judged the sides, when they came from the trees' severity.c."""
    if old == new and old is not None:
        return f"#MC rules: {old.describe()}"
    def one(r: MceRules | None) -> str:
        return r.describe() if r else "the era's"
    if old and new and old.severity is new.severity:
        return f"#MC rules: {old.severity.value} (OLD {old.how}; NEW {new.how})"
    return f"#MC rules: OLD {one(old)}; NEW {one(new)}"


def _header(res: Result) -> list[str]:
    o, n = res.old, res.new
    cases = sum(1 for k in n.results if k in o.results)
    rules = n.era if o.era == n.era else f"{o.era} (OLD) / {n.era} (NEW)"
    lines = [f"emu check: {o.label} -> {n.label}",
             f"era rules: {rules}" + (f"; NEW alone would detect era {n.detected}"
                                      if n.detected and n.detected != n.era else ""),
             *([_mce_line(o.mce, n.mce)] if o.mce or n.mce else []),
             f"matrix {MATRIX_VERSION}: {len(res.common)} routine(s) by name"
             + (f" + copy_user_generic() on {len(res.callers)} CPU path(s)" if res.callers
                else "")
             + f"; {len(MATRIX_CPUS)} CPU "
             f"paths x {len(MATRIX_DIRECTIONS)} directions x {len(MATRIX_LENGTHS)} lengths x "
             f"{len(MATRIX_ALIGNS)} alignments x faults = {cases} cases per side; static map of "
             f"{len({a.function for acc in n.accesses.values() for a in acc})} function(s)"]
    for cpu in res.callers:
        lines.append(f"copy_user_generic() on cpu {cpu}: {o.callers[cpu]} -> {n.callers[cpu]}")
    for cpu in MATRIX_CPUS:
        if (o.callers or n.callers) and cpu not in res.callers and not (
                cpu in o.callers and cpu in n.callers):
            side = "OLD" if cpu not in o.callers else "NEW"
            lines.append(f"copy_user_generic() on cpu {cpu}: not compared ({side}: an inline "
                         "rep movsb at the call site, not a routine of the file)")
    if not res.common and not res.callers:
        lines.append("note: no routine present in both that emu knows how to call; only the "
                     "static map is compared (name routines with --routine)")
    if res.strict:
        lines.append("strict: any change fails, not only a worse one")
    return lines


def _details(f: Finding) -> list[str]:
    out: list[str] = []
    ex = f.example
    if ex and f.cases:
        out.append(f"example ({ex['direction']}): {ex['case']}")
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
            out.append(f"map ({s.get('direction', 'worse')}): {s['where']} {s['insn']}: "
                       f"{'; '.join(s['what'])} [{s['flag']}]{hit}")
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
    for col in ("class", "status", "worse", "better", "neutral", "map sites", "old -> new",
                "measured as"):
        t.add_column(col)
    for f in res.findings.values():
        st = _status(f)
        t.add_row(f.cls, Text(st, style=_STYLE[st]), str(f.count("worse")),
                  str(f.count("better")), str(f.count("neutral")), str(len(f.sites)),
                  _counts(f), escape(CLASSES[f.cls][1]))
    print_table(c, t)
    for f in res.findings.values():
        if not f.changed:
            continue
        w(f"\n{f.cls}: {CLASSES[f.cls][0]} ({_status(f)}; {_split(f)}; "
          f"{len(f.cases)} case(s), {len(f.sites)} map site(s); "
          f"{CLASSES[f.cls][1]}: {_counts(f)})\n")
        for line in _details(f):
            w(f"  {line}\n")
    w("\n" + result_line(res) + "\n")


def result_line(res: Result) -> str:
    """The last line: regression or not, and the exit code."""
    bad = [c for c, f in res.findings.items() if f.regression]
    if bad:
        return f"result: regression ({', '.join(bad)}); exit 1"
    better = [c for c, f in res.findings.items() if f.verdict == "better" and not f.allowed]
    if better:
        return f"result: no regression; better: {', '.join(better)}; exit 0"
    return "result: no regression; exit 0"


def _ktap_classes(findings: dict[str, Finding], indent: str, name: str
                  ) -> tuple[list[str], bool]:
    """One KTAP document with a test per class; returns its lines and whether one failed."""
    lines = [f"{indent}KTAP version 1", f"{indent}# Subtest: {name}",
             f"{indent}1..{len(findings)}"]
    failed = False
    for i, f in enumerate(findings.values(), 1):
        title, measure = CLASSES[f.cls]
        lines.append(f"{indent}# {f.cls}: {title}: {_split(f)} ({len(f.cases)} case(s), "
                     f"{len(f.sites)} map site(s)); {measure}: {_counts(f)}")
        if f.changed:
            lines += [f"{indent}# {x}" for x in _details(f)]
        if not f.changed:
            lines.append(f"{indent}ok {i} {f.cls}")
        elif f.allowed:
            lines.append(f"{indent}ok {i} {f.cls} # XFAIL allowed by --allow")
        elif f.regression:
            lines.append(f"{indent}not ok {i} {f.cls}")
            failed = True
        else:
            lines.append(f"{indent}ok {i} {f.cls} # {f.verdict}")
    return lines, failed


def subtest_name(res: Result, cpu: str) -> str:
    """``era E cpu none`` / ``era E->F cpu none``: one KTAP subtest per era x CPU preset."""
    o, n = res.old.era, res.new.era
    return f"era {o if o == n else f'{o}->{n}'} cpu {cpu}"


def ktap(res: Result) -> str:
    """KTAP v1: one test per era x CPU preset, each with a nested test per class in
    ``CLASSES`` order (a stable plan)."""
    cpus = res.cpus()
    lines = ["KTAP version 1"]
    lines += [f"# {x}" for x in _header(res)]
    lines.append(f"1..{len(cpus)}")
    npass = nfail = nskip = 0
    for i, cpu in enumerate(cpus, 1):
        name = subtest_name(res, cpu)
        if not any(MCase.from_key(k).cpu == cpu for k in res.new.results
                   if k in res.old.results) and not any(
                       f.sites for f in res.for_cpu(cpu).values()
                       if f.cls != "routine_added_or_removed"):
            lines.append(f"ok {i} {name} # SKIP no case runs on both sides on this CPU path")
            nskip += 1
            continue
        sub, failed = _ktap_classes(res.for_cpu(cpu), "  ", name)
        lines += sub
        lines.append(f"{'not ok' if failed else 'ok'} {i} {name}")
        nfail += failed
        npass += not failed
    lines.append(f"# {result_line(res)}")
    lines.append(f"# Totals: pass:{npass} fail:{nfail} xfail:0 xpass:0 skip:{nskip} "
                 "error:0")
    return "\n".join(lines) + "\n"


def ktap_error(message: str) -> str:
    """KTAP for a check that could not run: still a result a dashboard can show."""
    msg = message.replace("\n", " ").replace("#", "")
    return ("KTAP version 1\n1..1\n"
            f"# error: {msg}\n"
            f"not ok 1 emu_check # ERROR {msg}\n"
            "# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:1\n")


def _times(root: ET.Element, *elements: ET.Element, started: float, seconds: float) -> None:
    import datetime
    stamp = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S")
    for el in (root, *elements):
        el.set("time", f"{seconds:.3f}")
    for el in elements:
        el.set("timestamp", stamp)
    root.set("timestamp", stamp)


def junit(res: Result, *, started: float, seconds: float) -> str:
    """JUnit XML: a testsuite "emu check" with one testcase per class.

    Args:
        res: the check result.
        started: when the check started (seconds since the epoch): ``timestamp``.
        seconds: how long it ran: ``time``.
    """
    fails = sum(1 for f in res.findings.values() if f.regression)
    skipped = sum(1 for f in res.findings.values() if f.changed and f.allowed)
    root = ET.Element("testsuites", name="emu check", tests=str(len(res.findings)),
                      failures=str(fails), errors="0", skipped=str(skipped))
    suite = ET.SubElement(root, "testsuite", name=f"emu check {res.old.label} -> "
                          f"{res.new.label}", tests=str(len(res.findings)),
                          failures=str(fails), errors="0", skipped=str(skipped))
    _times(root, suite, started=started, seconds=seconds)
    props = ET.SubElement(suite, "properties")
    for k, v in (("old", res.old.label), ("new", res.new.label), ("era", res.new.era),
                 ("routines", ",".join(res.common)), ("verdict", res.verdict),
                 ("strict", str(res.strict).lower())):
        ET.SubElement(props, "property", name=k, value=v)
    for f in res.findings.values():
        title, measure = CLASSES[f.cls]
        tc = ET.SubElement(suite, "testcase", classname="emu.check", name=f.cls)
        text = "\n".join([f"{title}: {_split(f)} ({len(f.cases)} case(s), {len(f.sites)} "
                          f"map site(s)); {measure}: {_counts(f)}", *_details(f)])
        if f.regression:
            el = ET.SubElement(tc, "failure", message=f"{title} ({_split(f)})", type=f.cls)
            el.text = text
        elif f.changed and f.allowed:
            el = ET.SubElement(tc, "skipped", message=f"allowed by --allow: {title}")
            el.text = text
        else:
            ET.SubElement(tc, "system-out").text = text
    return _xml(root)


def junit_error(message: str, kind: str, *, started: float, seconds: float) -> str:
    """JUnit for a check that could not run: one testcase with an ``<error>``."""
    root = ET.Element("testsuites", name="emu check", tests="1", failures="0", errors="1",
                      skipped="0")
    suite = ET.SubElement(root, "testsuite", name="emu check", tests="1", failures="0",
                          errors="1", skipped="0")
    _times(root, suite, started=started, seconds=seconds)
    tc = ET.SubElement(suite, "testcase", classname="emu.check", name="emu_check")
    ET.SubElement(tc, "error", message=message, type=kind).text = message
    return _xml(root)


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"


# ---- ranges and bisect ----------------------------------------------------------------------

_RANGE_STATUS = {"same": "same", "better": "better", "neutral": "changed", "worse": "worse",
                 "unbuildable": "unbuildable"}


def _row_changes(row: Row) -> str:
    parts = []
    for d in ("worse", "better", "neutral"):
        names = [f"{c} {n[d]}" for c, n in row.classes.items() if n.get(d)]
        if names:
            parts.append(f"{d}: {', '.join(names)}")
    return "; ".join(parts)


def range_row(row: Row, cached: bool = False) -> str:
    """One commit of a range as one plain line (printed as soon as it is known)."""
    status = "REGRESSION" if row.regression else _RANGE_STATUS.get(row.verdict, row.verdict)
    what = row.message if row.verdict == "unbuildable" else _row_changes(row)
    era = row.era or "-"
    line = f"{row.sha[:12]}  {era:<5} {status:<11} {row.subject}" + (
        " (from the journal)" if cached else "")
    return line + (f"\n{'':14}{what}" if what else "")


def range_summary(rr: RangeResult) -> str:
    """The lines after the rows: first change, first regression, the result."""
    lines = []
    if rr.resumed:
        lines.append(f"resumed: {rr.resumed} of {len(rr.rows)} commit(s) were already checked "
                     "(journal of an earlier run)")
    if not rr.rows:
        lines.append("no commit in the range touches the file")
    fc, fr = rr.first_change, rr.first_regression
    if fc is not None:
        lines.append(f"first change: {fc.sha[:12]} {fc.subject} ({fc.verdict})")
        lines.append(f"  details: {fc.command}")
    elif rr.rows:
        lines.append("first change: none (every commit behaves as the one before it)")
    if fr is not None and fr is not fc:
        lines.append(f"first regression: {fr.sha[:12]} {fr.subject}")
        lines.append(f"  details: {fr.command}")
    bad = [r for r in rr.rows if r.regression]
    skipped = sum(1 for r in rr.rows if r.verdict == "unbuildable")
    tail = f"; {skipped} unbuildable" if skipped else ""
    lines.append(f"result: regression at {len(bad)} of {len(rr.rows)} commit(s){tail}; exit 1"
                 if bad else f"result: no regression in {len(rr.rows)} commit(s){tail}; exit 0")
    return "\n" + "\n".join(lines) + "\n"


def range_ktap(rr: RangeResult) -> str:
    """KTAP v1 for a range: one test per commit (an unbuildable one is a SKIP)."""
    lines = ["KTAP version 1", f"# emu check: {rr.start}..{rr.end} in {rr.tree}, {rr.file}",
             f"1..{len(rr.rows)}"]
    npass = nfail = nskip = 0
    for i, row in enumerate(rr.rows, 1):
        name = f"{row.sha[:12]} {row.subject}".replace("#", "")
        if row.verdict == "unbuildable":
            lines.append(f"# {row.message}".replace("\n", " "))
            lines.append(f"ok {i} {name} # SKIP unbuildable")
            nskip += 1
            continue
        if row.classes:
            lines.append(f"# era {row.era}: {_row_changes(row)}")
        if row.regression:
            lines.append(f"not ok {i} {name}")
            nfail += 1
        else:
            lines.append(f"ok {i} {name}" + (f" # {row.verdict}" if row.verdict != "same"
                                              else ""))
            npass += 1
    lines.append(f"# Totals: pass:{npass} fail:{nfail} xfail:0 xpass:0 skip:{nskip} error:0")
    return "\n".join(lines) + "\n"


def bisect_line(new: str, good: str, code: int, res: Result | None, why: str) -> str:
    """``emu check --bisect``'s one line: what git bisect is told, and why."""
    if res is None:
        return f"bisect: {new} cannot be built: skip (exit {code}): {why}"
    bad = [f"{c} ({f.count('worse')} worse)" if f.worse else c
           for c, f in res.findings.items() if f.regression]
    if bad:
        return f"bisect: {new} is bad against {good}: {', '.join(bad)} (exit {code})"
    return f"bisect: {new} is good against {good}: {res.verdict} (exit {code})"
