"""Helpers for the sweep/fuzz tests: run the CLI in-process or as a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from emu.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def emu(*argv: str) -> tuple[int, str]:
    """Run ``emu`` in this process; returns (exit code, stdout)."""
    out = io.StringIO()
    rc = main(list(argv), out)
    return rc, out.getvalue()


def emu_proc(*argv: str, env: dict[str, str] | None = None,
             **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``emu`` as a subprocess (needed for env-var test hooks and kills)."""
    return subprocess.run([sys.executable, "-m", "emu", *argv], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300, **kw)


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
