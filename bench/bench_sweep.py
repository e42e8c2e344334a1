"""make bench-sweep: time the full catalog sweep.

The catalog sweep is every era × routine (× the CPU paths era F's ALTERNATIVEs choose from) ×
lengths 0..128 and 4096 × 8×8 source/destination alignments × every byte offset × {#MC on the
line holding the offset, #PF on the user page holding it}, copy from user.  That is tens of
millions of cases, but every offset in one line (or page) is the same machine input, so — as
``emu sweep`` does — each distinct input runs once (with fast-forward) and its outcome class is
counted once per offset it stands for.  Work is spread over a 'spawn' process pool by
(variant, routine, CPU, length); each worker reports its peak RSS.

Prints cases, distinct runs, wall time, cases/s, runs/s and the largest worker RSS, and the
outcome-class counts per era.  Every distinct run is also written to an SQLite results store
(``emu.runs.store``, the format of ``emu sweep --results``) with the offsets it stands for,
and the store's size is printed.  Targets (issue 8): under 5 minutes on 2 cores, ≤ 150 MB per
worker.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
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


Run = tuple[int, object, list[tuple[int, int, int]], dict]


def work(job: tuple[int, tuple[str, str, str, int]]
         ) -> tuple[int, str, Counter[str], int, int, int, list[Run]]:
    from emu.core import layout as L
    from emu.kernel.eras import CPUS, ERAS
    from emu.core.machine import Buffers
    from emu.runs.sweep import Case, classify, record
    from emu.build.target import era_target
    index, (era_key, routine, cpu, n) = job
    stored: list[Run] = []
    era = ERAS[era_key]
    t = era_target(era, CPUS[cpu])
    r = era.routine(routine)
    counts: Counter[str] = Counter()
    runs = cases = 0
    for sa in ALIGNS:
        for da in ALIGNS:
            clean = Buffers("from", n, sa, da)
            if n == 0:
                o = t.run(r, clean)
                counts[classify(o, "from")] += 1
                case = Case(era_key, routine, cpu, "from", n, sa, da, "none", 0, (), ())
                stored.append((len(stored), case, [(0, 0, 1)], record(case, o)))
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
                    o = t.run(r, b, fast_forward=True)
                    counts[classify(o, "from")] += weight
                    case = Case(era_key, routine, cpu, "from", n, sa, da, kind, off,
                                b.poison, b.unmapped)
                    stored.append((len(stored), case, [(off, off + weight - 1, 1)],
                                   record(case, o)))
                    runs += 1
                    cases += weight
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return index, era_key, counts, runs, cases, rss_kb, stored


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="lengths 0..16 and 4096 only")
    ap.add_argument("--store", default=None,
                    help="results store to write (default: a temporary file, removed)")
    a = ap.parse_args()
    from emu.runs.store import Store
    todo = units()
    if a.quick:
        todo = [u for u in todo if u[3] <= 16 or u[3] == 4096]
    jobs = list(enumerate(todo))             # the index makes run ids independent of order
    jobs.sort(key=lambda j: -j[1][3])        # long units first, for an even finish
    tmp = tempfile.TemporaryDirectory(prefix="emu-bench-")
    path = a.store or os.path.join(tmp.name, "catalog.db")
    store = Store(path, {"catalog": "make bench-sweep", "units": len(todo),
                         "lengths": [u for u in LENGTHS], "aligns": list(ALIGNS),
                         "faults": ["mc", "pf"]}, resume=False)
    t0 = time.perf_counter()
    per_era: dict[str, Counter[str]] = {}
    runs = cases = rss = 0
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for index, era_key, counts, r, c, kb, stored in pool.imap_unordered(work, jobs,
                                                                             chunksize=4):
            per_era.setdefault(era_key, Counter()).update(counts)
            runs += r
            cases += c
            rss = max(rss, kb)
            for local, case, sp, rec in stored:
                store.add(index << 20 | local, case, (), rec, offset_spans=sp)
    wall = time.perf_counter() - t0
    store.close(compact=True)
    size = os.path.getsize(path)
    print(f"catalog sweep: {len(todo)} units, {cases} cases, {runs} distinct runs, "
          f"{a.jobs} workers")
    print(f"wall {wall:.1f} s, {cases / wall:.0f} cases/s, {runs / wall:.0f} runs/s, "
          f"largest worker RSS {rss / 1024:.0f} MB")
    print(f"results store: {size / 1e6:.1f} MB for {cases} cases in {runs} runs "
          f"({size / max(1, runs):.0f} B per run){'' if a.store else ' (temporary)'}")
    for era_key in sorted(per_era):
        row = ", ".join(f"{k} {v}" for k, v in sorted(per_era[era_key].items()))
        print(f"  {era_key}: {row}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
