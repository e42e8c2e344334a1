"""Deterministic shards of a sweep, and merging the shards' stores back into one.

A shard ``K/N`` (1 ≤ K ≤ N) is the set of runs whose key hashes to K − 1 modulo N.  The key
is the run's first case id (``Case.id``: variant, era, routine, CPU, direction, length,
alignments, fault kind and offset as typed), and the hash is BLAKE2b, never Python's
``hash()`` (salted per process): the same command names the same shard on every machine,
in every CI job, under every Python version.  A whole run is in one shard, so a shard's
store holds whole rows of the unsharded store (same ids, same offsets), and the union of
the N shard stores is the unsharded store row for row.

``merge`` combines shard stores (or any stores of one grid: a resumed half, a rerun):

1. every input must be an emu sweep store of the same grid (the canonical grid JSON);
2. a run present in several inputs must be identical in all of them (outcome, violations,
   offsets); otherwise the merge is refused and the run named;
3. the output is a new file, written through ``Store`` and compacted; it is never an
   existing file, so nothing the user has is overwritten.

The merged store has no shard mark, so ``emu sweep … --results MERGED --resume`` (the
unsharded command) runs only what is missing and prints the summary of the whole grid,
byte for byte the summary an unsharded sweep prints.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.errors import InputError, UsageError
from emu.runs.store import FORMAT, SHARD_KEY, Store, grid_difference


@dataclass(frozen=True, slots=True)
class Shard:
    """The K-th of N disjoint parts of a grid (``index`` is K, counted from 1)."""

    index: int
    count: int

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the run whose first case id is ``key`` belongs to this shard."""
        return bucket(key, self.count) == self.index - 1


def bucket(key: str, count: int) -> int:
    """``key``'s shard, 0 … count − 1: BLAKE2b-64 of the UTF-8 key, modulo ``count``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> Shard:
    """``"2/8"`` → ``Shard(2, 8)``.

    Raises:
        UsageError: not ``K/N`` with 1 ≤ K ≤ N.
    """
    k, sep, n = text.partition("/")
    try:
        index, count = int(k), int(n)
    except ValueError:
        index = count = 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard '{text}': give K/N with 1 <= K <= N (e.g. 2/8)")
    return Shard(index, count)


# ---- merging stores --------------------------------------------------------------------

_RUN_QUERY = "SELECT * FROM runs ORDER BY id"


def _open(path: Path) -> tuple[sqlite3.Connection, dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: no such store")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.Error as e:
        raise InputError(f"{path}: not an emu sweep store ({e})") from None
    if meta.get("format") != FORMAT:
        db.close()
        raise InputError(f"{path}: not an emu sweep store")
    return db, meta


def _runs(db: sqlite3.Connection) -> dict[int, tuple[Any, ...]]:
    """Every run of a store with its violations and offsets: id → (row, names, spans)."""
    rows: dict[int, tuple[Any, ...]] = {r[0]: r for r in db.execute(_RUN_QUERY)}
    names: dict[int, list[str]] = {}
    for run, name in db.execute("SELECT run, name FROM violations ORDER BY run, pos"):
        names.setdefault(run, []).append(name)
    spans: dict[int, list[tuple[int, int, int]]] = {}
    for run, lo, hi, step in db.execute("SELECT run, lo, hi, step FROM offsets "
                                        "ORDER BY run, lo"):
        spans.setdefault(run, []).append((lo, hi, step))
    return {i: (row, tuple(names.get(i, ())), tuple(spans.get(i, ())))
            for i, row in rows.items()}


def merge(paths: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Combine stores of one grid into a new store ``out`` (see the module docstring).

    Args:
        paths: the stores to merge (at least one).
        out: the new store; it must not exist.

    Returns:
        ``{"stores", "runs", "cases", "overlap", "shards"}``: inputs, runs and cases written,
        runs found in more than one input (identical), and the inputs' shard marks.

    Raises:
        UsageError: no input, ``out`` exists or is an input, the grids differ, or a run
            differs between two inputs.
        InputError: an input is not an emu sweep store.
    """
    if not paths:
        raise UsageError("merge: name the stores to merge")
    target = Path(out)
    if target.exists():
        raise UsageError(f"{target} exists; merge writes a new store (name another -o file)")
    if target.suffix in (".jsonl", ".json"):
        raise UsageError(f"{target}: merge writes an SQLite store (e.g. "
                         f"{target.with_suffix('.db').name})")
    merged: dict[int, tuple[Any, ...]] = {}
    where: dict[int, Path] = {}
    grid_text: str | None = None
    first: Path | None = None
    version = ""
    shards: list[str] = []
    overlap = 0
    for raw in paths:
        path = Path(raw)
        db, meta = _open(path)
        try:
            if grid_text is None:
                grid_text, first, version = meta["grid"], path, meta.get("emu_version", "")
            elif meta["grid"] != grid_text:
                diff = grid_difference(json.loads(grid_text), json.loads(meta["grid"]))
                raise UsageError(f"{path}: a different grid from {first} ({diff}); merge "
                                 "combines stores of one sweep only")
            shards.append(meta.get(SHARD_KEY, ""))
            for run, entry in _runs(db).items():
                have = merged.get(run)
                if have is None:
                    merged[run], where[run] = entry, path
                elif have != entry:
                    raise UsageError(f"{path}: run {run} differs from the same run in "
                                     f"{where[run]} ({_what_differs(have, entry)}); refusing "
                                     "to merge")
                else:
                    overlap += 1
        except sqlite3.Error as e:
            raise InputError(f"{path}: cannot read: {e}") from None
        finally:
            db.close()
    assert grid_text is not None
    store = Store(str(target), json.loads(grid_text), resume=False, emu_version=version)
    cases = 0
    try:
        for run in sorted(merged):
            row, names, sp = merged[run]
            store.add_row(row, names, sp)
            cases += row[12]
    finally:
        store.close(compact=True)
    return {"stores": len(paths), "runs": len(merged), "cases": cases, "overlap": overlap,
            "shards": shards}


def _what_differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> str:
    if a[0] != b[0]:
        cols = Store.RUN_COLUMNS
        for name, x, y in zip(cols, a[0], b[0]):
            if x != y:
                return f"{name} {x!r} against {y!r}"
    if a[1] != b[1]:
        return f"violations {list(a[1])} against {list(b[1])}"
    return "offsets differ"
