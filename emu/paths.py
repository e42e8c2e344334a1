"""Where emu's bundled data lives: the era sources, getuser.S and the kernel-macro headers.

In an installed wheel the data sits inside the package (``emu/asm``, mapped from the
repository's top-level ``asm/`` by pyproject.toml); in a source checkout, editable install
included, it is the top-level ``asm/`` itself.  A shared leaf module (imports nothing of
emu), so every stage may use it.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _asm_dir() -> Path:
    installed = _PACKAGE / "asm"
    if (installed / "include").is_dir():
        return installed
    return _PACKAGE.parent / "asm"


#: The project's own kernel-style sources (era-*.S, getuser.S, examples/).
ASM_DIR = _asm_dir()
#: The kernel-macro headers real kernel files and ours assemble with.
INCLUDE_DIR = ASM_DIR / "include"
