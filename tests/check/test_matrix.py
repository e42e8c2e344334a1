"""The standard matrix: its cells, fault placement and case keys."""

from __future__ import annotations

import pytest

from emu.runs import check
from emu.runs.check import MATRIX_ALIGNS, MATRIX_LENGTHS, MCase, case_faults, matrix


def test_every_case_is_a_valid_run() -> None:
    cases = matrix(["copy_user_generic_unrolled"])
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys))
    for c in cases:
        c.buffers()          # raises UsageError for an impossible case
        assert MCase.from_key(c.key) == c


@pytest.mark.parametrize("direction", ["from", "to"])
@pytest.mark.parametrize("n", MATRIX_LENGTHS)
@pytest.mark.parametrize("sa, da", MATRIX_ALIGNS)
def test_faults_of_a_cell(direction: str, n: int, sa: int, da: int) -> None:
    cells = list(case_faults(direction, n, sa, da))
    assert cells[0] == ("none", (), ())
    mc_lines = [(sa + po[0]) // 64 for k, po, _ in cells if k == "mc"]
    assert len(mc_lines) == len(set(mc_lines)), "one #MC case per distinct line"
    assert (sa + 0) // 64 in mc_lines and (sa + n - 1) // 64 in mc_lines
    # one #PF case per user page the buffer touches, at the first byte of that page
    user = sa if direction == "from" else da
    pages = {(user + i) // 0x1000 for i in range(n)}
    pf = [un[0] for k, _, un in cells if k == "pf"]
    assert sorted((user + o) // 0x1000 for o in pf) == sorted(pages)
    assert all(o == 0 or (user + o) % 0x1000 == 0 for o in pf)


def test_mid_block_lines_reach_every_load_of_a_block() -> None:
    # a poisoned line starting at block offset 64 - sa%64 is first touched by the load at
    # that offset; the alignments cover all eight qword offsets of a 64-byte block
    assert {(64 - sa % 64) % 64 for sa, da in MATRIX_ALIGNS if da == 0} >= set(range(0, 64, 8))


def test_page_crossing_cell_has_two_pf_cases() -> None:
    pf = [un for k, _, un in case_faults("from", 200, 0xFF9, 7) if k == "pf"]
    assert pf == [(0,), (7,)]


def test_matrix_is_described_in_snapshots() -> None:
    j = check.matrix_json()
    assert j["version"] == check.MATRIX_VERSION
    assert j["lengths"] == list(MATRIX_LENGTHS)
