"""Replay every case ``emu fuzz --save`` found and committed under fixtures/fuzz/."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from emu.runs.sweep import Case, Runner

from sweep_helpers import ROOT, emu

FIXTURES = sorted((ROOT / "fixtures" / "fuzz").glob("*.json"))


def test_there_are_committed_cases() -> None:
    names = {p.name.rsplit("-", 1)[0] for p in FIXTURES}
    assert {"C-zero_with_missing", "D-poison_consumed_twice"} <= names


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_replay(path: Path) -> None:
    fx = json.loads(path.read_text())
    case = Case.from_json(fx["case"])
    assert fx["command"] == case.command()
    rec = Runner().run(case)
    exp = fx["expect"]
    for key in ("class", "state", "return_value", "bytes_copied", "violations"):
        assert rec[key] == exp[key], key
    for name in fx["failures"]:
        assert name in rec["violations"] or name == rec["state"]
    # and the printed command agrees
    rc, js = emu(*shlex.split(fx["command"])[1:], "--json")
    o = json.loads(js)
    assert (o["state"], o["return_value"], o["violations"]) == (
        exp["state"], exp["return_value"], exp["violations"])
