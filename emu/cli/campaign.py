"""``emu merge`` (shard stores → one store) and ``emu campaign`` (a sweep over a revision
range of a kernel tree)."""

from __future__ import annotations

import argparse
from typing import IO

from emu.cli import common
from emu.render import report


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mg = sub.add_parser("merge", help="combine the results stores of a sweep's shards "
                        "(emu sweep --shard K/N) into one store")
    mg.add_argument("stores", nargs="+", help="results stores of one sweep (same grid)")
    mg.add_argument("-o", "--output", required=True,
                    help="the merged store (a new file; an existing one is never overwritten)")
    mg.add_argument("--json", action="store_true", help="print what was merged as JSON")
    mg.set_defaults(func=cmd_merge)


def cmd_merge(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.runs.shards import merge
    info = merge(a.stores, a.output)
    if a.json:
        out.write(report.dumps(info))
        return 0
    marks = [s for s in info["shards"] if s]
    shards = f" (shards {', '.join(marks)})" if marks else ""
    overlap = (f", {info['overlap']} identical runs found in more than one store"
               if info["overlap"] else "")
    out.write(f"merged {info['stores']} store(s){shards} into {a.output}: {info['runs']} "
              f"runs, {info['cases']} cases{overlap}\n"
              "the summary: the same emu sweep command without --shard, with "
              f"--results {a.output} --resume\n")
    return 0

