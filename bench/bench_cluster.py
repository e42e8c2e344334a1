"""make bench-sweep (second part): the same grid through the local pool and through Dask.

One grid (eras C-F × lengths 2048..8192/256 × source alignments 0, 0x7e0 × destination
alignments 0, 0x40 × {#MC, #MC on two lines} × every line, about 63 k distinct runs) runs
through ``sweep.execute`` four ways: the local 'spawn' pool with 1 and 2 workers, and a Dask
``LocalCluster`` with 1 and 2 single-threaded worker processes (``emu.runs.cluster``).  The
cluster is started before the clock starts, as an existing scheduler would be; the local
pool's worker start-up is inside its time, as it is in ``emu sweep`` (it is also measured
alone, on 64-byte copies, and the 2-worker overhead is printed without it as well).  Each
way runs ``--repeat`` times and the best time counts (the machine is shared).  Results go to
an in-memory store; all four summaries must be equal.

Prints cases/s and runs/s per way, Dask's overhead against the local pool with the same
worker count, and the per-worker rate the README's cluster estimate starts from.  Besides
the wall time, each way's CPU seconds (this process, its pool workers or its Dask workers)
are summed: on a shared machine the wall time moves with the other jobs' load much more
than the CPU time does, so the CPU overhead is the steadier figure.  The load average is printed
before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from typing import Any


def grid(lengths: tuple[int, ...] = tuple(range(2048, 8193, 256))) -> Any:
    from emu.runs.sweep import Grid, parse_variant
    return Grid(variants=tuple(parse_variant(v, None) for v in "CDEF"), lengths=lengths,
                src_aligns=(0, 0x7E0), dst_aligns=(0, 0x40), kinds=("mc", "mc2"), step=64)


def startup(jobs: int) -> float:
    """Wall seconds of the local pool on the same eras with 64-byte copies (a few dozen
    runs): its start-up (spawning the workers, importing emu, building the targets), which
    the warm Dask workers do not pay inside the clock."""
    from emu.runs.store import Store
    from emu.runs.sweep import execute
    g = grid((64,))
    store = Store(None, g.to_json(), resume=False)
    t0 = time.perf_counter()
    execute(g, store, jobs=jobs)
    store.close()
    return time.perf_counter() - t0


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed(jobs: int, backend: Any, workers: Any = None) -> tuple[float, float, dict[str, Any]]:
    """(wall s, CPU s, summary) of one sweep; ``workers`` (a Dask client) reports the Dask
    workers' CPU, else the pool's workers count as this process's children."""
    from emu.runs.store import Store
    from emu.runs.sweep import execute
    g = grid()
    store = Store(None, g.to_json(), resume=False)

    def used() -> float:
        mine = cpu_seconds() + cpu_seconds(resource.RUSAGE_CHILDREN)
        return mine + (sum(workers.run(cpu_seconds).values()) if workers is not None else 0)
    c0, t0 = used(), time.perf_counter()
    summary = execute(g, store, jobs=jobs, backend=backend)
    wall = time.perf_counter() - t0
    cpu = used() - c0
    store.close()
    return wall, cpu, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    from distributed import Client, LocalCluster

    from emu.runs.cluster import dask_backend
    rows: dict[str, tuple[float, float, dict[str, Any]]] = {}
    load = os.getloadavg()

    def best(name: str, jobs: int, backend: Any, workers: Any = None) -> None:
        runs = [timed(jobs, backend, workers) for _ in range(a.repeat)]
        rows[name] = min(runs, key=lambda r: r[0])

    for n in (1, 2):
        best(f"local pool, {n} worker(s)", n, None)  # 1: in-process (--jobs 1)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as probe:
            best(f"Dask, {n} worker(s)", n, dask_backend(cluster.scheduler_address), probe)
    summaries = {repr(s) for _, _, s in rows.values()}
    cases = next(iter(rows.values()))[2]["cases"]
    runs = sum(v["runs"] for v in next(iter(rows.values()))[2]["variants"].values())
    print(f"scaling: {cases} cases, {runs} distinct runs, best of {a.repeat}; "
          f"summaries {'identical' if len(summaries) == 1 else 'DIFFER'}")
    print("load average before: " + ", ".join(f"{x:.2f}" for x in load) + "; after: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{'way':<24} {'wall s':>7} {'cases/s':>9} {'runs/s':>7} {'CPU s':>7}")
    for name, (wall, cpu, _) in rows.items():
        print(f"{name:<24} {wall:7.2f} {cases / wall:9.0f} {runs / wall:7.0f} {cpu:7.2f}")
    for n in (1, 2):
        lw, lc, _ = rows[f"local pool, {n} worker(s)"]
        dw, dc, _ = rows[f"Dask, {n} worker(s)"]
        print(f"Dask overhead on {n} worker(s): {100 * (dw - lw) / lw:+.1f}% of the local "
              f"pool's time, {100 * (dc - lc) / lc:+.1f}% of its CPU")
    up = min(startup(2) for _ in range(a.repeat))
    lw, dw = rows["local pool, 2 worker(s)"][0], rows["Dask, 2 worker(s)"][0]
    print(f"local pool start-up (2 workers, inside its time; the Dask workers were warm): "
          f"{up:.2f} s; without it, Dask overhead on 2 worker(s): "
          f"{100 * (dw - (lw - up)) / (lw - up):+.1f}%")
    per_worker = runs / rows["Dask, 1 worker(s)"][0]
    print(f"per-worker rate through Dask: {per_worker:.0f} runs/s "
          f"({cases / rows['Dask, 1 worker(s)'][0]:.0f} cases/s on this grid)")
    return 0 if len(summaries) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
