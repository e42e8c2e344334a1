"""Fixtures for the silicon differential: a per-session build directory and harness cache.

The differential needs an x86-64 Linux host with gcc (the routines run natively); elsewhere
the directory is skipped with the reason.
"""

from __future__ import annotations

import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from silicon_native import PATTERN, Harness, build_harness  # noqa: E402

_REASON = None
if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    _REASON = f"the silicon differential runs x86-64 code natively; this is {platform.machine()}"
elif shutil.which("gcc") is None:
    _REASON = "gcc is needed to build the silicon harness (apt-get install gcc)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=_REASON))


@pytest.fixture(scope="session")
def silicon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("silicon")


@pytest.fixture(scope="session")
def pattern_file(silicon_dir: Path) -> Path:
    p = silicon_dir / "pattern.bin"
    p.write_bytes(PATTERN)
    return p


@pytest.fixture(scope="session")
def harness_for(silicon_dir: Path) -> Callable[[bytes, int, int], Harness]:
    """Build (once per object) the native harness linked with an object."""
    cache: dict[tuple[bytes, int, int], Harness] = {}

    def get(obj: bytes, encoding: int, layout: int) -> Harness:
        key = (obj, encoding, layout)
        if key not in cache:
            cache[key] = build_harness(obj, encoding, layout, silicon_dir)
        return cache[key]

    return get
