"""Helpers for the emu check tests: project-written sources and a throw-away git repository.

The sources are derived from asm/era-E.S (written for emu, not kernel text).  ``type_only``
changes only the __ex_table type of the unrolled loop's eight user loads, from
_ASM_EXTABLE_CPY (EX_TYPE_COPY) to _ASM_EXTABLE_TYPE_REG(..., EX_TYPE_EFAULT_REG, %rax): the
shape of the v5.17 4c132d1d844a / 99641e094d6c change (kernel-facts.md §8).  Under the
v5.17 severity rules an EFAULT_REG fixup is not recoverable, so an #MC on those loads panics.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from emu.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
ERA_E = ROOT / "asm" / "era-E.S"
IN_TREE = "arch/x86/lib/copy_user_64.S"
#: The labels of the unrolled block's loads (1-4 and 9-12) in era-E.S.
LOAD_LABELS = ("1", "2", "3", "4", "9", "10", "11", "12")


def era_e() -> str:
    return ERA_E.read_text()


def type_only(text: str) -> str:
    """The unrolled loads' entries become EX_TYPE_EFAULT_REG; nothing else changes."""
    pat = re.compile(r"_ASM_EXTABLE_CPY\((%s)b, 30b\)" % "|".join(LOAD_LABELS))
    new, n = pat.subn(r"_ASM_EXTABLE_TYPE_REG(\1b, 30b, EX_TYPE_EFAULT_REG, %rax)", text)
    assert n == len(LOAD_LABELS)
    return new


def comment_only(text: str) -> str:
    """An unrelated comment added in front of copy_user_generic_string."""
    anchor = "SYM_FUNC_START(copy_user_generic_string)"
    assert text.count(anchor) == 1
    return text.replace(anchor, "/* Reviewed: no functional change here. */\n" + anchor)


def without_function(text: str, name: str) -> str:
    """The source with one SYM_FUNC block (and its export) removed."""
    pat = re.compile(r"SYM_FUNC_START\(%s\).*?SYM_FUNC_END\(%s\)\nEXPORT_SYMBOL\(%s\)\n"
                     % ((re.escape(name),) * 3), re.S)
    new, n = pat.subn("", text)
    assert n == 1
    return new


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", LC_ALL="C")
    r = subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env=env,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def make_repo(root: Path) -> tuple[Path, dict[str, str]]:
    """A git repository with three commits of arch/x86/lib/copy_user_64.S:
    base (era-E.S), type (extable type only), comment (a comment on top of type).

    Returns:
        (repo, {"base": sha, "type": sha, "comment": sha}).
    """
    repo = root / "linux"
    (repo / "arch/x86/lib").mkdir(parents=True)
    git(repo, "init", "-q")
    f = repo / IN_TREE
    shas: dict[str, str] = {}
    for name, text in (("base", era_e()), ("type", type_only(era_e())),
                       ("comment", comment_only(type_only(era_e())))):
        f.write_text(text)
        git(repo, "add", IN_TREE)
        git(repo, "commit", "-q", "-m", name)
        shas[name] = git(repo, "rev-parse", "HEAD")
    return repo, shas


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err
