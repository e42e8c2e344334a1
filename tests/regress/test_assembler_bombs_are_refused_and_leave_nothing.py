"""Assembler inputs that never end or grow without bound are refused, and leave nothing.

Issue 17, class 4: a nested ``.rept`` ran 45 s until killed; killing emu left gcc/as running
and ``emu-as-*`` folders behind; a 64 MiB ``.skip`` left 64 MB in the object cache.  GNU as
now runs under a time and output limit in its own process group (``emu.build.tool``), which
is killed when emu stops for any reason; only objects emu accepts are cached.  Inputs are
written here.

After a SIGKILL of emu nothing can kill the group, so every process in it dies with its
parent: the gcc driver by PR_SET_PDEATHSIG, and cc1 and as, which gcc starts, through gcc's
``-wrapper`` (util-linux's ``setpriv --pdeathsig``, or emu's ``diewithparent.py`` where
setpriv is missing).  Before, ``as`` lived on until its CPU-time limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.build import tool

EMU = [sys.executable, "-m", "emu.cli.main"]
HEAD = ".text\n.globl f\n.type f, @function\nf:\n"
REPT_BOMB = HEAD + ".rept 100000\n.rept 100000\n.rept 100000\nnop\n.endr\n.endr\n.endr\nret\n"
SKIP_64M = HEAD + "ret\n.skip 0x4000000\n"
SKIP_16M = HEAD + "ret\n.skip 0x1000000\n"        # gas writes it; emu cannot load it
BSS_4G = HEAD + "ret\n.bss\n.skip 0x100000000\n"
FINE = HEAD + "xorl %eax, %eax\nret\n"


def env(tmp: Path, timeout: float = 3, path: str | None = None) -> dict[str, str]:
    (tmp / "t").mkdir(exist_ok=True)
    return {**os.environ, "EMU_CACHE": str(tmp / "cache"), "TMPDIR": str(tmp / "t"),
            "EMU_TOOL_TIMEOUT": str(timeout), "PATH": path or os.environ["PATH"]}


def emu_run(tmp: Path, text: str, **kw: float) -> tuple[subprocess.CompletedProcess[str], float]:
    src = tmp / "in.S"
    src.write_text(text)
    t0 = time.monotonic()
    p = subprocess.run([*EMU, "run", str(src), "--routine", "f", "--convention", "copy", "--len", "64"],
                       capture_output=True, text=True, env=env(tmp, **kw), timeout=120)
    return p, time.monotonic() - t0


def cached(tmp: Path) -> list[Path]:
    d = tmp / "cache" / "objects"
    return sorted(d.iterdir()) if d.is_dir() else []


def leftovers(tmp: Path) -> list[str]:
    return sorted(os.listdir(tmp / "t"))


def procs() -> dict[int, tuple[int, int]]:
    """pid → (ppid, process group) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            f = stat.rsplit(")", 1)[1].split()
            out[int(d)] = (int(f[1]), int(f[2]))
    return out


def group(pgid: int) -> dict[int, str]:
    """pid → command name of the processes in a process group (zombies excluded)."""
    out = {}
    for pid, (_pp, g) in procs().items():
        if g == pgid:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                out[pid] = stat[stat.index("(") + 1:stat.rindex(")")]
    return out


def one_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: "), p.stderr
    return lines[0]


def test_nested_rept_is_refused_at_the_time_limit(tmp_path: Path) -> None:
    p, secs = emu_run(tmp_path, REPT_BOMB, timeout=3)
    assert "did not finish in 3 s" in one_error(p)
    assert secs < 10
    assert cached(tmp_path) == [] and leftovers(tmp_path) == []


def test_64mib_skip_is_refused_at_the_output_limit(tmp_path: Path) -> None:
    p, secs = emu_run(tmp_path, SKIP_64M, timeout=30)
    assert "wrote more than 32 MiB" in one_error(p)
    assert secs < 10
    assert cached(tmp_path) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("text", [SKIP_16M, BSS_4G], ids=["skip16m", "bss4g"])
def test_an_object_emu_refuses_is_not_cached(tmp_path: Path, text: str) -> None:
    p, secs = emu_run(tmp_path, text, timeout=30)
    assert "does not fit" in one_error(p)
    assert secs < 5
    assert cached(tmp_path) == [] and leftovers(tmp_path) == []
    p, _ = emu_run(tmp_path, FINE)           # an accepted object is cached, as before
    assert p.returncode == 0, p.stderr
    assert len(cached(tmp_path)) == 1


def default_sigint() -> None:
    """A test run in the background of a shell inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: give emu the default, as on a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_bomb(tmp: Path, path: str | None = None) -> tuple[subprocess.Popen[str], int]:
    """emu assembling the .rept bomb (60 s limit) with ``PATH`` = ``path``; returns it and
    the tool's group id once GNU as runs in that group."""
    src = tmp / "in.S"
    src.write_text(REPT_BOMB)
    p = subprocess.Popen([*EMU, "run", str(src), "--routine", "f", "--convention", "copy", "--len", "64"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(tmp, timeout=60, path=path), preexec_fn=default_sigint)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = [pid for pid, (pp, _g) in procs().items() if pp == p.pid]
        if kids and "as" in group(kids[0]).values():
            return p, kids[0]             # the gcc driver and its as are running
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the assembler did not start")


def group_alive(pgid: int) -> bool:
    return any(g == pgid for _pp, g in procs().values())


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM),
                                      (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_emu_kills_the_assembler_and_removes_its_folder(
        tmp_path: Path, sig: int, code: int) -> None:
    p, pgid = start_bomb(tmp_path)
    assert leftovers(tmp_path)             # emu-as-<pid>-… exists while gcc runs
    p.send_signal(sig)
    p.wait(timeout=10)
    assert p.returncode == code, p.stderr.read()
    deadline = time.monotonic() + 3
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)
    assert leftovers(tmp_path) == [] and cached(tmp_path) == []
    assert "Traceback" not in p.stderr.read()


def path_without_setpriv(tmp: Path) -> str:
    """A PATH with gcc and as (what ``gcc -c`` runs from PATH) and no setpriv."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for prog in ("gcc", "as"):
        found = shutil.which(prog)
        assert found is not None, prog
        (bin_ / prog).symlink_to(found)
    return str(bin_)


@pytest.mark.parametrize("wrapper", ["setpriv", "diewithparent"])
def test_sigkill_of_emu_leaves_no_gcc_cc1_or_as_and_the_next_emu_cleans_up(
        tmp_path: Path, wrapper: str) -> None:
    path = None
    if wrapper == "setpriv":
        if "setpriv" not in " ".join(tool.gcc_wrapper("gcc", dict(os.environ))):
            pytest.skip("no setpriv with --pdeathsig here (util-linux < 2.33)")
    else:
        path = path_without_setpriv(tmp_path)
        assert "diewithparent.py" in tool.gcc_wrapper("gcc", {"PATH": path})[1]
    p, pgid = start_bomb(tmp_path, path)
    try:
        assert "as" in group(pgid).values()
        p.kill()
        p.wait()
        # Nothing is left to kill the group: gcc dies with emu, cc1 and as with gcc.
        deadline = time.monotonic() + 3
        while group(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group(pgid) == {}, f"left running after emu was killed: {group(pgid)}"
    finally:
        for pid in group(pgid):                  # never leave the test's as running
            os.kill(pid, signal.SIGKILL)
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f"emu-as-{p.pid}-")
    q, _ = emu_run(tmp_path, FINE)
    assert q.returncode == 0, q.stderr
    assert leftovers(tmp_path) == []


def test_keystone_refuses_a_rept_bomb_before_building_it(tmp_path: Path) -> None:
    pytest.importorskip("keystone")
    src = tmp_path / "in.S"
    src.write_text(REPT_BOMB)
    t0 = time.monotonic()
    p = subprocess.run([*EMU, "run", str(src), "--routine", "f", "--convention", "copy", "--len", "64",
                        "--assembler", "keystone"], capture_output=True, text=True,
                       env=env(tmp_path, timeout=30), timeout=60)
    assert "refused" in one_error(p)
    assert time.monotonic() - t0 < 10
    assert leftovers(tmp_path) == []
