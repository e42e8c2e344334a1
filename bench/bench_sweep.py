"""make bench-sweep: time the full catalog sweep.

The catalog sweep is every era × routine × CPU path (none, rep_good, erms, fsrm) × lengths
0..128, 4096, 16384 and 65536 × 8×8 source/destination alignments (those that fit the 64 KiB
buffer window: only 0/0 at 65536) × every byte offset × {#MC on the line holding the offset,
#PF on the user page holding it}, copy from user.  That is tens of
millions of cases, but every offset in one line (or page) is the same machine input, so — as
``emu sweep`` does — each distinct input runs once (with fast-forward) and its outcome class is
counted once per offset it stands for.  Work is spread over a 'spawn' process pool by
(variant, routine, CPU, length); each worker reports its peak RSS.

Prints cases, distinct runs, wall time, cases/s, runs/s and the largest worker RSS, the rates
of each part (lengths 0..128, 4096, 16384, 65536: runs per worker-second, so that a regression
in one part shows), and the outcome-class counts per era.  Every distinct run is also written to
an SQLite results store (``emu.runs.store``, the format of ``emu sweep --results``) with the
offsets it stands for, and the store's size is printed; CPU paths that share a run share its
row (the store's metadata lists them).  Targets (issue 19): under 5 minutes
on 2 cores, ≤ 150 MB per worker.  ``--quick`` runs lengths 0..16 and 4096 only.
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

LENGTHS = tuple(range(0, 129)) + (4096, 16384, 65536)
ALIGNS = tuple(range(8))
CPU_PATHS = ("none", "rep_good", "erms", "fsrm")


def part(n: int) -> str:
    """The part of the catalog a length belongs to (rates are printed per part)."""
    return "0..128" if n <= 128 else str(n)


Unit = tuple[str, str, str, int, int]


def units() -> list[Unit]:
    """(era, routine, CPU path, length, source alignment or -1 for all of them): lengths from
    4096 on are split by source alignment, so that a worker holds one alignment's runs."""
    from emu.core.layout import MAX_SPAN
    from emu.kernel.eras import ERAS
    out = []
    for era in ERAS.values():
        for r in era.routines:
            for cpu in CPU_PATHS:
                for n in LENGTHS:
                    for sa in (ALIGNS if n >= 4096 else (-1,)):
                        if sa + n <= MAX_SPAN:
                            out.append((era.key, r.name, cpu, n, sa))
    return out


def machine_inputs() -> dict[tuple[str, str], str]:
    """(era, CPU) → digest of everything the machine and the policy are given: the placed
    code bytes, the stubs, the exception table and the era settings.  CPU paths with the same
    digest are the same machine input for every case, so their runs are shared (eras A–E
    assemble byte-identical images on all four CPUs)."""
    import hashlib

    from emu.build.target import Settings
    from emu.kernel.eras import ERAS
    out = {}
    for era in ERAS.values():
        for cpu in CPU_PATHS:
            t = build_target(era.key, cpu)
            img = t.image
            h = hashlib.sha256(repr((Settings.of(era), t.machine.smap)).encode())
            for sec in img.sections:
                h.update(sec.addr.to_bytes(8, "little") + sec.data)
            h.update(repr(sorted(img.stubs.items())).encode())
            h.update(repr(list(img.extable)).encode())
            out[era.key, cpu] = h.hexdigest()
            t.machine.close()
    return out


_TARGET: list[object] = []      # this worker's current (key, Target): one machine at a time


def build_target(era_key: str, cpu: str):  # type: ignore[no-untyped-def]
    """A fresh target (its own machine) of an era's bundled source on a CPU path."""
    from pathlib import Path

    from emu.build.target import Settings, Target, assemble_image, read_source
    from emu.kernel.eras import CPUS, ERAS
    era = ERAS[era_key]
    name, settings = Path(era.path).name, Settings.of(era)
    img = assemble_image(read_source(era.path), name, settings, CPUS[cpu], "gas")
    return Target(img, settings, CPUS[cpu], name=name, catalog=era, era=era)


def target_for(era_key: str, cpu: str):  # type: ignore[no-untyped-def]
    """The target of (era, CPU), built afresh when the key changes and the previous one's
    machine closed: a worker holds one Unicorn instance, whatever the catalog's size."""
    if _TARGET and _TARGET[0][0] == (era_key, cpu):  # type: ignore[index]
        return _TARGET[0][1]  # type: ignore[index]
    if _TARGET:
        _TARGET.pop()[1].machine.close()  # type: ignore[index]
    t = build_target(era_key, cpu)
    _TARGET.append(((era_key, cpu), t))
    return t


Run = tuple[int, object, list[tuple[int, int, int]], dict]


def work(job: tuple[int, Unit]
         ) -> tuple[int, str, Counter[str], int, int, int, float, list[Run]]:
    from emu.core import layout as L
    from emu.core.machine import Buffers
    from emu.kernel.eras import ERAS
    from emu.runs.sweep import FAST_FORWARD_FROM, Case, classify, record
    t0 = time.process_time()
    index, (era_key, routine, cpu, n, only_sa) = job
    stored: list[Run] = []
    t = target_for(era_key, cpu)
    r = ERAS[era_key].routine(routine)
    counts: Counter[str] = Counter()
    runs = cases = 0
    for sa in (ALIGNS if only_sa < 0 else (only_sa,)):
        for da in ALIGNS:
            if max(sa, da) + n > L.MAX_SPAN:
                continue
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
                    o = t.run(r, b, fast_forward=b.length >= FAST_FORWARD_FROM)
                    counts[classify(o, "from")] += weight
                    case = Case(era_key, routine, cpu, "from", n, sa, da, kind, off,
                                b.poison, b.unmapped)
                    stored.append((len(stored), case, [(off, off + weight - 1, 1)],
                                   record(case, o)))
                    runs += 1
                    cases += weight
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return index, era_key, counts, runs, cases, rss_kb, time.process_time() - t0, stored


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="lengths 0..16 and 4096 only")
    ap.add_argument("--lengths", type=lambda v: {int(x) for x in v.split(",")},
                    help="only these lengths (comma list)")
    ap.add_argument("--store", default=None,
                    help="results store to write (default: a temporary file, removed)")
    a = ap.parse_args()
    from emu.runs.store import Store
    todo = units()
    digest = machine_inputs()
    if a.quick:
        todo = [u for u in todo if u[3] <= 16 or u[3] == 4096]
    if a.lengths:
        todo = [u for u in todo if u[3] in a.lengths]
    # Long units first, for an even finish; then by (era, CPU), so that each worker switches
    # targets (and machines) rarely.
    todo.sort(key=lambda u: (-u[3] if u[3] > 128 else 0, u[0], u[2], u[1], -u[3]))
    # Units with the same machine input share one run: the first stands for the others.
    same: dict[tuple[str, str, int, int], list[Unit]] = {}
    for u in todo:
        same.setdefault((digest[u[0], u[2]], u[1], u[3], u[4]), []).append(u)
    distinct = [group[0] for group in same.values()]
    members = {group[0]: group for group in same.values()}
    index = {u: i for i, u in enumerate(units())}   # run ids independent of order and filters
    tmp = tempfile.TemporaryDirectory(prefix="emu-bench-")
    path = a.store or os.path.join(tmp.name, "catalog.db")
    shared = sorted({(u[0], tuple(sorted({m[2] for m in g}))) for u, g in members.items()
                     if len(g) > 1})
    store = Store(path, {"catalog": "make bench-sweep", "units": len(todo),
                         "lengths": [u for u in LENGTHS], "aligns": list(ALIGNS),
                         "faults": ["mc", "pf"], "cpu_paths": list(CPU_PATHS),
                         "shared_cpu_paths": [[e, list(c)] for e, c in shared]},
                  resume=False)
    t0 = time.perf_counter()
    per_era: dict[str, Counter[str]] = {}
    runs = cases = rss = 0
    parts: dict[str, list[float]] = {}  # part → [units, distinct units, runs, cases, worker s]
    jobs = [(index[u], u) for u in distinct]
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for unit, (i, _, counts, r, c, kb, cpu_s, stored) in zip(
                distinct, pool.imap(work, jobs, chunksize=1)):
            group = members[unit]
            for era_key, *_ in group:
                per_era.setdefault(era_key, Counter()).update(counts)
            runs += r
            cases += c * len(group)
            rss = max(rss, kb)
            p = parts.setdefault(part(unit[3]), [0, 0, 0, 0, 0.0])
            p[0] += len(group)
            p[1] += 1
            p[2] += r
            p[3] += c * len(group)
            p[4] += cpu_s
            for local, case, sp, rec in stored:
                store.add(i << 20 | local, case, (), rec, offset_spans=sp)
    wall = time.perf_counter() - t0
    store.close(compact=True)
    size = os.path.getsize(path)
    print(f"catalog sweep: {len(todo)} units ({len(distinct)} distinct machine inputs), "
          f"{cases} cases, {runs} distinct runs, {a.jobs} workers")
    print(f"wall {wall:.1f} s, {cases / wall:.0f} cases/s, {runs / wall:.0f} runs/s, "
          f"largest worker RSS {rss / 1024:.0f} MB")
    print(f"results store: {size / 1e6:.1f} MB for {cases} cases in {runs} runs "
          f"({size / max(1, runs):.0f} B per run){'' if a.store else ' (temporary)'}")
    print(f"  {'part':<8} {'units':>6} {'distinct':>8} {'runs':>9} {'cases':>11} {'worker s':>9}"
          f" {'runs/s':>7} {'cases/s':>9}")
    worker_s = 0.0
    for name in sorted(parts, key=lambda k: (k != "0..128", len(k), k)):
        u, d, r, c, sec = parts[name]
        worker_s += sec
        print(f"  {name:<8} {u:>6} {d:>8} {r:>9} {c:>11} {sec:>9.1f} {r / sec:>7.0f}"
              f" {c / sec:>9.0f}")
    print(f"  worker CPU {worker_s:.1f} s in all: {worker_s / a.jobs:.1f} s per worker")
    for era_key in sorted(per_era):
        row = ", ".join(f"{k} {v}" for k, v in sorted(per_era[era_key].items()))
        print(f"  {era_key}: {row}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
