"""An assembler error names the user's source and line, whatever the source's name holds.

Sources from a tree are named ``REV:file`` and Debian's ``debian-N:file``; a patched one gets
``+N-patches``.  gas reports ``FILE:LINE: Error: …``, so a ':' in the temporary file's name
made the message fall back to gas's raw line with the temporary path.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, get_assembler
from emu.cli.main import main
from emu.errors import AssembleError

ROOT = Path(__file__).resolve().parents[2]
BAD_LINE = "\tmovq %rax, %rbx, %rcx\n"


def _broken(n: int = 77) -> tuple[str, int]:
    lines = (ROOT / "asm" / "era-E.S").read_text().splitlines(keepends=True)
    return "".join(lines[:n] + [BAD_LINE] + lines[n:]), n + 1


@pytest.mark.parametrize("name", ["v5.17:copy_user_64.S", "debian-6.1:copy_user_64.S",
                                  "v5.17:copy_user_64.S+2-patches", "my file:1.S", "plain.S"])
def test_gas_error_is_source_colon_line(name: str) -> None:
    text, line = _broken()
    with pytest.raises(AssembleError) as e:
        get_assembler().assemble(text, AsmConfig(2, 0, frozenset()), name)
    msg = str(e.value)
    assert msg.startswith(f"{name}:{line}: "), msg
    assert "emu-as-" not in msg and "/tmp" not in msg


def _git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.invalid",
                        "PATH": "/usr/bin:/bin"})


def test_tree_revision_and_patch_series_errors_name_the_revision(tmp_path: Path,
                                                                capsys) -> None:  # type: ignore[no-untyped-def]
    tree = tmp_path / "linux"
    f = tree / "arch/x86/lib/copy_user_64.S"
    f.parent.mkdir(parents=True)
    good = (ROOT / "asm" / "era-E.S").read_text()
    f.write_text(good)
    _git(tree, "init", "-q")
    _git(tree, "add", ".")
    _git(tree, "commit", "-qm", "good")
    _git(tree, "tag", "good")
    text, line = _broken()
    f.write_text(text)
    _git(tree, "diff", "--output", str(tmp_path / "break.diff"))
    _git(tree, "commit", "-qam", "bad")
    _git(tree, "tag", "bad")
    cases = [(["--rev", "bad"], "bad:copy_user_64.S"),
             (["--rev", "good", "--patch", str(tmp_path / "break.diff")], "good:copy_user_64.S+")]
    for extra, want in cases:
        rc = main(["run", "--tree", str(tree), *extra, "arch/x86/lib/copy_user_64.S",
                   "--era", "E", "--routine", "copy_user_generic_unrolled", "--len", "64"],
                  io.StringIO())
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith(f"emu: error: {want}"), err
        assert f":{line}: " in err and "emu-as-" not in err, err
