"""``emu run/diff --caller write``, ``emu explain`` and ``emu map``: the kernel's policy.

``--mce-rules`` picks the #MC severity rules independently of the copy source (kernel-facts
§6a): era F's source spans both the 5.17-6.14 rules and the 2025 is_copy_from_user-first
rules.  The write(2) model runs on any source spec: the copy routine comes from the source,
the caller semantics from its (detected) era's record.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO

from emu.build.resolve import Spec, era_for, label, resolve
from emu.cli import common
from emu.errors import UsageError
from emu.kernel.conventions import Oracle
from emu.kernel.eras import cpu_name, parse_cpu
from emu.kernel.severity import Severity
from emu.kernel.writemodel import FaultIn
from emu.render import explain, report
from emu.runs import caller, trace
from emu.runs import map as umap


def rule_args(p: argparse.ArgumentParser) -> None:
    """--mce-rules, --fault-in, --no-mce-count."""
    p.add_argument("--mce-rules", metavar="RULES",
                   help="#MC severity rules, independent of the source: v5.9, v5.10, v5.16, "
                   "v5.17 (to v6.14) or 2025 (default: the era's)")
    p.add_argument("--fault-in", choices=[f.value for f in FaultIn],
                   help="--caller write: extable type of the fault-in get_user load "
                   "(default: the era's, see the model assumptions)")
    p.add_argument("--no-mce-count", dest="mce_count", action="store_const", const=False,
                   default=None, help="--caller write: model a kernel before 81065b35e248 "
                   "(5.10.0-5.10.67, 5.11-5.14): no mce_count limit")


def caller_args(p: argparse.ArgumentParser) -> None:
    """Options ``run`` and ``diff`` gain for the caller model and the #MC rules."""
    p.add_argument("--caller", choices=["write"],
                   help="run the copy inside a caller model: write(2) from the user buffer "
                   "(--dst-align is the file position's page offset)")
    rule_args(p)


def no_caller_options(a: argparse.Namespace) -> None:
    if a.fault_in or a.mce_count is not None:
        raise UsageError("--fault-in and --no-mce-count apply to --caller write only")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("explain", help="a readable trace of one scenario: each fault, its "
                       "extable entry, the handler's register changes and the fixup path")
    e.add_argument("source", nargs="?", help=common.SPEC_HELP)
    e.add_argument("--caller", choices=["write"], help="explain the write(2) caller model")
    rule_args(e)
    common.case_args(e)
    common.source_args(e)
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("map", help="every instruction that can touch user memory: extable "
                       "entry, type, fixup, and whether an #MC there is recovered")
    m.add_argument("source", nargs="?", help=common.SPEC_HELP)
    m.add_argument("--diff", nargs=2, metavar=("A", "B"),
                   help="compare two sources (same forms) and flag what changed")
    m.add_argument("--mce-rules", metavar="RULES", help="#MC severity rules for every side "
                   "(v5.9, v5.10, v5.16, v5.17, 2025; default: each era's)")
    m.add_argument("--cpu", default="none", help="CPU features for ALTERNATIVE sites")
    m.add_argument("--routine", action="append", default=[],
                   help="only this function (repeatable; default: every function)")
    m.add_argument("--json", action="store_true", help="print JSON")
    common.source_args(m)
    m.add_argument("--user-only", action="store_true",
                   help="census (--vmlinux FILE without --routine): only user accesses")
    m.set_defaults(func=cmd_map)


# ---- the write(2) model ---------------------------------------------------------------------


def _write(a: argparse.Namespace, spec: Spec, cpu: frozenset[str],
           trace_code: bool) -> caller.WriteResult:
    era = era_for(spec)
    routine = None
    if a.routine:
        routine = resolve(spec, cpu, severity=common.rules(a.mce_rules),
                          routine=a.routine).routine_for(a.routine, cpu,
                                                         getattr(a, "convention", None))
    return caller.simulate(era, cpu, common.buffers(a), routine=routine,
                           mce_rules=common.rules(a.mce_rules),
                           fault_in=FaultIn(a.fault_in) if a.fault_in else None,
                           mce_count=a.mce_count, trace_code=trace_code, source=spec)


def _show_write(a: argparse.Namespace, cpu: frozenset[str], out: IO[str], *,
                detail: bool) -> int:
    """Run the write(2) model and print it (JSON, or the step log with ``detail`` faults)."""
    r = _write(a, common.spec(a, a.source), cpu, detail)
    if a.json:
        out.write(report.dumps(r.to_json()))
    else:
        explain.write(r, out, detail=detail)
    return 0


def cmd_run_caller(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu run SOURCE --caller write``."""
    return _show_write(a, parse_cpu(a.cpu), out, detail=False)


def cmd_diff_caller(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu diff --caller write``: one write(2) per variant."""
    cpu = parse_cpu(a.cpu)
    specs = common.specs(a, a.variants, patches=False)
    if a.patch:
        specs.append(specs[-1].with_patches(tuple(a.patch)))
    results = [_write(a, s, cpu, False) for s in specs]
    if a.json:
        out.write(report.dumps({"cpu": cpu_name(cpu), "rows": [r.to_json() for r in results]}))
    else:
        explain.write_table(results, f"write(fd, buf, {a.length}) buf+{a.src_align:#x} "
                            f"poison={common.fmt_offsets(a.poison)} "
                            f"unmapped={common.fmt_offsets(a.unmapped)} cpu={cpu_name(cpu)}",
                            out)
    return 0


# ---- explain and map -------------------------------------------------------------------------


def cmd_explain(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu explain``: one copy, or the write(2) model with each step's faults."""
    cpu = parse_cpu(a.cpu)
    if a.caller:
        return _show_write(a, cpu, out, detail=True)
    no_caller_options(a)
    spec = common.spec(a, a.source)
    t = resolve(spec, cpu, severity=common.rules(a.mce_rules), routine=a.routine)
    name, sev = label(spec, t), t.settings.severity
    routine = t.routine_for(a.routine, cpu, a.convention)
    conv = routine.convention
    if conv.oracle not in (Oracle.COPY, Oracle.CLEAR):
        raise UsageError(f"emu explain traces copy and clear routines; {routine.name} takes "
                         f"the {conv.name} convention: run it with emu run")
    bufs = common.buffers(a)
    t.check_case(routine, bufs)
    tr = trace.run(t, routine, bufs, t.registers(routine, bufs), trace=True)
    if a.json:
        out.write(report.dumps({"variant": name, "routine": routine.name,
                                "cpu": cpu_name(cpu), "mce_rules": sev.value,
                                "rules": t.rules.to_json(), **tr.outcome.to_json()}))
        return 0
    explain.copy(tr, t.image, bufs, f"{name}: {routine.name} [cpu {cpu_name(cpu)}, #MC rules "
                 f"{t.rules.describe()}]", routine.ret_reg, out, noun=conv.noun)
    return 0


def cmd_map(a: argparse.Namespace, out: IO[str]) -> int:
    """``emu map SOURCE`` or ``emu map --diff A B``; with a vmlinux and no --routine, the
    whole-image census (``--vmlinux FILE``, or ``--diff vmlinux:A vmlinux:B``)."""
    images = ([a.vmlinux] if a.vmlinux and not a.diff else
              [t.split(":", 1)[1] for t in (a.diff or []) if t.startswith("vmlinux:")])
    if images and not a.routine and (not a.diff or len(images) == 2):
        return _census(a, images, common.rules(a.mce_rules), out)
    cpu = parse_cpu(a.cpu)
    sev = common.rules(a.mce_rules)
    funcs = a.routine or None
    if a.diff:
        if a.source or a.object or a.vmlinux:
            raise UsageError("emu map: give either SOURCE or --diff A B, not both")
        sides = []
        for text in a.diff:
            spec = common.spec(a, text)
            t = resolve(spec, cpu, severity=sev)
            sides.append((label(spec, t), t.rules,
                          umap.build(t.image, t.settings.severity, funcs)))
        (la, ra, ma), (lb, rb, mb) = sides
        sa, sb = ra.severity, rb.severity
        changes = umap.diff(ma, mb)
        if a.json:
            out.write(report.dumps({"a": {"source": la, "mce_rules": sa.value,
                                          "rules": ra.to_json()},
                                    "b": {"source": lb, "mce_rules": sb.value,
                                          "rules": rb.to_json()},
                                    "changes": [c.to_json() for c in changes],
                                    "flagged": sum(1 for c in changes if c.flag)}))
        else:
            explain.map_diff(changes, f"map diff: {la} [#MC rules {ra.describe()}] -> {lb} "
                             f"[#MC rules {rb.describe()}], cpu {cpu_name(cpu)}", out)
        # like diff(1): 1 when a load that recovered an #MC now panics
        return 1 if any(c.flag.endswith("now panics") for c in changes) else 0
    if not (a.source or a.object or a.vmlinux):
        raise UsageError("emu map: name a source (" + common.SPEC_HELP + ") or use --diff A B")
    spec = common.spec(a, a.source)
    t = resolve(spec, cpu, severity=sev)
    name, used = label(spec, t), t.settings.severity
    rows = umap.build(t.image, used, funcs)
    if a.json:
        out.write(report.dumps({"source": name, "mce_rules": used.value,
                                "rules": t.rules.to_json(), "cpu": cpu_name(cpu),
                                "accesses": [r.to_json() for r in rows]}))
        return 0
    explain.map_table(rows, f"map: {name} [#MC rules {t.rules.describe()}, cpu {cpu_name(cpu)}; "
                      "#MC verdicts assume copy_from_user]", out)
    return 0


def _census(a: argparse.Namespace, images: list[str], rules: Severity | None,
            out: IO[str]) -> int:
    """``emu map --vmlinux FILE`` (the census) and ``--diff vmlinux:A vmlinux:B``."""
    from emu.build.objects import kernel_version, open_linked
    from emu.render import census as rcensus
    from emu.runs import census
    if a.source or a.object:
        raise UsageError("emu map --vmlinux: the census covers the whole image; give no "
                         "other source")
    diff = len(images) == 2
    sides = []
    for path in images:
        lf = open_linked(path)
        version = kernel_version(lf)
        sites, used = census.census(lf, version, rules)
        if a.user_only:
            sites = [s for s in sites if s.user]
        label = f"{Path(path).name} ({version.describe() if version else 'version unknown'})"
        sides.append((label, sites, used))
    if diff:
        (la, sa, ra), (lb, sb, rb) = sides
        changes = census.diff(sa, sb)
        if a.json:
            out.write(report.dumps({"a": {"image": la, "rules": ra.name, "how": ra.how},
                                    "b": {"image": lb, "rules": rb.name, "how": rb.how},
                                    "changes": [c.to_json() for c in changes]}))
        else:
            rcensus.diff_text(la, ra, lb, rb, changes, out)
        return 1 if any(c.flag == "#MC here now panics" for c in changes) else 0
    label, sites, used = sides[0]
    if a.json:
        out.write(report.dumps({"image": label, "rules": used.name, "how": used.how,
                                "summary": census.summary(sites),
                                "sites": [s.to_json() for s in sites]}))
    else:
        rcensus.text(label, used, sites, census.summary(sites), out)
    return 0
