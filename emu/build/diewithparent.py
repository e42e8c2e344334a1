"""Run a program that dies with its parent: gcc's ``-wrapper`` when ``setpriv`` is missing.

``emu.build.tool`` starts gcc with ``-wrapper``, so that gcc runs each of its own programs (cc1,
as) through a wrapper which sets PR_SET_PDEATHSIG = SIGKILL (prctl(2)) and then execs the
program: when the gcc driver dies (it does when emu dies, by its own PDEATHSIG), so do they.
util-linux's ``setpriv --pdeathsig KILL`` is that wrapper where it exists; this script is the
fallback, run as ``python -S -E diewithparent.py PROGRAM ARGS...``.  It imports nothing of emu
(only the standard library), and exits at once if the driver died before the prctl took
effect: the driver leads the tool's process group, so its child's parent is the group leader.

Usage: diewithparent.py PROGRAM [ARGS...]
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        print("usage: diewithparent.py PROGRAM [ARGS...]", file=sys.stderr)
        os._exit(2)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != os.getpgrp():     # the driver is gone already: do not run orphaned
        os._exit(128 + signal.SIGKILL)
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as e:
        print(f"{argv[1]}: {e.strerror}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv)
