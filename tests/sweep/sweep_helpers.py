"""Helpers for the sweep/fuzz tests: run the CLI in-process or as a subprocess."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from emu.cli.main import main
from emu.runs import store
from emu.runs.sweep import Grid, case_records, parse_variant, units

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


def grid_of(g: dict[str, Any], era: str | None = None) -> Grid:
    """The Grid a store's ``meta.grid`` describes."""
    return Grid(variants=tuple(parse_variant(v, era) for v in g["variants"]),
                routines=tuple(g["routines"]), cpus=tuple(g["cpus"]),
                directions=tuple(g["directions"]), lengths=tuple(g["lengths"]),
                src_aligns=tuple(g["src_aligns"]), dst_aligns=tuple(g["dst_aligns"]),
                kinds=tuple(g["kinds"]), step=g["step"], offsets=tuple(g["offsets"]))


def read_results(path: Path, era: str | None = None) -> list[dict[str, Any]]:
    """Every case of a results store as a JSON-lines record, in grid order."""
    grid, outcomes = store.read(path)
    return list(case_records(units(grid_of(grid, era).cases()), outcomes))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """A query on a store, as sqlite3 would run it (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def runs_committed(path: Path) -> int:
    """Runs committed so far in a store being written (0 if it is not there yet)."""
    try:
        return query(path, "SELECT COUNT(*) FROM runs")[0][0] if path.exists() else 0
    except sqlite3.Error:
        return 0


def dump(path: Path) -> dict[str, Any]:
    """A store's contents (not its file bytes): meta without the shard mark, every table."""
    return {"meta": query(path, "SELECT key, value FROM meta WHERE key != 'shard' "
                                "ORDER BY key"),
            "runs": query(path, "SELECT * FROM runs ORDER BY id"),
            "violations": query(path, "SELECT * FROM violations ORDER BY run, pos"),
            "offsets": query(path, "SELECT * FROM offsets ORDER BY run, lo")}
