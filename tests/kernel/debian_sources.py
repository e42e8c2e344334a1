"""Debian's kernel sources for tests/kernel: present, or a clear failure (never a skip).

``make test`` runs scripts/linux-sources first, which installs linux-source-6.1 and
linux-source-6.12 and extracts copy_user_64.S, copy_mc_64.S and getuser.S into a cache
directory outside the repository (emu.build.sources.linux_source_root()).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emu.errors import InputError
from emu.build.resolve import source_target as kernel_target
from emu.build.target import Target as KernelTarget
from emu.build.sources import Source, debian_file, read_file


def debian(version: str, name: str = "copy_user_64.S") -> Path:
    try:
        return debian_file(version, f"arch/x86/lib/{name}")
    except InputError as e:
        pytest.fail(f"{e} -- tests/kernel needs Debian's kernel sources; `make test` runs "
                    "scripts/linux-sources to install and extract them", pytrace=False)


def debian_source(version: str, name: str = "copy_user_64.S") -> Source:
    return read_file(str(debian(version, name)))


def debian_target(version: str, name: str = "copy_user_64.S",
                  cpu: frozenset[str] = frozenset(), era: str | None = None) -> KernelTarget:
    src = debian_source(version, name)
    return kernel_target(Source(src.text, f"debian-{version}:{name}", src.path), cpu, era=era)
