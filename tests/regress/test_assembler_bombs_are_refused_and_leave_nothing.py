"""Assembler inputs that never end or grow without bound are refused, and leave nothing.

Issue 17, class 4: a nested ``.rept`` ran 45 s until killed; killing emu left gcc/as running
and ``emu-as-*`` folders behind; a 64 MiB ``.skip`` left 64 MB in the object cache.  GNU as
now runs under a time and output limit in its own process group (``emu.build.tool``), which
is killed when emu stops for any reason; only objects emu accepts are cached.  Inputs are
written here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EMU = [sys.executable, "-m", "emu.cli.main"]
HEAD = ".text\n.globl f\n.type f, @function\nf:\n"
REPT_BOMB = HEAD + ".rept 100000\n.rept 100000\n.rept 100000\nnop\n.endr\n.endr\n.endr\nret\n"
SKIP_64M = HEAD + "ret\n.skip 0x4000000\n"
SKIP_16M = HEAD + "ret\n.skip 0x1000000\n"        # gas writes it; emu cannot load it
BSS_4G = HEAD + "ret\n.bss\n.skip 0x100000000\n"
FINE = HEAD + "xorl %eax, %eax\nret\n"


def env(tmp: Path, timeout: float = 3) -> dict[str, str]:
    (tmp / "t").mkdir(exist_ok=True)
    return {**os.environ, "EMU_CACHE": str(tmp / "cache"), "TMPDIR": str(tmp / "t"),
            "EMU_TOOL_TIMEOUT": str(timeout)}


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


def start_bomb(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    """emu assembling the .rept bomb (60 s limit); returns it and the tool's group id."""
    src = tmp / "in.S"
    src.write_text(REPT_BOMB)
    p = subprocess.Popen([*EMU, "run", str(src), "--routine", "f", "--convention", "copy", "--len", "64"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(tmp, timeout=60), preexec_fn=default_sigint)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = [pid for pid, (pp, _g) in procs().items() if pp == p.pid]
        if kids and any(g == kids[0] and pid != kids[0] for pid, (_pp, g) in procs().items()):
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


def test_sigkill_of_emu_the_assembler_dies_and_the_next_emu_cleans_up(tmp_path: Path) -> None:
    p, pgid = start_bomb(tmp_path)
    p.kill()
    p.wait()
    # The gcc driver dies with emu (PR_SET_PDEATHSIG); as, a grandchild, at its CPU limit
    # (EMU_TOOL_TIMEOUT + 2 s of CPU here: 62 s); it is not left running for minutes.
    deadline = time.monotonic() + 5
    while pgid in procs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pgid not in procs()
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f"emu-as-{p.pid}-")
    for pid, (_pp, g) in procs().items():       # do not leave the test's as running
        if g == pgid:
            os.kill(pid, signal.SIGKILL)
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
