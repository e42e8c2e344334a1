"""Which #MC severity rules a kernel tree implements, read from its own severity.c.

Follows kernel-facts.md §6a (arch/x86/kernel/cpu/mce/severity.c, ``error_context()``).  A
version number misleads on stable trees: Debian's 6.1.192 carries the 2025 fix
(1a15bb8303b6), so its ``error_context()`` tests ``is_copy_from_user()`` before the switch on
the fixup type, unlike mainline 6.1.  So the rules of a tree are read from the code of the
function itself, at run time (no kernel text is kept in the project):

* ``ex_has_fault_handler()`` decides: the ≤ v5.9 rules (only ex_handler_fault entries);
* the handler type (``EX_HANDLER_UACCESS`` / ``ex_get_fault_handler_type``): v5.10 – v5.15;
* a ``switch`` on the fixup type whose ``case EX_TYPE_UACCESS`` / ``EX_TYPE_COPY`` requires
  ``is_copy_from_user()``: v5.16 – v6.14 (5.16 and 5.17 grade alike);
* ``is_copy_from_user()`` tested before that switch, which no longer lists UACCESS/COPY:
  the 2025 rules.

Anything else is not guessed: ``read_rules`` returns None and the caller keeps the era's rules,
saying why.
"""

from __future__ import annotations

import re

from emu.build.detect import strip_comments
from emu.kernel.severity import MceRules, Severity

#: Where the rules live in a kernel tree.
SEVERITY_C = "arch/x86/kernel/cpu/mce/severity.c"

_DEF = re.compile(r"\berror_context\s*\(\s*struct\s+mce\s*\*\s*\w+[^)]*\)\s*\{")
_CASE = re.compile(r"\bcase\s+(EX_TYPE_\w+)\s*:")


def error_context_body(text: str) -> str | None:
    """The body of ``error_context()`` in a severity.c (comments removed), or None."""
    code = strip_comments(text)
    m = _DEF.search(code)
    if m is None:
        return None
    depth, i = 1, m.end()
    while i < len(code) and depth:
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        i += 1
    return code[m.end():i - 1] if depth == 0 else None


def _copy_test(body: str) -> int | None:
    """Where the first ``if`` on is_copy_from_user()'s answer starts (None: no such test)."""
    var = re.search(r"\b(\w+)\s*=\s*is_copy_from_user\s*\(", body)
    pats = [r"\bif\s*\([^)]*\bis_copy_from_user\s*\("]
    if var is not None:
        pats.append(rf"\bif\s*\(\s*!?\s*{re.escape(var.group(1))}\b")
    hits = [m.start() for p in pats for m in re.finditer(p, body)]
    return min(hits) if hits else None


def read_rules(text: str, name: str) -> tuple[MceRules | None, str]:
    """The rules a severity.c implements, from its ``error_context()``.

    Args:
        text: the severity.c source.
        name: how to name it in the note (``debian-6.1 severity.c``).

    Returns:
        (the rules, or None when the code matches no known rule set; the reason, for the
        note the caller prints either way).
    """
    body = error_context_body(text)
    if body is None:
        return None, f"{name} has no error_context() emu can read"
    if re.search(r"\bex_has_fault_handler\s*\(", body):
        return MceRules(Severity.V5_9, f"from {name}: error_context() recovers only "
                        "ex_has_fault_handler() entries"), ""
    if re.search(r"\bEX_HANDLER_UACCESS\b|\bex_get_fault_handler_type\s*\(", body):
        return MceRules(Severity.V5_10, f"from {name}: error_context() tests the handler "
                        "type (EX_HANDLER_UACCESS with is_copy_from_user())"), ""
    sw = re.search(r"\bswitch\s*\(", body)
    if sw is None:
        return None, f"{name}: error_context() has no switch on the fixup type"
    cases = _CASE.findall(body[sw.start():])
    copy_cases = [c for c in cases if c in ("EX_TYPE_UACCESS", "EX_TYPE_COPY")]
    at = _copy_test(body)
    if at is not None and at < sw.start() and not copy_cases:
        return MceRules(Severity.V2025, f"from {name}: is_copy_from_user() tested before "
                        "the fixup-type switch"), ""
    if copy_cases and (at is None or at > sw.start()):
        return MceRules(Severity.V5_17, f"from {name}: the fixup-type switch recovers "
                        f"{'/'.join(copy_cases)} only with is_copy_from_user()"), ""
    return None, (f"{name}: error_context() matches no known rules (switch cases: "
                  f"{', '.join(cases) or 'none'})")
