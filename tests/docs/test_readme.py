"""Every command example in README.md, run as printed: its output must be the README's.

A README block whose lines start with ``$ `` is an example: the commands run one after another
in one shell, in a scratch directory that sees the repository's inputs (``asm/``,
``fixtures/``, ``tests/fixtures/``, ``scripts/``), and what they print (stdout and stderr,
as a 160-column terminal shows them: ``COLUMNS=160``) must equal the lines that follow them in the block, trailing blanks
aside; a README line that is only ``...`` or ``- ...`` (with an optional remark after it)
stands for lines left out.  ``/tmp/...`` paths in the examples are moved into the scratch
directory, which the examples of one run share (a later example uses the tree an earlier one
made).  The timing benchmarks are not compared: their figures change from run to run, as the
README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: Examples whose output is a measurement, not behaviour.
TIMED = ("make bench", "make bench-sweep")


def examples() -> list[tuple[int, list[str], str]]:
    """(line number, commands, expected output) of each example block."""
    out = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            body = lines[i + 1:j]
            if body and body[0].startswith("$ "):
                cmds = [ln[2:] for ln in body if ln.startswith("$ ")]
                text = "".join(ln + "\n" for ln in body if not ln.startswith("$ "))
                out.append((i + 2, cmds, text))
            i = j
        i += 1
    return out


def params():  # type: ignore[no-untyped-def]
    for line, cmds, text in examples():
        if any(c.startswith(TIMED) for c in cmds):
            continue
        yield pytest.param(cmds, text, id=f"README:{line}")


def test_the_readme_has_examples() -> None:
    assert len(list(params())) >= 12


_ELIDED = re.compile(r"\s*(- )?\.\.\.( .*)?$")


def matches(got: list[str], want: list[str]) -> bool:
    """``got`` equals ``want`` where each elision line of ``want`` takes any lines."""
    if not want:
        return not got
    if _ELIDED.match(want[0]):
        return any(matches(got[k:], want[1:]) for k in range(len(got) + 1))
    return bool(got) and got[0] == want[0] and matches(got[1:], want[1:])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme-tmp")


@pytest.mark.parametrize("cmds, expected", list(params()))
def test_readme_example(cmds: list[str], expected: str, tmp_path: Path, scratch: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("asm", "fixtures", "tests", "scripts"):
        (work / name).symlink_to(ROOT / name)
    tmp = str(scratch)
    # No "set -e": an example may show a command that exits 1 (a flagged diff) before the next.
    script = "".join(c.replace("/tmp/", tmp + "/") + "\n" for c in cmds)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               NO_COLOR="1", TERM="dumb", COLUMNS="160",
               GIT_AUTHOR_NAME="emu", GIT_AUTHOR_EMAIL="emu@example.invalid",
               GIT_COMMITTER_NAME="emu", GIT_COMMITTER_EMAIL="emu@example.invalid")
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    got = [ln.rstrip() for ln in r.stdout.replace(tmp + "/", "/tmp/").splitlines()]
    want = [ln.rstrip() for ln in expected.splitlines()]
    assert matches(got, want), f"exit {r.returncode}\n" + "\n".join(got)
