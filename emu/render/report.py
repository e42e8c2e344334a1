"""Rendering: rich tables for terminals, JSON for machines.  Nothing else formats text.

JSON output is deterministic (sorted keys, no timings, no host paths) so the same command
gives byte-identical output twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emu.kernel.outcome import Outcome


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


#: Width for output that is not a terminal and has no ``COLUMNS`` (pipes, CI logs).
PIPE_WIDTH = 80


def width(stream: IO[str]) -> int:
    """Table width: ``COLUMNS`` if set, else the terminal's, else ``PIPE_WIDTH``."""
    import os
    import shutil
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return shutil.get_terminal_size((PIPE_WIDTH, 24)).columns
    return PIPE_WIDTH


def console(stream: IO[str]) -> Console:
    return Console(file=stream, width=width(stream), highlight=False, soft_wrap=False)


def print_table(c: Console, t: Table) -> None:
    """Print ``t`` as a table if it fits the console unwrapped; otherwise stack it: per row, the first cell as a heading, then ``column: value`` fields
    packed into lines, broken only between fields and at spaces.  So a symbol+offset or a
    command is never cut, whatever the width."""
    from rich.measure import Measurement
    need = Measurement.get(c, c.options.update(width=10**6), t)
    if need.maximum <= c.width:
        c.print(t)
        return
    import textwrap
    out = c.file
    if t.title:
        from rich.text import Text
        title = Text.from_markup(t.title).plain if isinstance(t.title, str) else str(t.title)
        out.write(textwrap.fill(title, c.width, break_long_words=False,
                                break_on_hyphens=False) + "\n")
    cols = t.columns
    heads = [str(col.header) for col in cols]
    cells = [[str(x) for x in col._cells] for col in cols]
    for i in range(t.row_count):
        row = [cells[j][i] if i < len(cells[j]) else "" for j in range(len(cols))]
        if t.show_header:
            out.write((f"{heads[0]}{row[0]}" if heads[0] == "#" else row[0]) + "\n")
            fields = [f"{h}: {v}" for h, v in zip(heads[1:], row[1:]) if v != ""]
            lines: list[str] = []
            for f in fields:
                if lines and len(lines[-1]) + 2 + len(f) <= c.width:
                    lines[-1] += "  " + f
                else:
                    lines.append("  " + f)
            for ln in lines:
                out.write(textwrap.fill(ln, c.width, subsequent_indent="      ",
                                        break_long_words=False, break_on_hyphens=False) + "\n")
        else:   # a key/value table: one field per line
            text = f"{row[0]}: " + "  ".join(row[1:]) if row[0] else "  ".join(row[1:])
            out.write(textwrap.fill(text, c.width, subsequent_indent="    ",
                                    break_long_words=False, break_on_hyphens=False) + "\n")


def _offsets(o: Any, kind: str) -> str:
    fs = [f for f in o.faults if f.kind == kind]
    if not fs:
        return "-"
    where = ", ".join(f"+{f.offset:#x}" if f.offset is not None else f"{f.address:#x}"
                      for f in fs)
    return f"{len(fs)} @ {where}"


def _ret(o: Outcome) -> str:
    return "-" if o.return_value is None else str(o.return_value)


def run_table(o: Outcome, title: str, stream: IO[str], *, rules: str | None = None,
              noun: str = "copied", note: str = "") -> None:
    """One case: the summary, then every fault with its extable entry and fixup
    (``rules``: the #MC rules and how emu knew them; ``noun``: what the routine does to the
    bytes, "copied" or "cleared"; ``note``: a remark on the case)."""
    c = console(stream)
    t = Table(title=escape(title), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("state", o.state.value)
    t.add_row("returned", f"{_ret(o)} (bytes not {noun})" if o.return_value is not None else "-")
    t.add_row(f"bytes {noun}", f"{o.bytes_copied} of {o.length}")
    t.add_row(f"written past {noun} prefix", str(o.written_beyond))
    t.add_row("written outside buffer", str(o.written_outside))
    t.add_row("contract", o.verdict)
    t.add_row("tail retry", "yes" if o.retouched else "no")
    if o.insns is not None:
        t.add_row("instructions", str(o.insns))
    if o.message:
        t.add_row("message", o.message)
    if rules:
        t.add_row("#MC rules", escape(rules))
    if note:
        t.add_row("note", escape(note))
    print_table(c, t)
    if o.faults:
        ft = Table(title="faults", title_justify="left")
        for col in ("#", "kind", "at", "address", "offset", "extable entry", "action",
                    "fixup", "note"):
            ft.add_column(col)
        for i, f in enumerate(o.faults, 1):
            ft.add_row(str(i), f.kind.upper(), escape(f.where), f"{f.address:#x}",
                       "-" if f.offset is None else f"{f.offset:#x}", f.handler or "none",
                       f.action, escape(f.fixup_where or "-"), escape(f.note))
        print_table(c, ft)


def diff_table(rows: Sequence[tuple[str, str, Any]], title: str, stream: IO[str], *,
               code: Sequence[str] | None = None, noun: str = "copied") -> None:
    """One scenario across variants: a row per (variant, routine).  A row's result is an
    ``Outcome`` or a helper's ``HelperResult`` (returned: its error code; copied: the size
    when the value arrived; ``noun`` names that column).  ``code``: a "code" column (how the row's routine compares with
    the reference source's, ``emu.runs.codediff``)."""
    c = console(stream)
    t = Table(title=escape(title), title_justify="left")
    for col in ("variant", "routine", "returned", noun, "contract", "#MC", "#PF",
                "tail retry", "state", *(("code",) if code is not None else ())):
        t.add_column(col)
    for k, (variant, routine, o) in enumerate(rows):
        if isinstance(o, Outcome):
            cells = [_ret(o), str(o.bytes_copied), o.verdict, _offsets(o, "mc"),
                     _offsets(o, "pf"), "yes" if o.retouched else "no"]
        else:
            cells = ["-" if o.err is None else str(o.err),
                     str(o.size if o.verdict == "ok" and o.err == 0 else 0), o.verdict,
                     _offsets(o, "mc"), _offsets(o, "pf"), "no"]
        t.add_row(escape(variant), routine, *cells, o.state.value,
                  *((escape(code[k]),) if code is not None else ()))
    print_table(c, t)


def sweep_summary(summary: dict[str, Any], stream: IO[str]) -> None:
    """``emu sweep``: per variant, outcome classes and violation classes, each with one
    minimal reproducer.  Violations a copy_from_user() caller does not notice (it zero-pads
    the tail) are marked as such, not hidden.  Plain lines, so commands are never wrapped."""
    w = stream.write
    pending = summary.get("pending", 0)
    w(f"sweep: {summary['cases']} cases over {len(summary['variants'])} variant(s)"
      + (f", {pending} pending (continue with --resume)" if pending else "") + "\n")
    for v in summary["variants"].values():
        w(f"\n{v['label']}: {v['cases']} cases, {v['runs']} distinct runs\n")
        for name, slot in v["classes"].items():
            w(f"  {name:<24} {slot['count']:>7}  {slot.get('example', '-')}\n")
            if name == "tool_error" and slot.get("message"):
                w(f"  {'':<24} {'':>7}  ({slot['message']})\n")
        for name, slot in v["violations"].items():
            who = "benign for copy_from_user" if slot["benign_for_copy_from_user"] else \
                "not benign"
            w(f"  ! {name:<22} {slot['count']:>7}  [{who}]  {slot.get('example', '-')}\n")


def campaign_report(rep: dict[str, Any], stream: IO[str]) -> None:
    """``emu campaign``: a line per revision × CPU model (era, classes, violations), then
    what appeared and what went away from one revision to the next."""
    w = stream.write
    pending = rep.get("pending", 0)
    w(f"campaign: {rep['tree']} {rep['range']} ({rep['file']}): {rep['revisions']} "
      f"revision(s) x {len(rep['cpus'])} CPU model(s), {rep['cases']} cases"
      + (f", {pending} pending (continue with --resume)" if pending else "") + "\n")

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"
    heading = None
    for r in rep["rows"]:
        if r["revision"] != heading:
            heading = r["revision"]
            w(f"\n{r['revision']} {r['subject']}\n")
        w(f"  cpu {r['cpu']:<10} era {r['era'] or '?'}  {r['cases']} cases: "
          f"{counts(r['classes'])}\n")
        if r["violations"]:
            w(f"  {'':<14} violations: {counts(r['violations'])}\n")
    w("\nchanges along the range:\n" if rep["changes"] else "\nno changes along the range\n")
    for ch in rep["changes"]:
        parts = []
        for group in ("classes", "violations"):
            for how, label in (("appeared", "+"), ("went_away", "-")):
                parts += [f"{label}{n}" for n in ch[group][how]]
        w(f"  {ch['revision']} (cpu {ch['cpu']}, after {ch['previous']}): {' '.join(parts)}\n")


def fuzz_result(res: dict[str, Any], stream: IO[str]) -> None:
    """``emu fuzz``: the shrunk failing case as an ``emu run`` command, or "nothing found"."""
    w = stream.write
    if not res["found"]:
        w("fuzz: no failure of the wanted classes found\n")
        return
    r = res["record"]
    w(f"fuzz: found {', '.join(res['failures'])} (seed {res['seed']}, {res['tried']} cases "
      "tried incl. shrinking); shrunk case:\n")
    w(f"  {res['command']}\n")
    ret = "-" if r["return_value"] is None else r["return_value"]
    w(f"  state {r['state']}, returned {ret}, copied {r['bytes_copied']} of "
      f"{res['case']['length']}, class {r['class']}, violations "
      f"{', '.join(r['violations']) or '-'}\n")
    if r.get("message"):
        w(f"  {r['message']}\n")
    if res.get("saved"):
        w(f"  saved: {res['saved']}\n")


def rules_notes(notes: Sequence[tuple[str, str]], stream: IO[str]) -> None:
    """Under a table: the #MC rules each variant was judged by, and how emu knew (one line
    when every variant has its era's own rules)."""
    if all(rules.endswith("'s rules)") and "(era " in rules for _, rules in notes):
        stream.write("#MC rules: each variant's era's own (emu eras lists them)\n")
        return
    for variant, rules in notes:
        stream.write(f"#MC rules: {variant}: {rules}\n")


def helper_table(g: Any, title: str, stream: IO[str], *, rules: str | None = None,
                 note: str = "") -> None:
    """One get_user / put_user call (``emu.kernel.helpers.HelperResult``): the error code,
    the value, the user bytes, the faults."""
    c = console(stream)
    t = Table(title=escape(title), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    conv = g.convention
    t.add_row("state", g.state.value)
    t.add_row(conv.result, "-" if g.err is None else f"{g.err}"
              + (" (-EFAULT)" if g.err == -14 else ""))
    if conv.value is not None:     # get_user: the value register, then the user bytes
        t.add_row(conv.value, "-" if g.value is None else f"{g.value:#x}")
        t.add_row("user value", f"{g.expected:#x}")
    else:                          # put_user: the value passed, the user bytes before/after
        t.add_row("rax (value)", f"{g.expected:#x}")
        t.add_row("user before", f"{g.before:#x}")
        t.add_row("user after", "-" if g.value is None else f"{g.value:#x}")
        t.add_row("written outside", str(g.written_outside))
    t.add_row("verdict", g.verdict)
    if g.message:
        t.add_row("message", g.message)
    if rules:
        t.add_row("#MC rules", escape(rules))
    if note:
        t.add_row("note", escape(note))
    for i, f in enumerate(g.faults, 1):
        t.add_row(f"fault {i}", escape(f"{f.kind.upper()} at {f.where}, {f.handler or 'no entry'}"
                                       f" -> {f.action} {f.fixup_where or ''}".rstrip()))
    print_table(c, t)


class SweepProgress:
    """Progress of a running sweep on stderr: a rich bar on a terminal; otherwise (CI logs,
    pipes) one plain line every ``interval`` seconds — done/total, rate, ETA — so a sweep
    shorter than the interval prints nothing.  Call it as ``progress(done, total)``."""

    def __init__(self, stream: IO[str], *, tty: bool, interval: float = 10.0,
                 clock: Any = None) -> None:
        import time
        self._stream = stream
        self._clock = clock or time.monotonic
        self._start = self._clock()
        self._next = self._start + interval
        self._interval = interval
        self._bar: Any = None
        self._task: Any = None
        self._tty = tty

    def __call__(self, done: int, total: int) -> None:
        if self._tty:
            if self._bar is None:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)
                self._bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.percentage:>3.0f}%"),
                                     TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(),
                                     console=Console(file=self._stream), transient=True)
                self._bar.start()
                self._task = self._bar.add_task("sweep", total=total)
            self._bar.update(self._task, completed=done)
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        self._stream.write(progress_line(done, total, now - self._start) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def progress_line(done: int, total: int, elapsed: float) -> str:
    """``sweep: 12288/24576 cases (50%), 2048 cases/s, ETA 6 s``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "-"
    pct = 100 * done // total if total else 100
    return f"sweep: {done}/{total} cases ({pct}%), {rate:.0f} cases/s, ETA {eta}"
