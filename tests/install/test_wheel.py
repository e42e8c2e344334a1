"""The installed package is complete: a real wheel in a fresh venv, used from elsewhere.

Builds the wheel from a copy of the source tree (the checkout gets no build/ directory),
installs it into a new venv without extras, and from a directory that is not the checkout
runs the seed ``emu diff``, ``emu run`` of a user's own ``.S`` that includes the kernel
headers, and ``emu sweep --plot`` — first without matplotlib (one-line pip hint, exit 2),
then with ``mce-emu[plot]`` (and ``--cluster`` without ``mce-emu[cluster]``: the same hint).  The results must equal the development install's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ["--len", "4096", "--src-align", "0x7e0", "--poison", "0x960"]
#: Left out of the copy the wheel is built from: environments, outputs, and what no wheel needs.
TOP_SKIP = {".venv", ".git", "build", "dist", ".pytest_cache", "tests", "bench", "fixtures",
            "docs", "mce_emu.egg-info"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == ROOT
    return {n for n in names if n == "__pycache__" or (top and n in TOP_SKIP)}

#: A user's own routine: kernel macros from <linux/linkage.h>, <asm/asm.h>, <asm/smap.h>.
USER_S = """\
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>

SYM_FUNC_START(my_copy)
\tASM_STAC
\tmovl %edx,%ecx
1:\trep movsb
\txorl %eax,%eax
\tASM_CLAC
\tRET
2:\tmovl %ecx,%eax
\tASM_CLAC
\tRET
\t_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(my_copy)
"""


def _run(argv: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"),
              str(src)], base)
    assert r.returncode == 0, r.stderr
    (wheel,) = (base / "dist").glob("mce_emu-*.whl")
    v = base / "venv"
    r = _run([sys.executable, "-m", "venv", str(v)], base)
    assert r.returncode == 0, r.stderr
    r = _run([str(v / "bin/python"), "-m", "pip", "install", "-q", str(wheel)], base)
    assert r.returncode == 0, r.stderr
    (v / "wheel-path").write_text(str(wheel))
    return v


def test_the_wheel_works_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    emu = str(venv / "bin/emu")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the package imported is the installed one, with its data inside it
    r = _run([str(venv / "bin/python"), "-c",
              "import emu, emu.paths as p; print(emu.__file__); print(p.INCLUDE_DIR)"], elsewhere)
    assert r.returncode == 0, r.stderr
    mod, inc = r.stdout.split()
    assert Path(mod).is_relative_to(venv) and Path(inc).is_relative_to(venv)
    assert (Path(inc) / "linux/linkage.h").is_file()

    r = _run([emu, "--version"], elsewhere)
    assert r.returncode == 0 and r.stdout.startswith("emu 0.1.0\n"), r.stdout
    assert {ln.split()[0] for ln in r.stdout.splitlines()} == {"emu", "unicorn", "capstone",
                                                                "keystone"}
    assert "not installed" not in r.stdout

    # 1. the seed diff: the same as the development install gives
    r = _run([emu, "diff", *SEED, "--json"], elsewhere)
    assert r.returncode == 0, r.stderr
    dev = _run([sys.executable, "-m", "emu", "diff", *SEED, "--json"], ROOT)
    assert json.loads(r.stdout) == json.loads(dev.stdout)
    rows = {row["variant"][0]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["A"]["state"] == "panic" and rows["C"]["return_value"] == 0
    assert rows["E"]["return_value"] == 1728 and rows["F"]["return_value"] == 1696
    r = _run([emu, "diff", *SEED], elsewhere)
    assert r.returncode == 0 and "poison_consumed_twice" in r.stdout, r.stderr

    # 2. a user's own .S with the kernel headers
    (elsewhere / "mine.S").write_text(USER_S)
    r = _run([emu, "run", "mine.S", "--routine", "my_copy", "--convention", "copy", "--len", "256", "--poison", "0x80",
              "--json"], elsewhere)
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)
    assert (o["state"], o["return_value"], o["bytes_copied"], o["mc_count"]) == \
        ("returned", 128, 128, 1)

    # 3. sweep --plot: without the extra, a one-line hint; with it, a picture
    sweep = [emu, "sweep", "C", "F", "--len", "256", "--step", "line", "--cpu", "all",
             "--plot", "s.png"]
    r = _run(sweep, elsewhere)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "pip install 'mce-emu[plot]'" in r.stderr, r.stderr
    assert not (elsewhere / "s.png").exists()
    r = _run([emu, "sweep", "C", "--len", "256", "--cluster", "local:1"], elsewhere)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "pip install 'mce-emu[cluster]'" in r.stderr, r.stderr
    wheel = (venv / "wheel-path").read_text()
    r = _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", f"{wheel}[plot]"],
             elsewhere)
    assert r.returncode == 0, r.stderr
    r = _run(sweep, elsewhere)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "C: " in r.stdout and "F: " in r.stdout
