"""A KTAP v1 checker written from the rules of the kernel's Documentation/dev-tools/ktap.rst.

``validate(text)`` parses a KTAP document into a tree and raises ``AssertionError`` on any
rule it breaks: a version line first; a plan ``1..N`` after it; result lines ``ok N`` /
``not ok N`` numbered 1, 2, ... at each level and as many as the plan says; a nested test's
lines indented by two more spaces than its parent, starting with its own version line and
ending before the parent's result line; a parent whose subtest failed fails too (skipped
and XFAIL subtests do not count); the description holds no ``#``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

RESULT = re.compile(r"^(ok|not ok) (\d+)(?: ([^#]*?))?\s*(?:# ?(.*))?$")


@dataclass
class Test:
    name: str = ""
    ok: bool = True
    number: int = 0
    directive: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list["Test"] = field(default_factory=list)
    plan: int | None = None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _doc(lines: list[str], i: int, depth: int) -> tuple[Test, int]:
    """Parse one KTAP document at ``depth`` (2 spaces per level) starting at lines[i]."""
    pad = "  " * depth
    assert lines[i] == f"{pad}KTAP version 1", f"line {i + 1}: expected a version line"
    doc = Test()
    i += 1
    pending: list[str] = []
    nested: Test | None = None
    while i < len(lines):
        line = lines[i]
        ind = _indent(line)
        body = line[ind:]
        if ind < 2 * depth:
            break                       # back to the parent's level
        if ind > 2 * depth:
            assert ind == 2 * (depth + 1) and body == "KTAP version 1", \
                f"line {i + 1}: a nested test starts with its version line, indented by 2"
            assert nested is None, f"line {i + 1}: two nested documents for one result"
            nested, i = _doc(lines, i, depth + 1)
            continue
        if body.startswith("#"):
            pending.append(body)
        elif re.fullmatch(r"1\.\.\d+", body):
            assert doc.plan is None and not doc.subtests, f"line {i + 1}: misplaced plan"
            doc.plan = int(body[3:])
        elif body.startswith(("ok ", "not ok ")):
            m = RESULT.match(body)
            assert m, f"line {i + 1}: malformed result line {body!r}"
            t = nested or Test()
            t.ok, t.number = m.group(1) == "ok", int(m.group(2))
            t.name, t.directive = (m.group(3) or "").strip(), (m.group(4) or "").strip()
            t.diagnostics = pending
            assert t.number == len(doc.subtests) + 1, \
                f"line {i + 1}: test number {t.number}, expected {len(doc.subtests) + 1}"
            if nested is not None:
                failed = [s for s in nested.subtests if not s.ok
                          and not s.directive.upper().startswith(("SKIP", "XFAIL"))]
                assert not failed or not t.ok, \
                    f"line {i + 1}: {t.name} passes although a subtest failed"
            doc.subtests.append(t)
            pending, nested = [], None
        else:
            raise AssertionError(f"line {i + 1}: not a KTAP line: {line!r}")
        i += 1
    assert nested is None, "a nested document without its parent's result line"
    assert doc.plan is not None, "no plan line"
    assert doc.plan == len(doc.subtests), f"plan 1..{doc.plan}, {len(doc.subtests)} results"
    return doc, i


def validate(text: str) -> Test:
    lines = text.splitlines()
    doc, i = _doc(lines, 0, 0)
    assert i == len(lines), f"line {i + 1}: text after the document"
    return doc
