"""Where emu's bundled data lives: the era sources, getuser.S and the kernel-macro headers.

A shared leaf module (imports nothing of emu), so every stage may use it.
"""

from __future__ import annotations

from pathlib import Path

#: The project's own kernel-style sources (asm/ at the top of the repository).
ASM_DIR = Path(__file__).resolve().parent.parent / "asm"
#: The kernel-macro headers real kernel files and ours assemble with.
INCLUDE_DIR = ASM_DIR / "include"
