"""``emu check OLD NEW``, ``emu check --tree T A..B``, ``emu check --bisect`` and
``emu snapshot``: the CI regression check (``emu.runs.check``, ``emu.runs.checkrange``).

Exit codes: 0 no regression, 1 regression, 2 usage or input error (with ``--ktap`` still a
KTAP ``not ok`` with an ``# error`` line, with ``--junit`` a report with an ``<error>``);
with ``--bisect`` the ``git bisect run`` contract: 0 good, 1 bad, 125 skip (NEW cannot be
built), 128 abort (GOOD cannot be built, or bad usage).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO

from emu.build.resolve import Spec
from emu.build.sources import COPY_USER
from emu.cli import common
from emu.errors import EmuError, InputError, UsageError
from emu.render import ci, report
from emu.runs import check, checkrange
from emu.runs.check import CLASSES, dumps_snapshot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ck = sub.add_parser("check", help="CI regression check: run the standard matrix on OLD "
                        "and NEW and report behavioural changes by class (exit 1 on a "
                        "regression)")
    ck.add_argument("old", nargs="?", metavar="OLD", help="old source: " + common.SPEC_HELP)
    ck.add_argument("new", nargs="?", metavar="NEW", help="new source, same forms")
    ck.add_argument("--against", metavar="SNAPSHOT",
                    help="compare NEW (the one positional) with a snapshot from emu snapshot")
    _source_args(ck)
    ck.add_argument("--allow", action="append", default=[], metavar="CLASS",
                    help=f"accept an intended change of this class (repeatable): "
                         f"{', '.join(CLASSES)}")
    ck.add_argument("--strict", action="store_true",
                    help="fail on any change that is not allowed, not only a worse one")
    ck.add_argument("--bisect", action="store_true",
                    help="for git bisect run: compare GOOD (OLD) with NEW (default HEAD of "
                         "--tree); exit 0 good, 1 bad, 125 NEW cannot be built, 128 abort")
    ck.add_argument("--ktap", action="store_true", help="print KTAP v1 (as kselftest/kunit)")
    ck.add_argument("--json", action="store_true", help="print JSON")
    ck.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    ck.add_argument("--force", action="store_true",
                    help="let --junit replace a file that is not a JUnit report")
    ck.set_defaults(func=cmd_check)

    sn = sub.add_parser("snapshot", help="record the standard matrix outcome of a source "
                        "for emu check --against")
    sn.add_argument("source", metavar="SOURCE", help=common.SPEC_HELP)
    sn.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="snapshot file to write (never replaced without --force)")
    sn.add_argument("--force", action="store_true", help="replace an existing snapshot")
    _source_args(sn)
    sn.set_defaults(func=cmd_snapshot)


def _source_args(p: argparse.ArgumentParser) -> None:
    common.source_args(p, era_help="era rules for both sides (default: OLD's detected era; "
                       "'each': each side its own)")
    p.add_argument("--routine", action="append", default=[],
                   help="only these routines (repeatable; default: every routine emu knows "
                        "how to call in the file)")


def _spec(a: argparse.Namespace, text: str | None, patches: bool) -> Spec:
    # --era here is the comparison's rule choice (a key or "each"), read by run_check.
    return common.spec(a, text, patches=patches, use_era=False, several=True)


def _check_outputs(a: argparse.Namespace) -> None:
    if a.ktap and a.json:
        raise UsageError("--ktap and --json both write to stdout; choose one")
    if a.junit:
        inputs = {str(Path(x).resolve()) for x in (a.old, a.new, a.against) if x} | {
            str(Path(x).resolve()) for x in a.patch}
        if str(Path(a.junit).resolve()) in inputs:
            raise UsageError(f"{a.junit}: --junit would overwrite an input")
        p = Path(a.junit)
        if p.is_dir():
            raise UsageError(f"{a.junit}: is a directory (--junit)")
        if p.exists() and not p.is_file():
            raise UsageError(f"{a.junit}: not a regular file; emu replaces only regular files "
                             "(--junit)")
        if p.exists() and not a.force:
            try:
                head = p.read_bytes()[:4096]
            except OSError as e:
                raise InputError(f"{a.junit}: cannot read: {e.strerror} (--junit)") from None
            if b"<testsuites" not in head and b"<testsuite" not in head:
                raise UsageError(f"{a.junit} exists and is not a JUnit report; use --force to "
                                 "replace it")


def cmd_check(a: argparse.Namespace, out: IO[str]) -> int:
    if a.bisect:
        return _bisect(a, out)
    started, t0 = time.time(), time.monotonic()
    try:
        _check_outputs(a)
    except EmuError:
        raise                  # the outputs themselves are the problem: only stderr
    try:
        rng = _range(a)
        if rng is not None:
            return _check_range(a, out, *rng)
        res = _run(a)
    except EmuError as e:
        # a dashboard shows an error, not "no results": KTAP and JUnit still say what failed
        if a.ktap:
            out.write(ci.ktap_error(str(e)))
        if a.junit:
            try:
                common.write_atomic(a.junit, ci.junit_error(
                    str(e), type(e.__cause__ or e).__name__, started=started,
                    seconds=time.monotonic() - t0), True, "--junit")
            except EmuError:
                pass
        raise
    if a.junit:
        common.write_atomic(a.junit, ci.junit(res, started=started,
                                              seconds=time.monotonic() - t0), True, "--junit")
    if a.json:
        out.write(report.dumps(res.to_json()))
    elif a.ktap:
        out.write(ci.ktap(res))
    else:
        ci.terminal(res, out)
    return res.exit_code


def _run(a: argparse.Namespace) -> check.Result:
    allow = check.parse_allow(a.allow)
    if a.against:
        if a.new is not None:
            raise UsageError("check --against SNAPSHOT takes one source (NEW), not two")
        if a.old is None and not (a.object or a.vmlinux):
            raise UsageError("check --against SNAPSHOT: name the NEW source")
        return check.run_check(None, _spec(a, a.old, True), against=a.against, era=a.era,
                               routines=a.routine, allow=allow, strict=a.strict)
    if a.old is None:
        raise UsageError("check: name OLD and NEW (or NEW with --against SNAPSHOT)")
    if a.new is None and not a.patch:
        raise UsageError("check: name NEW too, or give --patch to compare OLD with OLD "
                         "plus the patches")
    return check.run_check(_spec(a, a.old, False),
                           _spec(a, a.new if a.new is not None else a.old, True),
                           era=a.era, routines=a.routine, allow=allow, strict=a.strict)


def _range(a: argparse.Namespace) -> tuple[str, str] | None:
    """``--tree T A..B`` (one positional with ``..``) → (A, B)."""
    if a.old is None or a.new is not None or a.against:
        return None
    rng = checkrange.parse_range(a.old)
    if rng is None:
        return None
    if not a.tree:
        raise UsageError(f"'{a.old}': a range of revisions needs --tree DIR")
    if a.patch:
        raise UsageError("--patch does not apply to a range of commits")
    return rng


def _check_range(a: argparse.Namespace, out: IO[str], start: str, end: str) -> int:
    allow = check.parse_allow(a.allow)
    if a.era is not None and a.era.lower() != "each":
        check.rules_for(a.era, check.Side("", None))      # validates the key
    stream = a.ktap or a.json

    def show(row: checkrange.Row, cached: bool) -> None:
        if not stream:
            out.write(ci.range_row(row, cached) + "\n")
            out.flush()

    if not stream:
        out.write(f"emu check: {start}..{end} in {a.tree}, {a.file or COPY_USER}: "
                  "one row per commit that touches it, compared with the commit before\n")
    rr = checkrange.run_range(a.tree, start, end, file=a.file, era=a.era,
                              routines=a.routine, allow=allow, strict=a.strict,
                              assembler=a.assembler, on_row=show)
    if a.json:
        out.write(report.dumps(rr.to_json()))
    elif a.ktap:
        out.write(ci.range_ktap(rr))
    else:
        out.write(ci.range_summary(rr))
    return rr.exit_code


def _bisect(a: argparse.Namespace, out: IO[str]) -> int:
    """``git bisect run emu check --bisect --tree . GOOD``: never exit 2, which git would
    take for "bad"."""
    try:
        if a.against or a.ktap or a.json or a.junit:
            raise UsageError("--bisect prints one line; it does not take --against, --ktap, "
                             "--json or --junit")
        if a.old is None:
            raise UsageError("check --bisect: name GOOD (and NEW, default HEAD of --tree)")
        if a.new is None and not a.tree:
            raise UsageError("check --bisect GOOD: NEW defaults to HEAD of --tree; give "
                             "--tree DIR or name NEW")
        good = _spec(a, a.old, False)
        new = _spec(a, a.new if a.new is not None else "HEAD", True)
        code, res, why = checkrange.bisect(good, new, era=a.era, routines=a.routine,
                                           allow=check.parse_allow(a.allow), strict=a.strict)
    except EmuError as e:
        print(f"emu: error: {e} (--bisect: exit 128 stops git bisect)", file=sys.stderr)
        return checkrange.BISECT_ABORT
    def name(sp: Spec) -> str:
        return sp.value if sp.kind == "rev" else sp.text
    out.write(ci.bisect_line(name(new), name(good), code, res, why) + "\n")
    return code


def command_line_error(argv: list[str], message: str, out: IO[str]) -> None:
    """``emu check`` whose command line itself is wrong: with ``--ktap`` / ``--junit FILE``
    the dashboard still gets a ``not ok`` / an ``<error>`` (then exit 2, as for any error)."""
    if "--ktap" in argv:
        out.write(ci.ktap_error(message))
    junit = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--junit"), None) or \
        next((x.split("=", 1)[1] for x in argv if x.startswith("--junit=")), None)
    if not junit:
        return
    p = Path(junit)
    try:
        ours = not p.exists() or (p.is_file() and b"<testsuite" in p.read_bytes()[:4096])
        if ours:
            common.write_atomic(junit, ci.junit_error(message, "UsageError",
                                                      started=time.time(), seconds=0.0),
                                True, "--junit")
    except (OSError, EmuError):
        pass


def cmd_snapshot(a: argparse.Namespace, out: IO[str]) -> int:
    target = Path(a.output)
    if target.is_dir():
        raise UsageError(f"{a.output}: is a directory (snapshot -o names a file)")
    if target.exists() and not target.is_file():
        raise UsageError(f"{a.output}: not a regular file; emu replaces only regular files")
    if target.exists() and not a.force:   # fail before the matrix runs
        raise UsageError(f"{a.output} exists; use --force to replace it")
    side = check.run_snapshot(_spec(a, a.source, True), era=a.era, routines=a.routine)
    common.write_atomic(a.output, dumps_snapshot(side), a.force, "snapshot")
    out.write(f"snapshot: {side.label} (era {side.era} rules), {len(side.routines)} routine(s), "
              f"{len(side.results)} cases ({side.distinct_runs} distinct runs) -> {a.output}\n")
    return 0
