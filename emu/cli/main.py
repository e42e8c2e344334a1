"""The ``emu`` command: argument parsing and dispatch only.

Exit codes: 0 success, 1 a check found a difference, 2 usage or input error.  Every
``EmuError`` becomes one line on stderr (``--traceback`` shows the stack).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from emu.build import resolve as inputs
from emu.cli import policy as policy_cmds
from emu.render import report
from emu.kernel.eras import ERAS, Era, cpu_name, parse_cpu
from emu.errors import EmuError, UsageError
from emu.core.machine import Buffers, State
from emu.build.target import Settings, Target, era_target, get_target, read_source, resolve_era

if TYPE_CHECKING:
    from emu.runs.sweep import Grid


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def _offsets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x, 0) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of offsets") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message if self.prog == "emu" else f"{self.prog}: {message}")


def _case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--len", dest="length", type=_int, default=4096, help="bytes to copy")
    p.add_argument("--src-align", type=_int, default=0, help="source offset in its page window")
    p.add_argument("--dst-align", type=_int, default=0, help="destination offset")
    p.add_argument("--poison", type=_offsets, default=(),
                   help="source offsets whose 64-byte line is poisoned (#MC), comma list")
    p.add_argument("--unmapped", type=_offsets, default=(),
                   help="user-buffer offsets whose page is not present (#PF), comma list")
    p.add_argument("--direction", choices=("from", "to"), default="from",
                   help="copy from user (default) or to user")
    p.add_argument("--cpu", default="none",
                   help="CPU features: none, rep_good, erms, fsrm, or a list like REP_GOOD,ERMS")
    p.add_argument("--routine", help="call this routine instead of the CPU's choice")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emu", description="Run x86-64 kernel user-copy routines under Unicorn "
                "with injected page faults and machine checks.")
    p.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run one case and print its outcome")
    r.add_argument("source", nargs="?",
                   help="a .S file, an era key (A-F) for a bundled source, debian:6.1 / "
                   "debian:6.12 (Debian's linux-source), or with --tree a path in the tree")
    r.add_argument("--era", help="kernel era whose extable encoding and #MC rules apply to "
                   "a .S file (default: detected from the file)")
    r.add_argument("--instructions", action="store_true", help="count instructions")
    _case_args(r)
    inputs.add_arguments(r)
    policy_cmds.add_run_options(r)

    d = sub.add_parser("diff", help="run one scenario across variants and compare")
    d.add_argument("variants", nargs="*", help="era keys or .S files (default: every era)")
    d.add_argument("--era", help="era rules for .S variants (default: detected from each file)")
    _case_args(d)
    inputs.add_arguments(d)
    policy_cmds.add_run_options(d)

    sub.add_parser("eras", help="list the era catalog")

    policy_cmds.add_parsers(sub, _case_args)

    sw = sub.add_parser("sweep", help="run a grid of cases on every core and summarise the "
                        "contract violations per variant")
    sw.add_argument("variants", nargs="*", help="era keys or .S files (default: every era)")
    _grid_args(sw)
    sw.add_argument("--step", default="byte",
                    help="poison offset step: byte (default), line, or a number")
    sw.add_argument("--results", help="JSON-lines results file, written as cases finish")
    sw.add_argument("--resume", action="store_true",
                    help="continue the --results file: only cases it lacks are run")
    sw.add_argument("--max-cases", type=_int, help="stop after this many new cases")
    sw.add_argument("--jobs", type=_int, default=None, help="worker processes (default: cores)")
    sw.add_argument("--plot", help="write a heatmap PNG (one panel per variant)")
    sw.add_argument("--html", help="write a self-contained HTML report")
    sw.add_argument("--metric", choices=("class", "violation", "error"), default="class",
                    help="heatmap colour: outcome class, worst violation name, or "
                    "returned - exact remainder")
    sw.add_argument("--y", dest="y_axis", choices=("auto", "length", "src_align", "dst_align"),
                    default="auto", help="heatmap rows (default: the first swept of these)")
    sw.add_argument("--json", action="store_true", help="print the summary as JSON")

    fz = sub.add_parser("fuzz", help="search the sweep space with Hypothesis and shrink "
                        "the first failure to a minimal emu run command")
    fz.add_argument("variants", nargs="*", help="era keys or .S files (default: every era)")
    _grid_args(fz)
    fz.add_argument("--max-len", type=_int, default=8192, help="largest length tried")
    fz.add_argument("--want", default="any",
                    help="failure classes to look for: violation names, states (panic, oops, "
                    "hang, smap_violation), 'violation' or 'any' (comma list)")
    fz.add_argument("--examples", type=_int, default=500, help="cases to try before giving up")
    fz.add_argument("--seed", type=_int, default=0, help="random seed (same seed, same run)")
    fz.add_argument("--save", help="directory to save the shrunk case as a JSON fixture")
    fz.add_argument("--json", action="store_true", help="print the result as JSON")

    from emu.runs import check
    ck = sub.add_parser("check", help="CI regression check: run the standard matrix on OLD "
                        "and NEW and report behavioural changes by class (exit 1 on a "
                        "regression)")
    check.add_check_arguments(ck)
    sn = sub.add_parser("snapshot", help="record the standard matrix outcome of a source "
                        "for emu check --against")
    check.add_snapshot_arguments(sn)
    return p


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--era", help="era rules for .S variants (default: E)")
    p.add_argument("--routine", action="append", default=[],
                   help="routine (repeatable; 'all' = every routine of the era; "
                   "default: the CPU's choice)")
    p.add_argument("--len", dest="length", default=None,
                   help="lengths: a list like 64,100..200/4 (sweep default 4096; fuzz "
                   "default: any up to --max-len)")
    p.add_argument("--src-align", default=None,
                   help="source alignments, a list (sweep default 0; fuzz default: any)")
    p.add_argument("--dst-align", default=None,
                   help="destination alignments, a list (sweep default 0; fuzz default: any)")
    p.add_argument("--poison", default=None,
                   help="only these fault offsets (a list; default: every offset)")
    p.add_argument("--faults", default="mc",
                   help="fault kinds: mc, mc2, pf, pf2, mc+pf or all (comma list; default mc)")
    p.add_argument("--direction", choices=("from", "to", "both"), default="from")
    p.add_argument("--cpu", action="append", default=[],
                   help="CPU path (repeatable: none, rep_good, erms, fsrm, a feature list, "
                   "or all; default none)")


def _buffers(a: argparse.Namespace) -> Buffers:
    return Buffers(direction=a.direction, length=a.length, src_align=a.src_align,
                   dst_align=a.dst_align, poison=tuple(a.poison), unmapped=tuple(a.unmapped))


def _variant(spec: str | None, era_key: str | None, cpu: frozenset[str], count: bool = False,
             a: argparse.Namespace | None = None,
             patches: list[str] | None = None) -> tuple[str, Target, Era | None]:
    era = ERAS.get(spec.upper()) if spec and not Path(spec).suffix else None
    patched = a is not None and (patches if patches is not None else a.patch)
    if a is not None and (era is None or a.tree or a.rev or patched or a.assembler != "gas"):
        if era is not None:   # a bundled source, patched or assembled by another backend
            spec = era.path
        label, kt = inputs.variant(spec, a, cpu, count, patches)
        return label, kt, None
    if era is not None:
        return f"{era.key} {era.versions}", era_target(era, cpu, count_insns=count), era
    if spec is None:
        raise UsageError("name a source: a .S file or an era key")
    if not Path(spec).suffix and not Path(spec).exists():
        raise UsageError(f"'{spec}' is neither an era ({', '.join(ERAS)}) nor a .S file")
    rules = resolve_era(era_key) or ERAS["E"]
    text = read_source(spec)
    t = get_target(text, Path(spec).name, Settings.of(rules), cpu, count_insns=count)
    return Path(spec).name, t, None


def cmd_run(a: argparse.Namespace, out: IO[str]) -> int:
    if a.caller:
        return policy_cmds.cmd_run_caller(a, out)
    if a.fault_in or a.mce_count is not None:
        raise UsageError("--fault-in and --no-mce-count apply to --caller write only")
    if a.mce_rules:
        return policy_cmds.cmd_run_rules(a, out)
    cpu = parse_cpu(a.cpu)
    label, t, era = _variant(a.source, a.era, cpu, a.instructions, a)
    routine = inputs.routine_for(t, era, a.routine, cpu)
    if inputs.is_get_user(routine.name):
        g = inputs.run_get_user(t, routine.name, _buffers(a))
        if a.json:
            out.write(report.dumps({"variant": label, "cpu": cpu_name(cpu), **g.to_json()}))
        else:
            report.get_user_table(g, f"{label}: {routine.name}", out)
        return 0
    o = t.run(routine, _buffers(a))
    if a.json:
        out.write(report.dumps({"variant": label, "routine": routine.name, "cpu": cpu_name(cpu),
                                **o.to_json()}))
    else:
        report.run_table(o, f"{label}: {routine.name} [cpu {cpu_name(cpu)}]", out)
    if o.state is State.HANG:
        # A routine that never returns (or whose fixup faults forever) is a broken input:
        # the outcome is printed above, and the exit code says the input is at fault.
        print(f"emu: error: {routine.name}: {o.message}", file=sys.stderr)
        return 2
    return 0


def cmd_diff(a: argparse.Namespace, out: IO[str]) -> int:
    if a.caller or a.mce_rules or a.fault_in or a.mce_count is not None:
        return policy_cmds.cmd_diff_policy(a, out)
    cpu = parse_cpu(a.cpu)
    bufs = _buffers(a)
    rows = []
    specs = a.variants or ([] if a.tree else list(ERAS))
    if not specs:
        raise UsageError("diff --tree needs revisions to compare (e.g. v5.9 v5.17 v6.4)")
    variants = [_variant(spec, a.era, cpu, a=a, patches=[]) for spec in specs]
    if a.patch:   # the last variant once more, with the patch series applied
        variants.append(_variant(specs[-1], a.era, cpu, a=a))
    for label, t, era in variants:
        routine = inputs.routine_for(t, era, a.routine, cpu)
        rows.append((label, routine.name, t.run(routine, bufs)))
    if a.json:
        out.write(report.dumps({"cpu": cpu_name(cpu), "case": _case_json(bufs), "rows": [
            {"variant": v, "routine": r, **o.to_json()} for v, r, o in rows]}))
    else:
        title = (f"copy_{a.direction}_user len={bufs.length} src+{bufs.src_align:#x} "
                 f"dst+{bufs.dst_align:#x} poison={_fmt(bufs.poison)} "
                 f"unmapped={_fmt(bufs.unmapped)} cpu={cpu_name(cpu)}")
        report.diff_table(rows, title, out)
    return 0


def _fmt(offs: tuple[int, ...]) -> str:
    return ",".join(f"{o:#x}" for o in offs) or "-"


def _case_json(b: Buffers) -> dict[str, object]:
    return {"direction": b.direction, "length": b.length, "src_align": b.src_align,
            "dst_align": b.dst_align, "poison": list(b.poison), "unmapped": list(b.unmapped)}


def cmd_eras(a: argparse.Namespace, out: IO[str]) -> int:
    for e in ERAS.values():
        out.write(f"{e.key}  {e.versions:<14} {e.title}  [asm/{e.source}; "
                  f"{e.encoding.name.lower()} extable; #MC rules {e.severity.value}]\n")
    return 0


def _grid(a: argparse.Namespace, step: int = 1) -> Grid:
    from emu.kernel.eras import CPUS
    from emu.runs.sweep import FAULT_KINDS, Grid, parse_ints, parse_variant
    cpus = [c for spec in (a.cpu or ["none"]) for c in (CPUS if spec == "all" else [spec])]
    kinds = list(FAULT_KINDS) if a.faults == "all" else [k.strip() for k in a.faults.split(",")
                                                          if k.strip()]
    return Grid(variants=tuple(parse_variant(v, a.era) for v in (a.variants or list(ERAS))),
                routines=tuple(a.routine), cpus=tuple(dict.fromkeys(cpus)),
                directions=("from", "to") if a.direction == "both" else (a.direction,),
                lengths=parse_ints(a.length or "4096"), src_aligns=parse_ints(a.src_align or "0"),
                dst_aligns=parse_ints(a.dst_align or "0"), kinds=tuple(kinds), step=step,
                offsets=parse_ints(a.poison) if a.poison else ())


def cmd_sweep(a: argparse.Namespace, out: IO[str]) -> int:
    import os
    from emu.runs.sweep import Results, execute
    step = {"byte": 1, "line": 64}.get(a.step)
    if step is None:
        try:
            step = int(a.step, 0)
        except ValueError:
            raise UsageError(f"--step must be byte, line or a number, not '{a.step}'") from None
    grid = _grid(a, step)
    for opt in (a.plot, a.html):
        if opt and a.results and Path(opt).resolve() == Path(a.results).resolve():
            raise UsageError(f"{opt}: the picture would overwrite the results file")
    results = Results(a.results, a.resume)
    jobs = a.jobs if a.jobs is not None else (os.cpu_count() or 1)
    summary = execute(grid, results, jobs=jobs, max_cases=a.max_cases,
                      progress=not a.json and sys.stderr.isatty())
    if a.plot or a.html:
        from emu.render import plot
        recs = [results.records[c.id] for c in grid.cases() if c.id in results.records]
        if a.plot:
            plot.write_png(grid, recs, a.plot, metric=a.metric, y_axis=a.y_axis)
        if a.html:
            plot.write_html(grid, recs, summary, a.html, metric=a.metric, y_axis=a.y_axis)
    if a.json:
        out.write(report.dumps(summary))
    else:
        report.sweep_summary(summary, out)
    if summary.get("interrupted"):
        hint = f"; continue with --results {a.results} --resume" if a.results else ""
        print(f"emu: interrupted: summary of the finished cases above, {summary['pending']} "
              f"pending{hint}", file=sys.stderr)
        return 130
    return 0


def cmd_fuzz(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.runs import fuzz
    grid = _grid(a)
    found = fuzz.search(grid, want=fuzz.parse_want(a.want), max_len=a.max_len,
                        examples=a.examples, seed=a.seed, fixed_len=a.length is not None,
                        fixed_align=a.src_align is not None or a.dst_align is not None)
    path = fuzz.save(found, a.save) if found is not None and a.save else None
    if a.json:
        out.write(report.dumps(fuzz.to_json(found, path)))
    else:
        report.fuzz_result(fuzz.to_json(found, path), out)
    return 1 if found is not None else 0


def cmd_check(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.runs import check
    return check.cmd_check(a, out)


def cmd_snapshot(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.runs import check
    return check.cmd_snapshot(a, out)


COMMANDS = {"run": cmd_run, "diff": cmd_diff, "eras": cmd_eras, "sweep": cmd_sweep,
            "fuzz": cmd_fuzz, "explain": policy_cmds.cmd_explain, "map": policy_cmds.cmd_map,
            "check": cmd_check, "snapshot": cmd_snapshot}


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    argv = sys.argv[1:] if argv is None else argv
    traceback = "--traceback" in argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.cmd](args, out)
    except EmuError as e:
        if traceback:
            raise
        print(f"emu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `emu ... | head`: the reader has gone; stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
