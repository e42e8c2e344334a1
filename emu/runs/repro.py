"""Reproducers: the ``emu run`` options that re-run one case of a sweep, fuzz or check."""

from __future__ import annotations

from typing import Any


def case_options(c: Any) -> list[str]:
    """The ``emu run`` options that reproduce a case.

    ``c`` has the fields of a case: length, src_align, dst_align, poison, unmapped,
    direction, cpu and routine (``sweep.Case`` and ``check.MCase`` both do).
    """
    a = ["--len", str(c.length), "--src-align", hex(c.src_align), "--dst-align", hex(c.dst_align)]
    if c.poison:
        a += ["--poison", ",".join(hex(p) for p in c.poison)]
    if c.unmapped:
        a += ["--unmapped", ",".join(hex(p) for p in c.unmapped)]
    if c.direction != "from":
        a += ["--direction", c.direction]
    return a + ["--cpu", c.cpu, "--routine", c.routine]
