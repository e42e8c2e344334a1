"""``emu sweep --shard K/N`` and ``emu merge``: disjoint shards that cover the grid, and
merged stores equal to the unsharded sweep's, summary byte for byte."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from emu.runs.shards import Shard, bucket, parse_shard
from emu.runs.sweep import Grid, parse_variant, units

from sweep_helpers import dump, emu, query

GRID = ["A", "E", "F", "--len", "1000,4096", "--src-align", "0x7e0", "--faults", "mc,pf",
        "--step", "8"]


def test_the_hash_is_fixed() -> None:
    """BLAKE2b of the key, not Python's salted hash(): pinned so it never moves."""
    assert [bucket(k, 7) for k in ("a", "b", "c", "A||x")] == [2, 5, 1, 1]


def test_shards_are_disjoint_and_cover_the_grid() -> None:
    g = Grid(variants=tuple(parse_variant(v, None) for v in "AEF"), lengths=(1000, 4096),
             src_aligns=(0x7E0,), kinds=("mc", "pf"), step=8)
    every = units(g.cases())
    for n in (1, 2, 3, 7):
        parts = [[u.id for u in every if Shard(k, n).owns(u.case.id)] for k in range(1, n + 1)]
        assert sorted(i for p in parts for i in p) == [u.id for u in every]
        if n > 1:
            assert all(parts)        # every shard gets work on a grid this size


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "2/-1"])
def test_bad_shard_is_one_line_and_exit_2(text: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="K/N"):
        parse_shard(text)
    rc, out = emu("sweep", "A", "--len", "64", "--shard", text)
    err = capsys.readouterr().err
    assert rc == 2 and out == "" and err.count("\n") == 1 and "K/N" in err


def test_merged_shards_are_the_unsharded_sweep(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    whole = tmp_path / "whole.db"
    rc, summary = emu("sweep", *GRID, "--results", str(whole), "--json", "--jobs", "2")
    assert rc == 0
    parts = []
    for k in (1, 2, 3):
        p = tmp_path / f"shard{k}.db"
        rc, _ = emu("sweep", *GRID, "--results", str(p), "--shard", f"{k}/3", "--json",
                    "--jobs", "1")
        assert rc == 0
        parts.append(p)
    counts = [query(p, "SELECT COUNT(*) FROM runs")[0][0] for p in parts]
    assert sum(counts) == query(whole, "SELECT COUNT(*) FROM runs")[0][0] and all(counts)
    merged = tmp_path / "merged.db"
    rc, text = emu("merge", *map(str, parts), "-o", str(merged))
    assert rc == 0 and "shards 1/3, 2/3, 3/3" in text
    assert dump(merged) == dump(whole)
    # the summary of the merged store, through the unsharded command: byte-identical
    rc, again = emu("sweep", *GRID, "--results", str(merged), "--resume", "--json")
    assert rc == 0 and again == summary
    # overlap that agrees is accepted (a shard merged twice, or with the whole store)
    twice = tmp_path / "twice.db"
    assert emu("merge", str(parts[0]), str(whole), str(parts[0]), "-o", str(twice))[0] == 0
    assert dump(twice) == dump(whole)
    capsys.readouterr()


def test_merge_refuses_other_grids_conflicts_and_existing_output(tmp_path: Path,
                                                                 capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    assert emu("sweep", "E", "--len", "256", "--results", str(a), "--shard", "1/2",
               "--json")[0] == 0
    assert emu("sweep", "E", "--len", "512", "--results", str(b), "--json")[0] == 0
    capsys.readouterr()

    def refused(*argv: str, msg: str) -> None:
        rc, out = emu("merge", *argv)
        err = capsys.readouterr().err
        assert rc == 2 and out == "" and err.count("\n") == 1 and msg in err, err

    refused(str(a), str(b), "-o", str(tmp_path / "m.db"), msg="a different grid")
    assert not (tmp_path / "m.db").exists()
    bad = tmp_path / "bad.db"
    shutil.copy(a, bad)
    db = sqlite3.connect(bad)
    db.execute("UPDATE runs SET return_value = 7 WHERE id = (SELECT MIN(id) FROM runs)")
    db.commit()
    db.close()
    refused(str(a), str(bad), "-o", str(tmp_path / "m.db"), msg="differs from the same run")
    refused(str(a), "-o", str(b), msg="exists")
    refused(str(tmp_path / "none.db"), "-o", str(tmp_path / "m.db"), msg="no such store")
    (tmp_path / "junk.db").write_text("junk")
    refused(str(tmp_path / "junk.db"), "-o", str(tmp_path / "m.db"), msg="not an emu sweep")
    # a shard's store resumes as that shard only
    rc, _ = emu("sweep", "E", "--len", "256", "--results", str(a), "--shard", "2/2",
                "--resume")
    err = capsys.readouterr().err
    assert rc == 2 and "holds shard 1/2, not shard 2/2" in err
