"""External tools (gcc, cpp, as, the keystone worker): run with limits, never left behind.

An assembler input is user input: a nested ``.rept`` makes GNU as run for minutes growing
without bound, and a ``.skip 64M`` writes a 64 MiB object.  Every external tool emu starts
therefore runs

1. in its own session and process group (``start_new_session``), so the whole group — the
   gcc driver, cpp and as — is killed at the end, whatever happened;
2. under a wall-clock limit (``EMU_TOOL_TIMEOUT`` seconds, default 10) enforced by emu, and a
   CPU-time limit (``RLIMIT_CPU``, a little longer) that every child inherits, so a group
   whose emu was SIGKILLed still dies on its own;
3. with an output limit (``RLIMIT_FSIZE``, ``EMU_TOOL_OUTPUT_MAX`` bytes, default 32 MiB) on
   every file it writes, the object and its captured stdout/stderr included, and an
   address-space limit (``RLIMIT_AS``, 2 GiB);
4. with ``PR_SET_PDEATHSIG`` = SIGKILL on the direct child, and its temporary files
   (``TMPDIR``) inside emu's own temporary folder.  PDEATHSIG is not inherited, so gcc runs
   its own programs (cc1, as) through a wrapper that sets it on each before it execs it
   (``gcc_wrapper``: gcc's ``-wrapper`` with util-linux's ``setpriv --pdeathsig KILL``, or
   ``diewithparent.py``): when emu dies, gcc dies, and with it cc1 and as;
5. while emu turns SIGTERM and SIGHUP into ``SystemExit(128 + signo)``, so the group is
   killed and the folder removed on the way out (SIGINT already raises KeyboardInterrupt).

Temporary folders are named ``emu-as-<pid>-…`` (``emu-ks-<pid>-…`` for keystone); one left by
an emu that was SIGKILLed is removed by the next emu (``sweep_stale``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Bytes of captured stdout/stderr read back (the first error is near the start).
READ_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What one tool run may use."""

    seconds: float = 10.0
    output: int = 32 << 20
    memory: int = 2 << 30

    @classmethod
    def from_env(cls) -> Limits:
        def num(name: str, default: float) -> float:
            try:
                v = float(os.environ.get(name, ""))
            except ValueError:
                return default
            return v if v > 0 else default
        d = cls()
        return cls(seconds=num("EMU_TOOL_TIMEOUT", d.seconds),
                   output=int(num("EMU_TOOL_OUTPUT_MAX", d.output)), memory=d.memory)


@dataclass(frozen=True, slots=True)
class Result:
    """How a tool run ended.  ``limit`` names the limit that stopped it ('' if none)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    limit: str = ""

    @property
    def errors(self) -> str:
        """stderr as text: bytes that are not UTF-8 are replaced, never a traceback."""
        return self.stderr.decode("utf-8", errors="replace")


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):   # pragma: no cover - not Linux
    _prctl = None


def _child_setup(lim: Limits, parent: int) -> None:
    """In the child, before exec: the limits every descendant inherits (async-signal-safe
    enough: setrlimit and prctl only)."""
    cpu = int(lim.seconds) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim.output, lim.output))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > lim.memory:
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory, lim.memory))
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:   # emu died before the prctl took effect
        os._exit(137)


#: The fallback wrapper (a script run by path: ``diewithparent.py``).
DIE_WITH_PARENT = Path(__file__).with_name("diewithparent.py")


@functools.lru_cache(maxsize=8)
def _setpriv(path: str | None) -> str | None:
    """util-linux's setpriv on ``path`` (a PATH string), if it has ``--pdeathsig`` (2.33+)."""
    exe = shutil.which("setpriv", path=path)
    if exe is None:
        return None
    try:
        ok = subprocess.run([exe, "--pdeathsig", "KILL", "--", "true"], capture_output=True,
                            timeout=10, check=False, env={"PATH": path or os.defpath})
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if ok.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def _gnu_driver(gcc: str, path: str | None) -> bool:
    """Is ``gcc`` GCC's driver (which has ``-wrapper``; clang's has not)?"""
    exe = shutil.which(gcc, path=path)
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, timeout=10, check=False,
                             env={"PATH": path or os.defpath, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    first = out.split(b"\n", 1)[0].lower()
    return b"clang" not in first and (b"gcc" in first or b"free software" in out.lower())


def gcc_wrapper(gcc: str, env: dict[str, str]) -> list[str]:
    """gcc options that make every program the driver starts (cc1, as) die with it.

    gcc's ``-wrapper PROG,ARGS`` runs each program as ``PROG ARGS program args``; the
    wrapper sets PR_SET_PDEATHSIG = SIGKILL and execs it (``setpriv --pdeathsig KILL --``,
    else this interpreter running ``diewithparent.py``).  [] for a driver that is not GCC's,
    or when the wrapper cannot be named in gcc's comma-separated list (a path with a comma).
    """
    if not _gnu_driver(gcc, env.get("PATH")):
        return []
    exe = _setpriv(env.get("PATH"))
    parts = [exe, "--pdeathsig", "KILL", "--"] if exe else \
        [sys.executable, "-S", "-E", str(DIE_WITH_PARENT)]
    if any("," in p for p in parts):
        return []
    return ["-wrapper", ",".join(parts)]


class _Terminated(SystemExit):
    pass


@contextmanager
def _exit_on_term() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit(128+signo) while a tool runs (main thread only), so
    the ``finally`` that kills the tool's group and removes its folder runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signo: int, _frame: object) -> None:
        raise _Terminated(128 + signo)
    old = {s: signal.signal(s, raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int) -> bool:
    """True once the child has exited; it is not reaped (so its group id stays ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def run(cmd: list[str], *, workdir: Path, env: dict[str, str], stdin: bytes | None = None,
        limits: Limits | None = None) -> Result:
    """Run ``cmd`` in ``workdir`` under ``limits`` (default: ``Limits.from_env()``).

    stdout and stderr go to files in ``workdir`` (bounded by the output limit); stdout is
    returned whole, stderr's first ``READ_MAX`` bytes.  The tool's whole process group is killed
    before this returns or raises.

    Raises:
        OSError: the tool cannot be started.
    """
    lim = limits or Limits.from_env()
    env = {**env, "TMPDIR": str(workdir)}
    outp, errp = workdir / ".tool-stdout", workdir / ".tool-stderr"
    inp = None
    if stdin is not None:
        inp = workdir / ".tool-stdin"
        inp.write_bytes(stdin)
    limit = ""
    parent = os.getpid()
    with _exit_on_term():
        with open(outp, "wb") as fo, open(errp, "wb") as fe, \
                open(inp if inp is not None else os.devnull, "rb") as fi:
            proc = subprocess.Popen(cmd, stdin=fi, stdout=fo, stderr=fe, env=env,
                                    cwd=workdir, start_new_session=True,
                                    preexec_fn=lambda: _child_setup(lim, parent))
        try:
            deadline = time.monotonic() + lim.seconds
            pause = 0.002
            while not _exited(proc.pid):
                if time.monotonic() >= deadline:
                    limit = "time"
                    break
                time.sleep(pause)
                pause = min(0.05, pause * 1.5)
        finally:
            _kill_group(proc.pid)   # leftovers (cc1, as) too; before reaping the leader
            proc.wait()
    code = proc.returncode
    if not limit and code in (-signal.SIGXFSZ,):
        limit = "output"
    elif not limit and code in (-signal.SIGXCPU, -signal.SIGKILL):
        limit = "time"

    def head(p: Path, most: int) -> bytes:
        with open(p, "rb") as fh:
            return fh.read(most)
    err = head(errp, READ_MAX)
    # gcc reports a child (as, cc1) a limit stopped: "... File size limit exceeded signal
    # terminated program as"
    if not limit and re.search(rb"[Ff]ile too large|File size limit exceeded", err):
        limit = "output"
    if not limit and re.search(rb"CPU time limit exceeded|Killed signal terminated", err):
        limit = "time"
    if not limit and re.search(rb"memory exhausted|[Oo]ut of memory|Cannot allocate", err):
        limit = "memory"
    return Result(code, head(outp, lim.output), err, limit)


def describe(limit: str, lim: Limits | None = None) -> str:
    """The refusal wording for a limit a tool hit."""
    lim = lim or Limits.from_env()
    if limit == "time":
        return f"did not finish in {lim.seconds:g} s (EMU_TOOL_TIMEOUT)"
    if limit == "output":
        return f"wrote more than {lim.output >> 20} MiB (EMU_TOOL_OUTPUT_MAX); refused"
    if limit == "memory":
        return f"needed more than {lim.memory >> 30} GiB of memory; refused"
    return "failed"


def sweep_stale(prefixes: tuple[str, ...] = ("emu-as-", "emu-ks-")) -> None:
    """Remove temporary folders of emus that are gone (``PREFIX<pid>-…`` whose pid is not
    alive, owned by us)."""
    base = Path(tempfile.gettempdir())
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    me = os.getuid()
    for e in entries:
        pre = next((p for p in prefixes if e.name.startswith(p)), None)
        if pre is None:
            continue
        m = re.match(r"(\d+)-", e.name[len(pre):])
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            if e.stat(follow_symlinks=False).st_uid != me or not e.is_dir(follow_symlinks=False):
                continue
            os.kill(pid, 0)
            continue           # alive
        except ProcessLookupError:
            shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            continue


_SWEPT = False


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder ``PREFIX<pid>-…``, removed on the way out (stale ones of dead
    emus are removed the first time)."""
    global _SWEPT
    if not _SWEPT:
        _SWEPT = True
        sweep_stale()
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as tmp:
        yield Path(tmp)
