"""``--max-cases`` bounds the work and the memory of any grid; a grid too large is refused at once.

Issue 17, class 5: the whole grid was built as a list before the limit applied (4096 lengths
× 4096 × 4096 alignments with ``--max-cases 10`` grew to 2.9 GB and ended in a MemoryError
traceback), and an invalid huge grid took 19 s to be refused.  Grids are now lazy (units are
made cell by cell), counted arithmetically (``faults.count``, ``Grid.count``), and refused
from their dimensions alone when they have too many cells.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.runs.faults import KINDS, count, placements
from emu.runs.sweep import Grid, parse_variant, units

PY = sys.executable


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("direction", ["from", "to"])
def test_the_arithmetic_count_is_the_number_of_placements(kind: str, direction: str) -> None:
    for n in (0, 1, 2, 63, 64, 65, 127, 4095, 4096, 4097, 8191, 12000, 16384):
        for sa, da in ((0, 0), (1, 0xFFF), (0x7E0, 0x3F), (0xFC1, 0x800), (0x40, 0xFFF)):
            for step in (1, 7, 64, 4096):
                for offs in ((), (0, 5, n - 1, n, n + 64), (n - 64, n // 2)):
                    got = count(kind, n, sa, da, direction, step, offs)
                    want = sum(1 for _ in placements(kind, n, sa, da, direction, step, offs))
                    assert got == want, (kind, direction, n, sa, da, step, offs)


def test_lazy_units_and_count_agree_with_the_whole_list() -> None:
    g = Grid((parse_variant("E", None), parse_variant("F", None)), cpus=("none", "erms"),
             directions=("from", "to"), lengths=(1, 100, 4097), src_aligns=(0, 0x7E3),
             dst_aligns=(0, 0xFC0), kinds=tuple(KINDS), step=3)
    cases = list(g.cases())
    assert g.count() == len(cases)
    assert list(g.units()) == units(cases)


def emu(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    p = subprocess.run([PY, "-m", "emu.cli.main", *args], capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - t0


@pytest.mark.parametrize("args", [
    ["--len", "1..4096", "--src-align", "0..4095", "--dst-align", "0..4095"],
    ["--len", "1..60", "--src-align", "0..4095", "--dst-align", "0..15", "--cpu", "all",
     "--faults", "all"],
    ["--len", "0..100000000"],
    ["--poison", "0..99999999/1"],
], ids=["4096^3", "many_cells", "huge_list", "huge_offsets"])
def test_a_grid_too_large_is_refused_at_once(args: list[str]) -> None:
    p, secs = emu("sweep", "E", *args, "--max-cases", "10")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: "), p.stderr
    assert secs < 5


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the forking
# pytest process's peak.
RSS = """
import sys
from emu.cli.main import main
rc = main(sys.argv[1:])
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print("RSS", int(hwm.split()[1]) // 1024, file=sys.stderr)
sys.exit(rc)
"""


def test_max_cases_on_a_grid_of_billions_is_fast_and_small(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    grid = ["sweep", "E", "--len", "16384", "--src-align", "0..4095", "--dst-align",
            "0..100", "--faults", "mc,pf", "--jobs", "1", "--results", str(db), "--json"]
    t0 = time.monotonic()
    p = subprocess.run([PY, "-c", RSS, *grid, "--max-cases", "10"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 < 20
    rss = int(p.stderr.split("RSS")[-1])
    assert rss < 150, rss
    s = json.loads(p.stdout)
    total = s["cases"] + s["pending"]
    # #MC: every byte of 16384, for 4096 x 101 alignments; #PF: the pages touched (4 when
    # the source is page-aligned, else 5)
    assert total == 16384 * 4096 * 101 + (4 + 4095 * 5) * 101 and s["cases"] >= 10
    p = subprocess.run([PY, "-c", RSS, *grid, "--max-cases", "10", "--resume"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s2 = json.loads(p.stdout)
    assert s2["cases"] > s["cases"] and s2["cases"] + s2["pending"] == total
