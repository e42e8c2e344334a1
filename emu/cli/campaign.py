"""``emu merge`` (shard stores → one store) and ``emu campaign`` (a sweep over a revision
range of a kernel tree)."""

from __future__ import annotations

import argparse
from typing import IO

from emu.build.sources import COPY_USER
from emu.cli import common, sweep
from emu.render import report


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mg = sub.add_parser("merge", help="combine the results stores of a sweep's shards "
                        "(emu sweep --shard K/N) into one store")
    mg.add_argument("stores", nargs="+", help="results stores of one sweep (same grid)")
    mg.add_argument("-o", "--output", required=True,
                    help="the merged store (a new file; an existing one is never overwritten)")
    mg.add_argument("--json", action="store_true", help="print what was merged as JSON")
    mg.set_defaults(func=cmd_merge)

    cp = sub.add_parser("campaign", help="sweep every revision of a kernel tree that touched "
                        "the file, and report the outcome classes per revision, CPU model "
                        "and era, and where each appeared or went away")
    cp.add_argument("range", metavar="A..B", help="revision range of --tree (A is the "
                    "baseline; then every commit of A..B that touched --file)")
    cp.add_argument("--tree", metavar="DIR", required=True, help="the kernel git tree")
    cp.add_argument("--file", metavar="PATH", default=COPY_USER,
                    help=f"the file emu reads (default {COPY_USER})")
    cp.add_argument("--patch", metavar="FILE", action="append", default=[],
                    help="apply to every revision first (repeat for a series)")
    cp.add_argument("--era", help="era rules for every revision (default: detected per "
                    "revision)")
    cp.add_argument("--assembler", default="gas", help="gas (default) or keystone")
    sweep.grid_options(cp)
    sweep.run_options(cp)
    cp.add_argument("--json", action="store_true", help="print the report as JSON")
    cp.set_defaults(func=cmd_campaign)


def cmd_campaign(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.build.resolve import parse_spec
    from emu.runs import campaign
    # parse_spec checks the era key and the assembler the way every subcommand does
    probe = parse_spec("HEAD", tree=a.tree, patches=a.patch, era=a.era,
                       assembler=a.assembler)
    revs = campaign.revision_range(a.tree, a.range, a.file, patches=probe.patches,
                                   era=probe.era, assembler=probe.assembler)
    grid = sweep.grid_of(a, tuple(r.variant for r in revs), sweep.parse_step(a.step))
    summary, rep = sweep.run_grid(a, grid, use=lambda _s, done: campaign.report(grid, revs,
                                                                                 done()))
    assert rep is not None
    rep.update(tree=a.tree, range=a.range, file=a.file, cases=summary["cases"],
               pending=summary["pending"])
    if a.json:
        out.write(report.dumps(rep))
    else:
        report.campaign_report(rep, out)
    return sweep.interrupted(a, summary)


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

