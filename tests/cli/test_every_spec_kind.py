"""Every subcommand × every source-spec kind: one resolver, so no pair is forgotten.

The same era-E copy_user source reaches emu as each kind of spec — the era key, a .S file,
Debian's 6.1 file (an era E copy_user_64.S), a revision of a git tree, that revision plus a
patch series (which makes it era D), a kbuild-style object and a linked image — and every
subcommand must accept it and give the answer the era key gives (era D's for the patched
one).  A subcommand that refuses a kind would have to say why in one line; none does.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, GasAssembler
from emu.cli.main import main
from emu.core.machine import Buffers
from emu.kernel.eras import ERAS
from emu.build.target import era_target
from emu.runs.caller import simulate

ROOT = Path(__file__).resolve().parents[2]
PATCHES = [str(ROOT / "fixtures" / "patches" / p) for p in
           ("0001-retry-tail-after-mc.patch", "0002-remove-unused-mc-exit.patch")]
CASE = ["--len", "4096", "--src-align", "0x7e0", "--poison", "0x960"]
ROUTINE = "copy_user_generic_unrolled"
KINDS = ("era", "file", "debian", "rev", "patch", "object", "vmlinux")
LDS = "SECTIONS { . = 0xffffffff81000000; .text : { *(.text) *(.text.*) *(.fixup) } " \
      ". = ALIGN(16); __ex_table : { *(__ex_table) } .data : { *(.data) *(.bss) } }\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("kinds")
    era_e = ERAS["E"]
    text = Path(era_e.path).read_text()
    src = d / "copy_user_64.S"
    src.write_text(text)
    tree = d / "linux"
    (tree / "arch/x86/lib").mkdir(parents=True)
    shutil.copy(src, tree / "arch/x86/lib/copy_user_64.S")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tree)]
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v5.17"], check=True)
    subprocess.run([*git, "tag", "v5.17"], check=True)
    obj = d / "copy_user_64.o"
    obj.write_bytes(GasAssembler().assemble(
        text, AsmConfig(int(era_e.encoding), era_e.ex_layout, frozenset()), "copy_user_64.S"))
    (d / "link.lds").write_text(LDS)
    vml = d / "vmlinux"
    subprocess.run(["ld", "-z", "noexecstack", "-T", str(d / "link.lds"), "-o", str(vml),
                    str(obj)], check=True)
    return {"dir": d, "src": str(src), "tree": str(tree), "obj": str(obj), "vmlinux": str(vml)}


def source(kind: str, inp: dict[str, object], *, variant: bool = False) -> list[str]:
    """The arguments naming the kind's source (``variant``: as a positional variant)."""
    return {
        "era": ["E"],
        "file": [str(inp["src"])],
        "debian": ["debian:6.1"],
        "rev": ["--tree", str(inp["tree"]), "v5.17"],
        "patch": ["--tree", str(inp["tree"]), "v5.17", *[x for p in PATCHES
                                                          for x in ("--patch", p)]],
        "object": [str(inp["obj"])] if variant else ["--object", str(inp["obj"])],
        "vmlinux": [f"vmlinux:{inp['vmlinux']}"] if variant else ["--vmlinux",
                                                                  str(inp["vmlinux"])],
    }[kind]


def expected_era(kind: str) -> str:
    return "D" if kind == "patch" else "E"


def emu(argv: list[str], capsys: pytest.CaptureFixture[str], ok: tuple[int, ...] = (0,)
        ) -> dict:  # type: ignore[type-arg]
    out = io.StringIO()
    code = main(argv, out)
    err = capsys.readouterr().err
    assert code in ok, f"emu {' '.join(argv)} -> exit {code}: {err}"
    assert "Traceback" not in err
    return json.loads(out.getvalue()) if out.getvalue().startswith("{") else {}


def reference(era: str) -> int:
    t = era_target(ERAS[era], frozenset())
    o = t.run(ERAS[era].routine(ROUTINE), Buffers(length=4096, src_align=0x7E0, poison=(0x960,)))
    assert o.return_value is not None
    return o.return_value


@pytest.mark.parametrize("kind", KINDS)
def test_run(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    got = emu(["run", *source(kind, inputs), *CASE, "--routine", ROUTINE, "--json"], capsys)
    assert got["routine"] == ROUTINE
    assert got["return_value"] == reference(expected_era(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_run_picks_the_cpus_routine(kind: str, inputs: dict[str, object],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    got = emu(["run", *source(kind, inputs), *CASE, "--cpu", "erms", "--json"], capsys)
    assert got["routine"] == "copy_user_enhanced_fast_string"


@pytest.mark.parametrize("kind", KINDS)
def test_diff(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    args = source(kind, inputs, variant=True)
    got = emu(["diff", *args, *CASE, "--routine", ROUTINE, "--json"], capsys)
    # with --patch, diff adds the patched source after the unpatched one
    want = [reference("E"), reference("D")] if kind == "patch" else [reference("E")]
    assert [r["return_value"] for r in got["rows"]] == want


@pytest.mark.parametrize("kind", KINDS)
def test_explain(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    got = emu(["explain", *source(kind, inputs), *CASE, "--routine", ROUTINE, "--json"], capsys)
    assert got["return_value"] == reference(expected_era(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_map(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    ref = emu(["map", "E", "--routine", ROUTINE, "--json"], capsys)["accesses"]
    got = emu(["map", *source(kind, inputs), "--routine", ROUTINE, "--json"], capsys)["accesses"]
    if kind == "debian":    # Debian's file is era E, but its own code: compare the verdicts
        assert {(a["extable"], a["mc"]) for a in got} == {(a["extable"], a["mc"]) for a in ref}
        return
    shape = [(a["where"], a["insn"], a["extable"], a["mc"]) for a in ref]
    assert shape and [(a["where"], a["insn"], a["extable"], a["mc"]) for a in got] == shape


@pytest.mark.parametrize("kind", KINDS)
def test_sweep(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    grid = ["--len", "256", "--src-align", "0x20", "--routine", ROUTINE, "--jobs", "1", "--json"]
    ref = emu(["sweep", "E" if kind != "patch" else "D", *grid], capsys)
    got = emu(["sweep", *source(kind, inputs, variant=True), *grid], capsys)
    (r,), (g,) = ref["variants"].values(), got["variants"].values()
    assert g["cases"] == r["cases"] == 256
    assert g["classes"].keys() == r["classes"].keys()
    assert {k: v["count"] for k, v in g["classes"].items()} == \
        {k: v["count"] for k, v in r["classes"].items()}


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz(kind: str, inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    got = emu(["fuzz", *source(kind, inputs, variant=True), "--routine", ROUTINE, "--len", "4096",
               "--src-align", "0x7e0", "--dst-align", "0", "--want", "poison_consumed_twice",
               "--examples", "30", "--seed", "1", "--json"], capsys, ok=(0, 1))
    # era D (the patched source) reads the poison twice on a #MC; era E never does.
    assert got["found"] is (kind == "patch")


@pytest.mark.parametrize("kind", KINDS)
def test_check_and_snapshot(kind: str, inputs: dict[str, object], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    src = source(kind, inputs, variant=True)
    snap = tmp_path / "snap.json"
    emu(["snapshot", *src, "-o", str(snap), "--routine", ROUTINE], capsys)
    assert json.loads(snap.read_text())["era"] == expected_era(kind)
    # the source against its own snapshot, and against the era key's bundled source
    same = emu(["check", *src, "--against", str(snap), "--routine", ROUTINE, "--json"], capsys)
    assert same["exit"] == 0 and same["matrix"]["cases_per_side"] > 0
    if kind in ("rev", "patch"):
        return      # --tree makes every positional a revision
    other = emu(["check", "E", *src, "--routine", ROUTINE, "--json"], capsys, ok=(0, 1))
    assert other["matrix"]["cases_per_side"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_run_caller_write(kind: str, inputs: dict[str, object],
                          capsys: pytest.CaptureFixture[str]) -> None:
    got = emu(["run", *source(kind, inputs), "--caller", "write", *CASE, "--json"], capsys)
    era = expected_era(kind)
    ref = simulate(ERAS[era], frozenset(), Buffers(length=4096, src_align=0x7E0,
                                                   poison=(0x960,)))
    assert got["era"] == era
    assert got["return_value"] == ref.to_json()["return_value"]
    steps = [(s.get("stage"), s["kind"]) for s in ref.to_json()["steps"]]
    assert [(s.get("stage"), s["kind"]) for s in got["steps"]] == steps
    if kind != "debian":    # the same code, so the same instructions take the faults
        assert [s.get("where") for s in got["steps"]] == \
            [s.get("where") for s in ref.to_json()["steps"]]
