"""Shared fixtures: hypothesis profiles, --update-golden, and targets for the test routines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from emu.kernel.extable import Encoding
from emu.kernel.severity import Severity
from emu.build.target import Settings, Target, get_target, read_source

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "asm" / "examples" / "test_routines.S"

settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None,
                          max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=40)
settings.register_profile("deep", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite fixtures/golden from the current behaviour")


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def demo_target(encoding: Encoding = Encoding.DATA, severity: Severity = Severity.V5_17,
                layout: int = 517) -> Target:
    return get_target(read_source(str(EXAMPLES)), EXAMPLES.name,
                      Settings(encoding, layout, severity), frozenset({"SMAP"}))


@pytest.fixture(scope="session")
def demo() -> Target:
    return demo_target()
