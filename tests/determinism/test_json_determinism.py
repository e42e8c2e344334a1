"""Determinism (issue 9, item 3): the same emu command gives byte-identical JSON.

Each command runs twice as a separate process (``python -m emu``), with different
PYTHONHASHSEED values (so set and dict-of-hash ordering cannot leak into the output), the
first time with an empty assembler cache and the second time with the cache the first run
filled (Debian's extracted sources stay where scripts/linux-sources put them).  stdout must be the same bytes, and must be JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emu.build.sources import linux_source_root

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = {
    # every era, one scenario with both a machine check and a page fault
    "diff-all-eras-mc-pf": ["diff", "--len", "300", "--poison", "100", "--unmapped", "250",
                            "--json"],
    # the seed scenario on the ERMS path, #MC and a #PF later in the same copy
    "diff-seed-erms": ["diff", "--len", "4096", "--src-align", "0x7e0", "--poison", "0x960",
                       "--unmapped", "0xa00", "--cpu", "erms", "--json"],
    # copy to user with the FSRM inline rep movsb and a #PF on the destination
    "diff-to-user-fsrm": ["diff", "--direction", "to", "--len", "200", "--dst-align", "0xff0",
                          "--unmapped", "0x10", "--cpu", "fsrm", "--json"],
    # one case with instruction counts
    "run-instructions": ["run", "E", "--len", "4096", "--src-align", "0x7e0", "--unmapped",
                         "0x820", "--instructions", "--json"],
    "explain-mc": ["explain", "C", "--len", "4096", "--src-align", "0x7e0", "--poison", "0x960",
                   "--json"],
    "map-F": ["map", "F", "--json"],
    "sweep-serial": ["sweep", "E", "F", "--len", "60..76/8", "--faults", "pf,mc",
                     "--direction", "both", "--routine", "all", "--jobs", "1", "--json"],
    # Debian's real 6.1 and 6.12 files (extracted by scripts/linux-sources)
    "diff-debian": ["diff", "debian:6.1", "debian:6.12", "--len", "300", "--poison", "100",
                    "--unmapped", "250", "--json"],
    # the CI regression check between two eras (standard matrix)
    "check-D-E": ["check", "D", "E", "--json"],
    "fuzz-seeded": ["fuzz", "E", "--max-len", "256", "--examples", "30", "--seed", "7",
                    "--json"],
}


def emu_json(argv: list[str], *, hashseed: str, cache: Path, workdir: Path) -> bytes:
    """Run ``python -m emu ARGV`` in ``workdir`` and return its stdout (exit 0 or 1)."""
    env = dict(os.environ, PYTHONHASHSEED=hashseed, EMU_CACHE=str(cache),
               EMU_LINUX_SOURCES=str(linux_source_root()), PYTHONPATH=str(ROOT))
    argv = [*argv]
    if argv[0] == "sweep":  # results file in the case's own directory
        argv += ["--results", str(workdir / "results.db")]
    proc = subprocess.run([sys.executable, "-m", "emu", *argv], cwd=workdir, env=env,
                          capture_output=True, timeout=600)
    assert proc.returncode in (0, 1), (argv, proc.returncode, proc.stderr.decode()[-2000:])
    json.loads(proc.stdout)  # it is JSON
    return proc.stdout


def twice(argv: list[str], tmp_path: Path) -> tuple[bytes, bytes]:
    cache = tmp_path / "cache"
    runs = []
    for i, seed in enumerate(("0", "2718281828")):
        work = tmp_path / f"run{i}"
        work.mkdir()
        runs.append(emu_json(argv, hashseed=seed, cache=cache, workdir=work))
    return runs[0], runs[1]


@pytest.mark.parametrize("name", COMMANDS)
def test_same_command_same_json_bytes(name: str, tmp_path: Path) -> None:
    first, second = twice(COMMANDS[name], tmp_path)
    assert first == second, _first_difference(first, second)


def test_parallel_sweep_same_json_bytes(tmp_path: Path) -> None:
    """Two workers share the cases differently from run to run; the summary must not show it
    (its per-variant "runs" counts distinct machine inputs, not each worker's memo misses)."""
    argv = ["sweep", "E", "F", "--len", "60..76/8", "--faults", "pf,mc", "--direction", "both",
            "--routine", "all", "--jobs", "2", "--json"]
    first, second = twice(argv, tmp_path)
    assert first == second, _first_difference(first, second)


def _first_difference(a: bytes, b: bytes) -> str:
    la, lb = a.decode().splitlines(), b.decode().splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"first difference at line {i + 1}:\n  {x}\n  {y}"
    return f"one output is a prefix of the other ({len(la)} vs {len(lb)} lines)"
