"""make bench-sweep: time the full catalog sweep.

The catalog sweep is every era × routine (× the CPU paths era F's ALTERNATIVEs choose from) ×
lengths 0..128 and 4096 × 8×8 source/destination alignments × every byte offset × {#MC on the
line holding the offset, #PF on the user page holding it}, copy from user.  That is tens of
millions of cases, but every offset in one line (or page) is the same machine input, so — as
``emu sweep`` does — each distinct input runs once (with fast-forward) and its outcome class is
counted once per offset it stands for.  Work is spread over a 'spawn' process pool by
(variant, routine, CPU, length); each worker reports its peak RSS.

Prints cases, distinct runs, wall time, cases/s, runs/s and the largest worker RSS, and the
outcome-class counts per era.  Targets (issue 8): under 5 minutes on 2 cores, ≤ 150 MB per
worker.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from collections import Counter

LENGTHS = tuple(range(0, 129)) + (4096,)
ALIGNS = tuple(range(8))


def units() -> list[tuple[str, str, str, int]]:
    from emu.kernel.eras import ERAS
    out = []
    for era in ERAS.values():
        for r in era.routines:
            cpus = (("none", "fsrm") if r.name == "copy_user_generic" else
                    ("none", "erms") if era.modern else ("none",))
            for cpu in cpus:
                for n in LENGTHS:
                    out.append((era.key, r.name, cpu, n))
    return out


def work(unit: tuple[str, str, str, int]) -> tuple[str, Counter[str], int, int, int]:
    from emu.core import layout as L
    from emu.kernel.eras import CPUS, ERAS
    from emu.core.machine import Buffers
    from emu.runs.sweep import classify
    from emu.build.target import era_target
    era_key, routine, cpu, n = unit
    era = ERAS[era_key]
    t = era_target(era, CPUS[cpu])
    r = era.routine(routine)
    counts: Counter[str] = Counter()
    runs = cases = 0
    for sa in ALIGNS:
        for da in ALIGNS:
            clean = Buffers("from", n, sa, da)
            if n == 0:
                counts[classify(t.run(r, clean), "from")] += 1
                runs += 1
                cases += 1
                continue
            for kind in ("mc", "pf"):
                unit_size = L.LINE if kind == "mc" else L.PAGE
                src = clean.src
                groups: Counter[int] = Counter((src + off) // unit_size * unit_size
                                               for off in range(n))
                for start, weight in groups.items():
                    off = max(start - clean.src, 0)
                    b = (Buffers("from", n, sa, da, poison=(off,)) if kind == "mc" else
                         Buffers("from", n, sa, da, unmapped=(off,)))
                    counts[classify(t.run(r, b, fast_forward=True), "from")] += weight
                    runs += 1
                    cases += weight
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return era_key, counts, runs, cases, rss_kb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="lengths 0..16 and 4096 only")
    a = ap.parse_args()
    todo = units()
    if a.quick:
        todo = [u for u in todo if u[3] <= 16 or u[3] == 4096]
    todo.sort(key=lambda u: -u[3])           # long units first, for an even finish
    t0 = time.perf_counter()
    per_era: dict[str, Counter[str]] = {}
    runs = cases = rss = 0
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for era_key, counts, r, c, kb in pool.imap_unordered(work, todo, chunksize=4):
            per_era.setdefault(era_key, Counter()).update(counts)
            runs += r
            cases += c
            rss = max(rss, kb)
    wall = time.perf_counter() - t0
    print(f"catalog sweep: {len(todo)} units, {cases} cases, {runs} distinct runs, "
          f"{a.jobs} workers")
    print(f"wall {wall:.1f} s, {cases / wall:.0f} cases/s, {runs / wall:.0f} runs/s, "
          f"largest worker RSS {rss / 1024:.0f} MB")
    for era_key in sorted(per_era):
        row = ", ".join(f"{k} {v}" for k, v in sorted(per_era[era_key].items()))
        print(f"  {era_key}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
