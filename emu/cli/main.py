"""The ``emu`` command: the parser and the dispatch, nothing else.

Each subcommand family lives in its own module (``run``, ``policy``, ``sweep``, ``check``)
with one convention: ``register(sub)`` adds its parsers and sets ``func``; every source goes
through ``emu.build.resolve`` (``cli.common.spec``).

Exit codes: 0 success, 1 a check found a difference, 2 usage or input error (and an output
that cannot be written: a full disk, a closed standard output), 130 interrupted, 141 the
reader of stdout went away before emu finished writing (``emu check | head -1``: whatever the
check found; when everything fit in the pipe before the reader left, the command's own code).
Every ``EmuError`` becomes one line on stderr (``--traceback`` shows the stack).
``emu check --bisect`` follows ``git bisect run`` instead: 0 good, 1 bad, 125 skip, 128 abort.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from emu.cli import campaign, check, policy, run, sweep
from emu.errors import EmuError, OutputError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message if self.prog == "emu" else f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emu", description="Run x86-64 kernel user-copy routines under Unicorn "
                "with injected page faults and machine checks.")
    p.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="store_true",
                   help="print emu's version and those of Unicorn, capstone and keystone")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run.register(sub)
    policy.register(sub)
    sweep.register(sub)
    check.register(sub)
    campaign.register(sub)
    return p


class _Out:
    """stdout for the commands: a write that fails (ENOSPC, EIO) is an ``OutputError``;
    a reader that went away stays a ``BrokenPipeError``."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write the output: {e.strerror or e}") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write the output: {e.strerror or e}") from None

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def one_line(message: str) -> str:
    """A message as one printable line: control characters (a newline in a symbol name
    read from a corrupt file, say) are shown escaped."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _error(message: str) -> None:
    if sys.stderr is not None:
        print(f"emu: error: {one_line(message)}", file=sys.stderr)


def version_text() -> str:
    """``emu --version``: emu's version, then the engines' (from the installed metadata)."""
    from importlib import metadata

    import emu

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    try:
        mine = metadata.version("mce-emu")
    except metadata.PackageNotFoundError:
        mine = emu.__version__
    return (f"emu {mine}\nunicorn {dist('unicorn')}\ncapstone {dist('capstone')}\n"
            f"keystone {dist('keystone-engine')}\n")


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    traceback = "--traceback" in argv
    if out is None and sys.stdout is None:    # started with stdout closed (>&-)
        _error("standard output is closed; redirect it (to a file or /dev/null)")
        return 2
    stream = _Out(out or sys.stdout)
    if argv[:1] == ["--version"]:
        stream.write(version_text())
        return 0
    try:
        try:
            args = build_parser().parse_args(argv)
        except UsageError as e:
            if argv and argv[0] == "check":
                check.command_line_error(argv, str(e), stream)
            raise
        code = args.func(args, stream)
        stream.flush()
        return code  # type: ignore[no-any-return]
    except OutputError as e:
        if traceback:
            raise
        _silence_stdout()
        _error(str(e))
        return 2
    except EmuError as e:
        if traceback:
            raise
        _error(str(e))
        # `git bisect run emu check --bisect ...` takes 2 for "bad": a command line emu
        # cannot parse must stop the bisection instead (emu.runs.checkrange)
        return 128 if argv[:1] == ["check"] and "--bisect" in argv else 2
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `emu ... | head`: the reader has gone; stop quietly, as other Unix tools do.
        _silence_stdout()
        return 141


if __name__ == "__main__":
    sys.exit(main())
