"""The sweep results store: one SQLite file, one row per distinct machine run.

Every byte of a 64-byte line poisons the same line and every byte of a page unmaps the same
page, so a sweep's cases fall into *runs*: sets of offsets that give the machine the same
input and therefore the same outcome.  The store keeps each run once, with the offsets it
stands for as arithmetic spans, instead of one record per case — the seed sweep's 24,576
cases are 390 runs; the 38 M-case catalog about 606 k.

Schema (``sqlite3 FILE .schema``)::

    meta(key, value)           -- format, emu version, the sweep's grid (canonical JSON)
    runs(id, variant, era, routine, cpu, direction, length, src_align, dst_align, kind,
         poison, unmapped,     -- of the run's first case, e.g. '2400' or '2400,2432'
         cases,                -- how many cases (offsets) the run stands for
         class, state, return_value, exact, error, bytes_copied, mc, pf, tail_retry,
         message)
    violations(run, pos, name) -- the run's contract violations, in the oracle's order
    offsets(run, lo, hi, step) -- the offsets lo, lo+step, ..., hi the run stands for
    cases                      -- a view: runs joined with every offset (one row per case)

``runs.id`` is the run's position in the grid's case order (offsets innermost), so the same
sweep gives the same rows whatever the worker count or finishing order.  Writes happen in
transactions of a few hundred milliseconds: a run and its offsets are committed together,
so a killed sweep leaves whole runs only, and ``--resume`` reruns exactly the runs that are
missing.  The grid is stored, and a store made by another sweep is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emu.errors import InputError, UsageError

FORMAT = "emu-sweep-store 1"
#: The meta key of a shard's store: ``K/N`` (absent from unsharded and merged stores).
SHARD_KEY = "shard"
_MAGIC = b"SQLite format 3\x00"
#: Largest store ``verify`` runs SQLite's quick_check on (it reads the whole file).
QUICK_CHECK_MAX = 512 << 20
#: Seconds between commits while a sweep runs (what a SIGKILL can cost).
COMMIT_EVERY = 0.5

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE runs(
    id INTEGER PRIMARY KEY,
    variant TEXT NOT NULL, era TEXT, routine TEXT NOT NULL, cpu TEXT NOT NULL,
    direction TEXT NOT NULL, length INTEGER NOT NULL, src_align INTEGER NOT NULL,
    dst_align INTEGER NOT NULL, kind TEXT NOT NULL, poison TEXT NOT NULL,
    unmapped TEXT NOT NULL, cases INTEGER NOT NULL,
    class TEXT NOT NULL, state TEXT, return_value INTEGER, exact INTEGER, error INTEGER,
    bytes_copied INTEGER, mc INTEGER NOT NULL, pf INTEGER NOT NULL,
    tail_retry INTEGER NOT NULL, message TEXT);
CREATE TABLE violations(run INTEGER NOT NULL REFERENCES runs(id), pos INTEGER NOT NULL,
    name TEXT NOT NULL, PRIMARY KEY(run, pos)) WITHOUT ROWID;
CREATE TABLE offsets(run INTEGER NOT NULL REFERENCES runs(id), lo INTEGER NOT NULL,
    hi INTEGER NOT NULL, step INTEGER NOT NULL, PRIMARY KEY(run, lo)) WITHOUT ROWID;
CREATE VIEW cases AS
    WITH RECURSIVE o(run, offset, hi, step) AS (
        SELECT run, lo, hi, step FROM offsets
        UNION ALL SELECT run, offset + step, hi, step FROM o WHERE offset + step <= hi)
    SELECT runs.*, o.offset AS offset FROM o JOIN runs ON runs.id = o.run;
"""

_RUN_COLS = ("id", "variant", "era", "routine", "cpu", "direction", "length", "src_align",
             "dst_align", "kind", "poison", "unmapped", "cases", "class", "state",
             "return_value", "exact", "error", "bytes_copied", "mc", "pf", "tail_retry",
             "message")
#: The columns ``summary_rows`` gives, in this order.
SUMMARY_COLUMNS = ("id", "variant", "era", "routine", "cpu", "direction", "length",
                   "src_align", "dst_align", "kind", "poison", "unmapped", "cases", "class",
                   "message")
#: The record fields a run row holds (the rest of a JSON record is the case).
_OUTCOME = ("class", "state", "return_value", "exact", "error", "bytes_copied", "mc", "pf",
            "tail_retry", "message")


def spans(offsets: Sequence[int]) -> list[tuple[int, int, int]]:
    """Sorted offsets as arithmetic spans ``(lo, hi, step)``: [0,1,2,3,8] → (0,3,1), (8,8,1).

    Args:
        offsets: the offsets of one run, in any order, without duplicates.

    Returns:
        The fewest spans a greedy left-to-right pass finds; ``expand`` inverts it.
    """
    out: list[tuple[int, int, int]] = []
    xs = sorted(offsets)
    i = 0
    while i < len(xs):
        lo = xs[i]
        if i + 1 == len(xs):
            out.append((lo, lo, 1))
            break
        step = xs[i + 1] - lo
        j = i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        out.append((lo, xs[j], step))
        i = j + 1
    return out


def expand(sp: Iterable[tuple[int, int, int]]) -> list[int]:
    """The offsets of spans, ascending."""
    return sorted(o for lo, hi, step in sp for o in range(lo, hi + 1, step))


def _canonical(grid: dict[str, Any]) -> str:
    return json.dumps(grid, sort_keys=True, separators=(",", ":"))


def grid_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """The first grid key whose values differ, as a phrase for an error message."""
    for k in sorted(set(mine) | set(theirs)):
        if mine.get(k) != theirs.get(k):
            return f"{k} {json.dumps(theirs.get(k))} in the store, {json.dumps(mine.get(k))} here"
    return "the grids differ"


def read(path: str | Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Open a store read-only: its grid and the outcome record of each stored run.

    Raises:
        InputError: the file is not an emu sweep store.
    """
    p = Path(path)
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if meta.get("format") != FORMAT:
                raise InputError(f"{p}: not an emu sweep store")
            view = Store.__new__(Store)
            view.db, view.path = db, p
            return json.loads(meta["grid"]), view.records()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise InputError(f"{p}: not an emu sweep store ({e})") from None


class Store:
    """A sweep's results in SQLite (``path``), or in memory when ``path`` is None.

    Invariants: a run row, its violations and its offsets are written in one transaction;
    a run id is written at most once (``add`` ignores a run that is there); an existing file
    is opened only with ``resume`` and only if it is a store of the same grid, so nothing
    the user has is overwritten.
    """

    #: The columns of a ``runs`` row, in order.
    RUN_COLUMNS = _RUN_COLS

    def __init__(self, path: str | None, grid: dict[str, Any], *, resume: bool,
                 emu_version: str = "", shard: str | None = None) -> None:
        self.path = Path(path) if path else None
        self.shard = shard
        self._last_commit = time.monotonic()
        self._pending = 0
        self._partial = False
        if self.path is None:
            if resume:
                raise UsageError("--resume needs --results FILE")
            self.db = sqlite3.connect(":memory:", isolation_level=None)
            self._create(grid, emu_version)
            self.db.execute("BEGIN")
            return
        if self.path.suffix in (".jsonl", ".json"):
            raise UsageError(f"{self.path}: --results writes an SQLite store (e.g. "
                             f"{self.path.with_suffix('.db').name}); --jsonl FILE exports "
                             "JSON lines")
        if self.path.is_dir():
            raise UsageError(f"{self.path}: is a directory")
        exists = self.path.exists()
        if exists and not resume:
            raise UsageError(f"{self.path} exists; use --resume to continue it, or name "
                             "another --results file")
        if exists:
            self._check_header()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot open: {e}") from None
        if exists:   # read before anything is written: a foreign file stays as it was
            self._check_grid(grid)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot open: {e}") from None
        if not exists:
            self._create(grid, emu_version)
        self.db.execute("BEGIN")

    # ---- opening --------------------------------------------------------------------------

    def _check_header(self) -> None:
        assert self.path is not None
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(_MAGIC))
        except OSError as e:
            raise InputError(f"{self.path}: cannot read: {e.strerror}") from None
        if head != _MAGIC:
            raise InputError(f"{self.path}: not an emu sweep store (SQLite); refusing to "
                             "resume into it")

    def _check_grid(self, grid: dict[str, Any]) -> None:
        try:
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error:
            raise InputError(f"{self.path}: not an emu sweep store; refusing to resume "
                             "into it") from None
        if meta.get("format") != FORMAT:
            raise InputError(f"{self.path}: store format {meta.get('format')!r}, not "
                             f"{FORMAT!r}; refusing to resume into it")
        if meta.get("grid") != _canonical(grid):
            try:
                theirs = json.loads(meta.get("grid", "{}"))
                if not isinstance(theirs, dict):
                    raise ValueError
            except ValueError:
                raise InputError(f"{self.path}: not an emu sweep store (its grid is not "
                                 "JSON); refusing to resume into it") from None
            raise UsageError(f"{self.path}: made by a different sweep "
                             f"({grid_difference(grid, theirs)}); --resume continues the "
                             "same sweep only")
        if meta.get(SHARD_KEY) != self.shard:
            def name(s: str | None) -> str:
                return f"shard {s}" if s else "the whole grid"
            raise UsageError(f"{self.path}: holds {name(meta.get(SHARD_KEY))}, not "
                             f"{name(self.shard)}; --resume continues the same sweep only")

    def _create(self, grid: dict[str, Any], emu_version: str) -> None:
        try:   # schema and meta in one transaction: a store is complete or absent
            self.db.execute("BEGIN")
            for stmt in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(stmt)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", FORMAT), ("grid", _canonical(grid)), ("emu_version", emu_version)]
                + ([(SHARD_KEY, self.shard)] if self.shard else []))
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot write: {e}") from None

    def verify(self, *, max_cases: int, variants: set[str], kinds: set[str]) -> None:
        """Check a resumed store's rows before any is trusted: an intact file (SQLite's
        ``quick_check``, for files up to ``QUICK_CHECK_MAX`` bytes), runs of this grid's
        variants and kinds only, offsets that add up to each run's case count, fault lists
        that are numbers, and no more cases than the grid has.

        Raises:
            InputError: the first thing that is wrong, in one line.
        """
        where = f"{self.path}: not a store emu can resume"
        try:
            if self.path is not None and self.path.stat().st_size <= QUICK_CHECK_MAX:
                res = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if res != "ok":
                    raise InputError(f"{where}: the file is damaged ({res})")
            bad = self.db.execute(
                "SELECT id, variant, kind FROM runs WHERE variant NOT IN (SELECT value FROM "
                "json_each(?)) OR kind NOT IN (SELECT value FROM json_each(?)) LIMIT 1",
                (json.dumps(sorted(variants)), json.dumps(sorted(kinds)))).fetchone()
            if bad is not None:
                raise InputError(f"{where}: run {bad[0]} is of variant {bad[1]!r}, kind "
                                 f"{bad[2]!r}, which this sweep does not have")
            bad = self.db.execute(
                "SELECT id FROM runs WHERE poison GLOB '*[^0-9,]*' OR unmapped GLOB "
                "'*[^0-9,]*' OR cases < 1 OR cases != (SELECT COALESCE(SUM((hi - lo) / step "
                "+ 1), 0) FROM offsets WHERE run = runs.id AND step > 0 AND hi >= lo) "
                "LIMIT 1").fetchone()
            if bad is not None:
                raise InputError(f"{where}: run {bad[0]} is malformed (its fault offsets or "
                                 "its case count)")
            n = self.stored_cases()
        except sqlite3.Error as e:
            raise InputError(f"{where}: {e}") from None
        if n > max_cases:
            raise InputError(f"{where}: it holds {n} cases, more than the sweep's "
                             f"{max_cases}")

    # ---- reading --------------------------------------------------------------------------

    def done(self) -> set[int]:
        """The ids of the runs already stored."""
        return {r for (r,) in self.db.execute("SELECT id FROM runs")}

    def done_ids(self) -> array:  # type: ignore[type-arg]
        """The stored run ids, ascending, as a compact array (8 bytes a run)."""
        with self._errors():
            return array("q", (r for (r,) in self.db.execute("SELECT id FROM runs ORDER BY id")))

    def stored_cases(self) -> int:
        """How many cases the stored runs stand for."""
        with self._errors():
            return int(self.db.execute("SELECT COALESCE(SUM(cases), 0) FROM runs").fetchone()[0])

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A damaged file found while reading is one line, not a traceback."""
        try:
            yield
        except sqlite3.Error as e:
            raise InputError(f"{self.path or 'results store'}: cannot read: {e}") from None

    def iter_runs(self) -> Iterator[tuple[int, int, dict[str, Any], dict[str, Any]]]:
        """Every stored run in id order, streamed (not held in memory): its id, how many
        cases it stands for, its first case's fields (``sweep.Case`` names) and its outcome
        record."""
        with self._errors():
            yield from self._iter_runs()

    def _rows(self, cols: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
        """Every run's ``cols`` (the first must be ``id``) in id order with its violation
        names, both tables streamed side by side."""
        viol = self.db.execute("SELECT run, name FROM violations ORDER BY run, pos")
        pending = next(viol, None)
        for row in self.db.execute(f"SELECT {', '.join(cols)} FROM runs ORDER BY id"):
            rid = row[0]
            names: list[str] = []
            while pending is not None and pending[0] <= rid:
                if pending[0] == rid:
                    names.append(pending[1])
                pending = next(viol, None)
            yield row, names

    def _iter_runs(self) -> Iterator[tuple[int, int, dict[str, Any], dict[str, Any]]]:
        for row, names in self._rows(_RUN_COLS):
            r = dict(zip(_RUN_COLS, row))
            rec = {k: r[k] for k in _OUTCOME}
            rec["tail_retry"] = bool(rec["tail_retry"])
            rec["violations"] = names
            case = {k: r[k] for k in ("variant", "era", "routine", "cpu", "direction",
                                      "length", "src_align", "dst_align", "kind")}
            case["poison"] = tuple(int(x) for x in r["poison"].split(",") if x)
            case["unmapped"] = tuple(int(x) for x in r["unmapped"].split(",") if x)
            yield r["id"], r["cases"], case, rec

    def summary_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every stored run in id order, streamed, as the summary reads it: a tuple of
        ``SUMMARY_COLUMNS`` (poison and unmapped as stored, comma-separated) followed by the
        list of its violation names.  Cheaper than ``iter_runs`` (no dicts per run)."""
        with self._errors():
            for row, names in self._rows(SUMMARY_COLUMNS):
                yield (*row, names)

    def records(self) -> dict[int, dict[str, Any]]:
        """Every stored run's outcome as the fields of a JSON record, by run id."""
        out: dict[int, dict[str, Any]] = {}
        cols = ", ".join(_OUTCOME)
        for row in self.db.execute(f"SELECT id, {cols} FROM runs ORDER BY id"):
            rec = dict(zip(_OUTCOME, row[1:]))
            rec["tail_retry"] = bool(rec["tail_retry"])
            rec["violations"] = []
            out[row[0]] = rec
        for run, name in self.db.execute("SELECT run, name FROM violations ORDER BY run, pos"):
            out[run]["violations"].append(name)
        return out

    def offsets(self, run: int) -> list[int]:
        return expand(self.db.execute("SELECT lo, hi, step FROM offsets WHERE run = ?", (run,)))

    # ---- writing --------------------------------------------------------------------------

    def add(self, run: int, case: Any, offsets: Sequence[int], rec: dict[str, Any], *,
            offset_spans: Sequence[tuple[int, int, int]] | None = None) -> None:
        """Store one run: ``case`` is its first case (``sweep.Case``), ``offsets`` all the
        offsets it stands for (or ``offset_spans``, already as spans, with ``offsets`` empty),
        ``rec`` its JSON record (``sweep.record``)."""
        sp = list(offset_spans) if offset_spans is not None else spans(offsets)
        count = sum((hi - lo) // step + 1 for lo, hi, step in sp)
        row = (run, case.variant, case.era, case.routine, case.cpu, case.direction,
               case.length, case.src_align, case.dst_align, case.kind,
               ",".join(map(str, case.poison)), ",".join(map(str, case.unmapped)),
               count, rec["class"], rec["state"], rec["return_value"], rec["exact"],
               rec["error"], rec["bytes_copied"], rec["mc"], rec["pf"], int(rec["tail_retry"]),
               rec["message"])
        self._insert(row, rec["violations"], sp)

    def add_row(self, row: Sequence[Any], violations: Sequence[str],
                offset_spans: Sequence[tuple[int, int, int]]) -> None:
        """Store one run as another store holds it (``merge``): a ``runs`` row in
        ``RUN_COLUMNS`` order, its violation names in order, its offset spans."""
        self._insert(tuple(row), violations, offset_spans)

    def _insert(self, row: tuple[Any, ...], violations: Sequence[str],
                offset_spans: Sequence[tuple[int, int, int]]) -> None:
        """One run's rows, all or nothing: inside a savepoint, so that an exception raised
        half-way (Ctrl-C's KeyboardInterrupt can land between any two statements) leaves
        no run without its offsets for ``commit`` to make durable (``_drop_partial``)."""
        db = self.db
        try:
            self._partial = True
            db.execute("SAVEPOINT add_run")
            cur = db.execute(f"INSERT OR IGNORE INTO runs VALUES "
                             f"({', '.join('?' * len(_RUN_COLS))})", row)
            if cur.rowcount:
                if violations:
                    db.executemany("INSERT INTO violations VALUES (?, ?, ?)",
                                   [(row[0], i, v) for i, v in enumerate(violations)])
                db.executemany("INSERT INTO offsets VALUES (?, ?, ?, ?)",
                               [(row[0], *s) for s in offset_spans])
            db.execute("RELEASE add_run")
            self._partial = False
        except sqlite3.Error as e:
            self._drop_partial()
            raise InputError(f"{self.path}: cannot write: {e}") from None
        self._pending += 1
        self.tick()

    def _drop_partial(self) -> None:
        """Undo the rows of a run whose ``_insert`` did not finish (none if it did: the
        savepoint is then released and rolling back to it fails, which is fine)."""
        if self._partial:
            self._partial = False
            try:
                self.db.execute("ROLLBACK TO add_run")
                self.db.execute("RELEASE add_run")
            except sqlite3.Error:
                pass

    def tick(self) -> None:
        """Commit if runs are waiting and ``COMMIT_EVERY`` has passed: for a caller whose
        records stop coming for a while (workers busy with long runs), so that what has
        finished does not wait for the next ``add`` to become durable."""
        if self._pending and time.monotonic() - self._last_commit >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        """Make every added run durable (a SIGKILL after this loses none of them); a run
        whose rows were being written when an exception struck is dropped first."""
        self._drop_partial()
        if self.db.in_transaction:
            try:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
            except sqlite3.Error as e:
                raise InputError(f"{self.path}: cannot write: {e}") from None
        self._last_commit = time.monotonic()
        self._pending = 0

    def close(self, *, compact: bool = False) -> None:
        """Commit, optionally compact (VACUUM: rows in id order, no free pages), close."""
        self._drop_partial()
        if self.path is not None:
            if self.db.in_transaction:
                self.db.execute("COMMIT")
            if compact:
                self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
