"""The policy subcommands: ``emu run --caller write``, ``emu explain`` and ``emu map``.

Argument handling only (``cli.py`` registers these and dispatches); the work is done by
``caller``, ``trace`` and ``map``, and the text by ``explain``.  ``--mce-rules`` picks the #MC
severity rules independently of the copy source (kernel-facts §6a): era F's source spans both
the 5.17-6.14 rules and the 2025 is_copy_from_user-first rules.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import IO

from emu.runs import caller
from emu.render import explain
from emu.render import report
from emu.runs import trace
from emu.runs import map as umap
from emu.kernel.eras import ERAS, Era, cpu_name, parse_cpu
from emu.errors import UsageError
from emu.core.machine import Buffers
from emu.kernel.policy import Severity
from emu.build.resolve import routine_for
from emu.build.target import Settings, Target, get_target, read_source, resolve_era

RULES = {s.value: s for s in Severity}


def _rules(text: str | None) -> Severity | None:
    if text is None:
        return None
    key = text.strip().lower()
    key = {"5.9": "v5.9", "5.10": "v5.10", "5.16": "v5.16", "5.17": "v5.17",
           "v2025": "2025"}.get(key, key)
    if key not in RULES:
        raise UsageError(f"unknown --mce-rules '{text}' (known: {', '.join(RULES)})")
    return RULES[key]


def add_rule_options(p: argparse.ArgumentParser) -> None:
    """--mce-rules, --fault-in, --no-mce-count."""
    p.add_argument("--mce-rules", metavar="RULES",
                   help="#MC severity rules, independent of the source: v5.9, v5.10, v5.16, "
                   "v5.17 (to v6.14) or 2025 (default: the era's)")
    p.add_argument("--fault-in", choices=[f.value for f in caller.FaultIn],
                   help="--caller write: extable type of the fault-in get_user load "
                   "(default: the era's, see the model assumptions)")
    p.add_argument("--no-mce-count", dest="mce_count", action="store_const", const=False,
                   default=None, help="--caller write: model a kernel before 81065b35e248 "
                   "(5.10.0-5.10.67, 5.11-5.14): no mce_count limit")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options ``emu run`` gains for the caller model."""
    p.add_argument("--caller", choices=["write"],
                   help="run the copy inside a caller model: write(2) from the user buffer "
                   "(--dst-align is the file position's page offset)")
    add_rule_options(p)


def add_parsers(sub: argparse._SubParsersAction, case_args: Callable[[argparse.ArgumentParser],  # type: ignore[type-arg]
                None]) -> None:
    """The ``explain`` and ``map`` subcommands."""
    e = sub.add_parser("explain", help="a readable trace of one scenario: each fault, its "
                       "extable entry, the handler's register changes and the fixup path")
    e.add_argument("source", help="an era key (A-F) or a .S file")
    e.add_argument("--era", help="era whose encoding and rules apply to a .S file (default: E)")
    e.add_argument("--caller", choices=["write"], help="explain the write(2) caller model")
    add_rule_options(e)
    case_args(e)

    m = sub.add_parser("map", help="every instruction that can touch user memory: extable "
                       "entry, type, fixup, and whether an #MC there is recovered")
    m.add_argument("source", nargs="?", help="an era key (A-F) or a .S file")
    m.add_argument("--diff", nargs=2, metavar=("A", "B"),
                   help="compare two sources or eras and flag what changed")
    m.add_argument("--era", help="era whose encoding and rules apply to .S files (default: E)")
    m.add_argument("--mce-rules", metavar="RULES", help="#MC severity rules for every side "
                   "(v5.9, v5.10, v5.16, v5.17, 2025; default: each era's)")
    m.add_argument("--cpu", default="none", help="CPU features for ALTERNATIVE sites")
    m.add_argument("--routine", action="append", default=[],
                   help="only this function (repeatable; default: every function)")
    m.add_argument("--json", action="store_true", help="print JSON")


# ---- sources ------------------------------------------------------------------------------


def _source(spec: str, era_key: str | None, rules: Severity | None, cpu: frozenset[str]
            ) -> tuple[str, Target, Era | None, Severity]:
    """An era key or a .S file → (label, target, era or None, severity rules used)."""
    era = ERAS.get(spec.upper()) if not Path(spec).suffix else None
    if era is not None:
        sev = rules or era.severity
        t = get_target(read_source(era.path), Path(era.path).name,
                       Settings(era.encoding, era.ex_layout, sev), cpu)
        return f"{era.key} {era.versions}", t, era, sev
    if not Path(spec).suffix and not Path(spec).exists():
        raise UsageError(f"'{spec}' is neither an era ({', '.join(ERAS)}) nor a .S file")
    base = resolve_era(era_key) or ERAS["E"]
    sev = rules or base.severity
    t = get_target(read_source(spec), Path(spec).name,
                   Settings(base.encoding, base.ex_layout, sev), cpu)
    return Path(spec).name, t, None, sev


def _buffers(a: argparse.Namespace) -> Buffers:
    return Buffers(direction=a.direction, length=a.length, src_align=a.src_align,
                   dst_align=a.dst_align, poison=tuple(a.poison), unmapped=tuple(a.unmapped))


def _write(a: argparse.Namespace, cpu: frozenset[str], trace_code: bool) -> caller.WriteResult:
    if not a.source:
        raise UsageError(f"--caller write needs an era key ({', '.join(ERAS)})")
    era = ERAS.get(a.source.upper()) if not Path(a.source).suffix else None
    if era is None:
        raise UsageError(f"--caller write needs an era key ({', '.join(ERAS)}), not "
                         f"'{a.source}': the caller model is per era")
    routine = era.routine(a.routine) if a.routine else None
    return caller.simulate(era, cpu, _buffers(a), routine=routine,
                           mce_rules=_rules(a.mce_rules),
                           fault_in=caller.FaultIn(a.fault_in) if a.fault_in else None,
                           mce_count=a.mce_count, trace_code=trace_code)


# ---- commands ------------------------------------------------------------------------------


def cmd_run_caller(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu run ERA --caller write``."""
    return _show_write(a, parse_cpu(a.cpu), out, detail=False)


def _show_write(a: argparse.Namespace, cpu: frozenset[str], out: IO[str], *,
                detail: bool) -> int:
    """Run the write(2) model and print it (JSON, or the step log with ``detail`` faults)."""
    r = _write(a, cpu, detail)
    if a.json:
        out.write(report.dumps(r.to_json()))
    else:
        explain.write(r, out, detail=detail)
    return 0


def cmd_run_rules(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu run SOURCE --mce-rules RULES``: one copy judged by another era's #MC rules."""
    for opt in ("tree", "file", "object", "vmlinux"):
        if getattr(a, opt, None):
            raise UsageError(f"--mce-rules works with era keys and .S files, not --{opt}")
    if getattr(a, "patch", None):
        raise UsageError("--mce-rules works with era keys and .S files, not --patch")
    if not a.source:
        raise UsageError("name a source: a .S file or an era key")
    cpu = parse_cpu(a.cpu)
    label, t, era, sev = _source(a.source, a.era, _rules(a.mce_rules), cpu)
    routine = routine_for(t, era, a.routine, cpu)
    o = t.run(routine, _buffers(a))
    if a.json:
        out.write(report.dumps({"variant": label, "routine": routine.name, "cpu": cpu_name(cpu),
                                "mce_rules": sev.value, **o.to_json()}))
    else:
        report.run_table(o, f"{label}: {routine.name} [cpu {cpu_name(cpu)}, #MC rules "
                         f"{sev.value}]", out)
    return 0


def cmd_diff_policy(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu diff --caller write`` (one write(2) per era) or ``emu diff --mce-rules R``."""
    for opt in ("tree", "file", "object", "vmlinux"):
        if getattr(a, opt, None):
            raise UsageError(f"--caller/--mce-rules work with era keys and .S files, not --{opt}")
    cpu = parse_cpu(a.cpu)
    specs = a.variants or list(ERAS)
    if not a.caller:
        if a.fault_in or a.mce_count is not None:
            raise UsageError("--fault-in and --no-mce-count apply to --caller write only")
        rows = []
        for spec in specs:
            label, t, era, sev = _source(spec, a.era, _rules(a.mce_rules), cpu)
            routine = routine_for(t, era, a.routine, cpu)
            rows.append((f"{label} (#MC {sev.value})", routine.name, t.run(routine, _buffers(a))))
        if a.json:
            out.write(report.dumps({"cpu": cpu_name(cpu), "rows": [
                {"variant": v, "routine": r, **o.to_json()} for v, r, o in rows]}))
        else:
            report.diff_table(rows, f"copy_{a.direction}_user len={a.length} "
                              f"src+{a.src_align:#x} poison={_fmt(a.poison)} cpu={cpu_name(cpu)}",
                              out)
        return 0
    results = []
    for spec in specs:
        if Path(spec).suffix or spec.upper() not in ERAS:
            raise UsageError(f"--caller write compares era keys ({', '.join(ERAS)}), not '{spec}'")
        ns = argparse.Namespace(**{**vars(a), "source": spec})
        results.append(_write(ns, cpu, False))
    if a.json:
        out.write(report.dumps({"cpu": cpu_name(cpu), "rows": [r.to_json() for r in results]}))
    else:
        explain.write_table(results, f"write(fd, buf, {a.length}) buf+{a.src_align:#x} "
                            f"poison={_fmt(a.poison)} unmapped={_fmt(a.unmapped)} "
                            f"cpu={cpu_name(cpu)}", out)
    return 0


def _fmt(offs: tuple[int, ...]) -> str:
    return ",".join(f"{o:#x}" for o in offs) or "-"


def cmd_explain(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu explain``: one copy, or the write(2) model with each step's faults."""
    cpu = parse_cpu(a.cpu)
    if a.caller:
        return _show_write(a, cpu, out, detail=True)
    if a.fault_in or a.mce_count is not None:
        raise UsageError("--fault-in and --no-mce-count apply to --caller write only")
    label, t, era, sev = _source(a.source, a.era, _rules(a.mce_rules), cpu)
    routine = routine_for(t, era, a.routine, cpu)
    bufs = _buffers(a)
    regs = (("rdi", bufs.dst), ("rsi", bufs.src), (routine.len_reg, bufs.length), ("rax", 0))
    tr = trace.run(t, routine, bufs, regs, trace=True)
    if a.json:
        out.write(report.dumps({"variant": label, "routine": routine.name,
                                "cpu": cpu_name(cpu), "mce_rules": sev.value,
                                **tr.outcome.to_json()}))
        return 0
    explain.copy(tr, t.image, bufs, f"{label}: {routine.name} [cpu {cpu_name(cpu)}, #MC rules "
                 f"{sev.value}]", routine.ret_reg, out)
    return 0


def cmd_map(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu map SOURCE`` or ``emu map --diff A B``."""
    cpu = parse_cpu(a.cpu)
    rules = _rules(a.mce_rules)
    funcs = a.routine or None
    if a.diff:
        if a.source:
            raise UsageError("emu map: give either SOURCE or --diff A B, not both")
        sides = []
        for spec in a.diff:
            label, t, _era, sev = _source(spec, a.era, rules, cpu)
            sides.append((label, sev, umap.build(t.image, sev, funcs)))
        (la, sa, ma), (lb, sb, mb) = sides
        changes = umap.diff(ma, mb)
        if a.json:
            out.write(report.dumps({"a": {"source": la, "mce_rules": sa.value},
                                    "b": {"source": lb, "mce_rules": sb.value},
                                    "changes": [c.to_json() for c in changes],
                                    "flagged": sum(1 for c in changes if c.flag)}))
        else:
            explain.map_diff(changes, f"map diff: {la} [#MC rules {sa.value}] -> {lb} "
                             f"[#MC rules {sb.value}], cpu {cpu_name(cpu)}", out)
        # like diff(1): 1 when a load that recovered an #MC now panics
        return 1 if any(c.flag.endswith("now panics") for c in changes) else 0
    if not a.source:
        raise UsageError("emu map: name a source (an era key or a .S file) or use --diff A B")
    label, t, _era, sev = _source(a.source, a.era, rules, cpu)
    rows = umap.build(t.image, sev, funcs)
    if a.json:
        out.write(report.dumps({"source": label, "mce_rules": sev.value, "cpu": cpu_name(cpu),
                                "accesses": [r.to_json() for r in rows]}))
        return 0
    explain.map_table(rows, f"map: {label} [#MC rules {sev.value}, cpu {cpu_name(cpu)}; "
                      "#MC verdicts assume copy_from_user]", out)
    return 0
