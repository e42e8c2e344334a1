"""The ``emu`` command: the parser and the dispatch, nothing else.

Each subcommand family lives in its own module (``run``, ``policy``, ``sweep``, ``check``)
with one convention: ``register(sub)`` adds its parsers and sets ``func``; every source goes
through ``emu.build.resolve`` (``cli.common.spec``).

Exit codes: 0 success, 1 a check found a difference, 2 usage or input error, 130
interrupted, 141 the reader of stdout went away.  Every ``EmuError`` becomes one line on
stderr (``--traceback`` shows the stack).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from emu.cli import check, policy, run, sweep
from emu.errors import EmuError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message if self.prog == "emu" else f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emu", description="Run x86-64 kernel user-copy routines under Unicorn "
                "with injected page faults and machine checks.")
    p.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run.register(sub)
    policy.register(sub)
    sweep.register(sub)
    check.register(sub)
    return p


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    argv = sys.argv[1:] if argv is None else argv
    traceback = "--traceback" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args, out)  # type: ignore[no-any-return]
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
