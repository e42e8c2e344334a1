"""``emu fuzz``: finds, shrinks, repeats with a seed, saves fixtures."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from emu.runs.fuzz import parse_want
from emu.errors import UsageError

from sweep_helpers import emu


def test_finds_and_shrinks_zero_with_missing() -> None:
    rc, out = emu("fuzz", "C", "--want", "zero_with_missing", "--seed", "4", "--json")
    assert rc == 1
    res = json.loads(out)
    assert res["found"] and res["failures"] == ["zero_with_missing"]
    # shrunk: the smallest copy that shows it is one poisoned byte
    assert res["case"]["length"] == 1 and res["case"]["poison"] == [0]
    rc, js = emu(*shlex.split(res["command"])[1:], "--json")
    assert "zero_with_missing" in json.loads(js)["violations"]


def test_same_seed_same_result() -> None:
    argv = ["fuzz", "E", "F", "--cpu", "all", "--routine", "all", "--faults", "all",
            "--want", "violation", "--examples", "200", "--json"]
    a = emu(*argv, "--seed", "3")
    b = emu(*argv, "--seed", "3")
    assert a == b
    res = json.loads(a[1])
    assert res["found"]
    rc, js = emu(*shlex.split(res["command"])[1:], "--json")
    o = json.loads(js)
    assert set(res["failures"]) <= set(o["violations"])
    assert o["return_value"] == res["record"]["return_value"]


def test_nothing_found_exits_0() -> None:
    # a #PF is always fixed up with the exact remainder in era E (kernel-facts §3 row E)
    rc, out = emu("fuzz", "E", "--faults", "pf", "--want", "violation", "--examples", "60",
                  "--max-len", "9000")
    assert rc == 0 and "no failure" in out


def test_save_writes_a_replayable_fixture(tmp_path: Path) -> None:
    rc, out = emu("fuzz", "D", "--want", "poison_consumed_twice", "--seed", "1", "--save",
                  str(tmp_path / "fz"))
    assert rc == 1
    files = list((tmp_path / "fz").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("D-poison_consumed_twice-")
    fx = json.loads(files[0].read_text())
    assert fx["expect"]["violations"] and fx["command"].startswith("emu run D ")
    assert f"saved: {files[0]}" in out


def test_want_names_are_checked() -> None:
    assert parse_want("panic,zero_with_missing") == {"panic", "zero_with_missing"}
    with pytest.raises(UsageError):
        parse_want("bogus")
    rc, _ = emu("fuzz", "C", "--want", "bogus")
    assert rc == 2
