"""The full standard matrix through the installed ``emu`` command (slow: ``pytest -m slow``).

Prints the wall time for the record (the module docstring of emu/check.py quotes it); no
assertion is made on time.  The assertions are about behaviour across all routines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from check_helpers import ROOT

EMU = Path(sys.executable).parent / "emu"


def emu_check(*argv: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    r = subprocess.run([str(EMU), "check", *argv, "--json"], capture_output=True, text=True,
                       timeout=600)
    dt = time.monotonic() - t0
    assert r.stderr == ""
    return r.returncode, json.loads(r.stdout), dt


@pytest.mark.slow
def test_era_d_to_e_all_routines() -> None:
    code, doc, dt = emu_check("D", "E", "--era", "each")
    print(f"\nemu check D E --era each: {doc['matrix']['cases_per_side']} cases per side, "
          f"{dt:.1f} s wall")
    assert code == 1 and doc["matrix"]["cases_per_side"] == 4 * 2984
    f = {c["class"]: c for c in doc["classes"]}
    # kernel-facts §3: D's tail retry touches the poison again on every routine; E's doesn't
    assert f["mc_count_changed"]["new"] < f["mc_count_changed"]["old"]
    assert not f["new_mc_panic"]["changed"] and not f["new_smap_violation"]["changed"]


@pytest.mark.slow
def test_era_f_word_loop_default_type(tmp_path: Path) -> None:
    text = (ROOT / "asm" / "era-F.S").read_text()
    anchor = "_ASM_EXTABLE_UA(2b, .Lcopy_user_tail)"
    assert text.count(anchor) == 1
    new = tmp_path / "F-default.S"
    new.write_text(text.replace(anchor, "_ASM_EXTABLE(2b, .Lcopy_user_tail)"))
    code, doc, dt = emu_check("F", str(new))
    print(f"\nemu check F F-default.S: {doc['matrix']['cases_per_side']} cases per side, "
          f"{dt:.1f} s wall")
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
