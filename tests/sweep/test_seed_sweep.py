"""The README sweep: every poison offset of the 4096-byte seed copy, all eras (slow).

Expectations are kernel-facts.md §3 per era, on the unrolled path (--cpu none):
A panics on any #MC in copy_user; B/C return 0 after #MC; D retries the tail byte-wise,
touching the poison again, and returns the exact remainder; E returns the fixup's edx,
rounded back to the start of the failing 64-byte block (never more than was left, by less
than 64); F retries the tail (#MC and #PF look alike) and returns the exact remainder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep_helpers import emu, read_jsonl, read_results

pytestmark = pytest.mark.slow


def test_seed_sweep_every_offset_all_eras(tmp_path: Path) -> None:
    res, lines = tmp_path / "seed.db", tmp_path / "seed.jsonl"
    rc, out = emu("sweep", "A", "B", "C", "D", "E", "F", "--len", "4096", "--src-align", "0x7e0",
                  "--cpu", "none", "--results", str(res), "--jsonl", str(lines), "--json", "--plot",
                  str(tmp_path / "seed.png"), "--html", str(tmp_path / "seed.html"))
    assert rc == 0
    s = json.loads(out)
    assert s["cases"] == 6 * 4096 and s["pending"] == 0
    by: dict[str, list[dict]] = {}
    assert read_jsonl(lines) == read_results(res)
    for r in read_results(res):
        by.setdefault(r["case"]["variant"], []).append(r)
    assert {k: len(v) for k, v in by.items()} == {k: 4096 for k in "ABCDEF"}
    assert all(r["state"] == "panic" for r in by["A"])
    for era in "BC":
        assert all(r["return_value"] == 0 and r["violations"] == ["zero_with_missing"]
                   for r in by[era])
    for era in "DF":
        assert all("poison_consumed_twice" in r["violations"] and r["error"] == 0
                   and r["mc"] == 2 for r in by[era])
    for r in by["E"]:
        assert r["mc"] == 1 and 0 <= r["error"] < 64
        assert not {"zero_with_missing", "poison_consumed_twice"} & set(r["violations"])
    assert (tmp_path / "seed.png").stat().st_size > 10_000
    assert (tmp_path / "seed.html").read_text().count('<section class="variant"') == 6
