"""``emu run``, ``emu diff`` and ``emu eras``: one case, one scenario across variants."""

from __future__ import annotations

import argparse
import sys
from typing import IO

from emu.build.resolve import TEXT_KINDS, Spec, label, resolve
from emu.build.target import Target
from emu.cli import common
from emu.cli import policy
from emu.core.machine import Buffers, State
from emu.errors import UsageError
from emu.kernel.conventions import Routine
from emu.kernel.eras import ERAS, cpu_name, parse_cpu
from emu.kernel.helpers import HelperResult
from emu.render import report
from emu.runs import codediff
from emu.runs.codediff import CodeDiff


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("run", help="run one case and print its outcome")
    r.add_argument("source", nargs="?", help=common.SPEC_HELP + "; with --tree --rev REV, "
                   "a path in the tree")
    r.add_argument("--instructions", action="store_true", help="count instructions")
    common.case_args(r)
    common.source_args(r)
    policy.caller_args(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("diff", help="run one scenario across variants and compare")
    d.add_argument("variants", nargs="*", help=f"{common.SPEC_HELP} (default: every era); "
                   "with --patch the last one is added again with the series applied")
    common.case_args(d)
    common.source_args(d, era_help="era rules for kernel-file variants (default: detected "
                       "from each file)")
    policy.caller_args(d)
    d.set_defaults(func=cmd_diff)

    e = sub.add_parser("eras", help="list the era catalog")
    e.set_defaults(func=cmd_eras)


def cmd_run(a: argparse.Namespace, out: IO[str]) -> int:
    if a.caller:
        return policy.cmd_run_caller(a, out)
    policy.no_caller_options(a)
    cpu = parse_cpu(a.cpu)
    sev = common.rules(a.mce_rules)
    spec = common.spec(a, a.source)
    t = resolve(spec, cpu, count_insns=a.instructions, severity=sev, routine=a.routine)
    name = label(spec, t)
    routine = t.routine_for(a.routine, cpu, a.convention)
    conv = routine.convention
    rules: dict[str, object] = {"mce_rules": sev.value} if sev else {}
    rules["rules"] = t.rules.to_json()
    res = t.call(routine, common.buffers(a))
    if isinstance(res, HelperResult):
        if a.json:
            out.write(report.dumps({"variant": name, "cpu": cpu_name(cpu), **rules,
                                    **res.to_json()}))
        else:
            report.helper_table(res, f"{name}: {routine.name}", out, rules=t.rules.describe(),
                                note=common.store_note(conv, a.poison))
        return 0
    o = res
    if a.json:
        out.write(report.dumps({"variant": name, "routine": routine.name, "cpu": cpu_name(cpu),
                                "convention": conv.name, **rules, **o.to_json()}))
    else:
        extra = f", #MC rules {sev.value}" if sev else ""
        report.run_table(o, f"{name}: {routine.name} [cpu {cpu_name(cpu)}{extra}]", out,
                         rules=t.rules.describe(), noun=conv.noun,
                         note=common.store_note(conv, a.poison))
    if o.state is State.HANG:
        # A routine that never returns (or whose fixup faults forever) is a broken input:
        # the outcome is printed above, and the exit code says the input is at fault.
        print(f"emu: error: {routine.name}: {o.message}", file=sys.stderr)
        return 2
    return 0


def cmd_diff(a: argparse.Namespace, out: IO[str]) -> int:
    if a.caller:
        return policy.cmd_diff_caller(a, out)
    policy.no_caller_options(a)
    cpu = parse_cpu(a.cpu)
    sev = common.rules(a.mce_rules)
    bufs = common.buffers(a)
    specs = common.specs(a, a.variants, patches=False)
    if a.patch:   # the last variant once more, with the patch series applied
        specs.append(specs[-1].with_patches(tuple(a.patch)))
    rows = []
    notes = []
    targets = []
    for spec in specs:
        t = resolve(spec, cpu, severity=sev, routine=a.routine)
        routine = t.routine_for(a.routine, cpu, a.convention)
        name = label(spec, t) + (f" (#MC {sev.value})" if sev else "")
        rows.append((name, routine.name, t.call(routine, bufs)))
        notes.append((name, t.rules))
        targets.append((spec, name, t, routine))
    code = code_column(targets)
    if a.json:
        out.write(report.dumps({"cpu": cpu_name(cpu), "case": _case_json(a),
                                **({"mce_rules": sev.value} if sev else {}), "rows": [
            {"variant": v, "routine": r, "rules": n.to_json(), **o.to_json(),
             **({"code": _code_json(code[i])} if code else {})}
            for i, ((v, r, o), (_, n)) in enumerate(zip(rows, notes))]}))
    else:
        convs = {r.convention for *_, r in targets}
        report.diff_table(rows, _title(a, bufs, cpu, [r for *_, r in targets]), out,
                          code=[_cell(c) for c in code] if code else None,
                          noun=convs.pop().noun if len(convs) == 1 else "copied")
        report.rules_notes([(v, n.describe()) for v, n in notes], out)
        for c in code:
            if isinstance(c, CodeDiff):
                out.write(f"code: {c.describe()}\n")
    return 0


def code_column(targets: list[tuple[Spec, str, Target, Routine]]
                ) -> list[CodeDiff | str | None]:
    """When built images (vmlinux, .o) and sources are compared (issue 14, item 3): for
    each image row, how its routine's code compares with the same routine in a source row
    (the first source of the same era, else the first source, with that routine), and
    "reference" on the source rows used so; None elsewhere.  An empty list when the
    variants are not such a mix."""
    built = [k for k, (s, *_) in enumerate(targets) if s.kind in ("object", "vmlinux")]
    text = [k for k, (s, *_) in enumerate(targets) if s.kind in TEXT_KINDS]
    if not built or not text:
        return []
    out: list[CodeDiff | str | None] = [None] * len(targets)
    for k in built:
        _, name, t, routine = targets[k]
        same = [j for j in text if targets[j][3].name == routine.name]
        era = [j for j in same if targets[j][2].era is not None and t.era is not None
               and targets[j][2].era.key == t.era.key]
        if not same:
            continue
        j = (era or same)[0]
        _, ref_name, ref, _ = targets[j]
        out[k] = codediff.compare(t.image, ref.image, routine.name, image_name=name,
                                  reference_name=ref_name)
        out[j] = "reference"
    return out


def _code_json(c: CodeDiff | str | None) -> object:
    return c.to_json() if isinstance(c, CodeDiff) else c


def _cell(c: CodeDiff | str | None) -> str:
    return "-" if c is None else c if isinstance(c, str) else c.cell()


def _title(a: argparse.Namespace, bufs: Buffers, cpu: frozenset[str],
           routines: list[Routine]) -> str:
    """The scenario line: a copy's direction, or the one user buffer of the helpers."""
    faults = (f"poison={common.fmt_offsets(bufs.poison)} "
              f"unmapped={common.fmt_offsets(bufs.unmapped)} cpu={cpu_name(cpu)}")
    convs = {r.convention for r in routines}
    if len(convs) == 1 and not routines[0].convention.two_buffers:
        return f"{routines[0].convention.name} len={bufs.length} user+{bufs.src_align:#x} {faults}"
    return (f"copy_{a.direction}_user len={bufs.length} src+{bufs.src_align:#x} "
            f"dst+{bufs.dst_align:#x} {faults}")


def _case_json(a: argparse.Namespace) -> dict[str, object]:
    return {"direction": a.direction, "length": a.length, "src_align": a.src_align,
            "dst_align": a.dst_align, "poison": list(a.poison), "unmapped": list(a.unmapped)}


def cmd_eras(a: argparse.Namespace, out: IO[str]) -> int:
    for e in ERAS.values():
        out.write(f"{e.key}  {e.versions:<14} {e.title}  [asm/{e.source}; "
                  f"{e.encoding.name.lower()} extable; #MC rules {e.severity.value}]\n")
    return 0
