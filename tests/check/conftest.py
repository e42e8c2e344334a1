"""Fixtures for the emu check tests (helpers live in check_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from check_helpers import comment_only, era_e, make_repo, type_only


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return make_repo(tmp_path_factory.mktemp("check-repo"))


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """base.S, type.S and comment.S (comment on top of base) as files."""
    out = {}
    for name, text in (("base", era_e()), ("type", type_only(era_e())),
                       ("comment", comment_only(era_e()))):
        p = tmp_path / f"{name}.S"
        p.write_text(text)
        out[name] = p
    return out
