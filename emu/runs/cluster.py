"""Sweeps on a Dask distributed cluster: the local pool's units, run by Dask workers.

``emu sweep --cluster tcp://HOST:8786`` sends the grid's units to an existing Dask scheduler;
``--cluster local[:N]`` starts a ``LocalCluster`` of N single-threaded worker processes.
Dask is the scheduler: it places tasks, moves them off a worker that dies and starts them
again elsewhere.  emu adds three things on top (https://distributed.dask.org/en/stable/):

1. **Batches.**  A task is a batch of units (``sweep.Unit``: one distinct machine input and
   the offsets it stands for).  Dask costs about a millisecond per task (client → scheduler
   → worker → back), and a unit runs in 40 µs – 5 ms, so the first tasks hold a few units,
   and once their run time is known each task holds ``TASK_SECONDS`` of machine time, but
   never more than a fair share of what is left (every worker stays busy to the end).
   ``IN_FLIGHT`` tasks per worker thread are queued, so a worker never waits for the
   round trip.  A task's units go out, and its records come back, as one pickle each.
2. **Portable sources.**  Every unit carries ``resolve.portable(spec)``: a source file,
   revision or patched era travels as its text, so workers need emu installed and nothing
   of the user's; each worker builds and caches its own targets (one ``Runner`` each).
   A built ``.o`` or vmlinux travels as its contents (``emu.build.shipping``: an object's
   bytes; the slice of a vmlinux that the sweep's routines read, ~20 KB of a 600 MB
   image).  The contents are not in the units: they are the result of one ``hold`` task
   keyed by their digest, which every task of that variant takes as an argument, so Dask
   moves them to each worker once and keeps them there; if every worker holding them
   dies, Dask runs ``hold`` again (the scheduler keeps its argument).
3. **Records stream to the client.**  Each finished task's records go through the same
   ``on_record`` as the local pool's, into the results store in this process; a task is
   recorded once, when its result arrives, so a rescheduled task is neither lost nor
   counted twice, and ``--resume`` works as for a local sweep.

A task that fails as a whole (its worker killed more often than Dask's
``allowed-failures``, or an unpicklable result) is split into one task per unit; a unit
that fails alone is recorded as ``tool_error``, as the local pool does with a unit whose
worker died.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from emu.build.resolve import Spec, portable
from emu.errors import InputError, UsageError
from emu.runs.sweep import Backend, OnRecord, Runner, Unit, error_record

#: Machine time a task should hold once the unit cost is measured (Dask's ~1 ms per task
#: is then well under 5% of the run time).
TASK_SECONDS = 0.5
#: Units in each of the first tasks, before any unit cost is known.
FIRST_BATCH = 8
#: Tasks queued per worker thread.
IN_FLIGHT = 2
#: Seconds to wait for the scheduler, and for its first worker (``EMU_DASK_CONNECT_TIMEOUT``
#: overrides it).
CONNECT_TIMEOUT = 30.0


def parse_address(text: str) -> tuple[str, int | None]:
    """``local`` / ``local:N`` / ``tcp://HOST:PORT`` (any Dask scheme) / ``HOST:PORT``.

    Returns:
        ``("local", N or None)`` for a local cluster, else ``(scheduler address, None)``.

    Raises:
        UsageError: anything else.
    """
    if text == "local":
        return "local", None
    if text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise UsageError(f"--cluster '{text}': local:N needs a worker count N >= 1")
        return "local", int(n)
    if "://" in text:
        return text, None
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit():
        return f"tcp://{text}", None
    raise UsageError(f"--cluster '{text}': give a scheduler address (tcp://HOST:8786) or "
                     "local[:N]")


@functools.lru_cache(maxsize=1)
def _runner() -> Runner:
    """This worker process's runner (its targets and outcomes are cached across tasks)."""
    return Runner()


def hold(contents: object) -> object:
    """The task that puts a built input's contents on the cluster (see the module
    docstring): its result is the argument."""
    return contents


def run_batch(units: bytes, shipped: dict[str, object] | None = None) -> bytes:
    """The task a Dask worker runs: the record of each unit, and the seconds it took.

    The units arrive, and the records leave, as one pickle each (``pack``): Dask moves a
    bytes object as it is, where it would walk a list of thousands of units looking for
    futures and serialise them one by one.

    Args:
        units: the pickled list of units.
        shipped: the contents of the built inputs the units name, by digest (the results
            of ``hold``, which Dask fetches to this worker once).

    Returns:
        ``pack((records, seconds))``.
    """
    t0 = time.perf_counter()
    runner = _runner()
    batch = pickle.loads(units)
    recs = [runner.run_unit(u) for u in (attach(batch, shipped) if shipped else batch)]
    return pack((recs, time.perf_counter() - t0))


def pack(obj: object) -> bytes:
    """One pickle of a task's units or results (``run_batch``)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def attach(batch: list[Unit], shipped: dict[str, object]) -> list[Unit]:
    """The units with each built spec's contents attached (``Spec.shipped``)."""
    specs: dict[Spec, Spec] = {}
    out = []
    for u in batch:
        spec = u.case.spec
        if spec is None or spec.digest is None:
            out.append(u)
            continue
        if spec not in specs:
            specs[spec] = replace(spec, shipped=shipped[spec.digest])
        out.append(replace(u, case=replace(u.case, spec=specs[spec])))
    return out


def dask_backend(address: str) -> Backend:
    """A ``sweep.execute`` backend that runs the units on the Dask cluster at ``address``.

    Raises:
        UsageError: a malformed address (at once, before anything runs).
    """
    where, count = parse_address(address)

    def run(todo: Sequence[Unit], on_record: OnRecord) -> None:
        client, cluster = _connect(where, count)
        try:
            _run(client, todo, on_record)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return run


def _connect(where: str, count: int | None) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if where == "local":
        cluster = LocalCluster(n_workers=count or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        return Client(cluster), cluster
    wait = float(os.environ.get("EMU_DASK_CONNECT_TIMEOUT", CONNECT_TIMEOUT))
    try:
        client = Client(where, timeout=wait)
    except (OSError, TimeoutError) as e:
        raise InputError(f"--cluster {where}: cannot reach the Dask scheduler "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e})"
                         ) from None
    try:
        client.wait_for_workers(1, timeout=wait)
    except (OSError, TimeoutError):
        client.close()
        raise InputError(f"--cluster {where}: the scheduler has no workers (waited "
                         f"{wait:g} s)") from None
    return client, None


def _run(client: Any, todo: Sequence[Unit], on_record: OnRecord) -> None:
    from distributed import as_completed

    sent: dict[Spec | None, Spec | None] = {}
    held: dict[str, Any] = {}            # digest → the future of a ``hold`` task
    routines: dict[Spec | None, set[str]] = {}
    for u in todo:
        routines.setdefault(u.case.spec, set()).add(u.case.routine)

    def travelling(u: Unit) -> Unit:
        """The unit as workers get it: its source inline (one copy per spec), a built
        input by digest (its contents held on the cluster once)."""
        spec = u.case.spec
        if spec not in sent:
            p = portable(spec, tuple(sorted(routines[spec]))) if spec is not None else None
            if p is not None and p.shipped is not None and p.digest is not None:
                if p.digest not in held:
                    held[p.digest] = client.submit(hold, p.shipped, key=f"emu-{p.digest}")
                p = replace(p, shipped=None)
            sent[spec] = p
        p = sent[spec]
        return u if p is spec else replace(u, case=replace(u.case, spec=p))

    queue: deque[Unit] = deque(todo)
    solo: deque[Unit] = deque()          # units of a failed batch, retried one per task
    tasks: dict[Any, list[Unit]] = {}
    per_unit: float | None = None        # measured seconds per unit (moving average)
    done = as_completed()

    def submit(threads: int) -> None:
        if solo:
            batch = [solo.popleft()]
        else:
            size = FIRST_BATCH
            if per_unit is not None:
                size = max(1, min(int(TASK_SECONDS / max(per_unit, 1e-6)),
                                  len(queue) // (IN_FLIGHT * threads)))
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
        units = [travelling(u) for u in batch]
        digests = {u.case.spec.digest for u in units
                   if u.case.spec is not None and u.case.spec.digest is not None}
        f = client.submit(run_batch, pack(units), {d: held[d] for d in digests} or None,
                          pure=False)
        tasks[f] = batch
        done.add(f)

    def top_up() -> None:
        threads = max(1, sum(client.nthreads().values()))     # one scheduler round trip
        while (queue or solo) and len(tasks) < IN_FLIGHT * threads:
            submit(threads)

    try:
        top_up()
        for f in done:
            batch = tasks.pop(f)
            try:
                recs, seconds = pickle.loads(f.result())
            except Exception as e:  # noqa: BLE001 - a lost task is retried or recorded
                if len(batch) > 1:
                    solo.extend(batch)
                else:
                    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    on_record(batch[0], error_record(batch[0].case, "Dask task failed "
                                                     f"({why.strip()}) while running this case"))
            else:
                cost = seconds / len(batch)
                per_unit = cost if per_unit is None else 0.7 * per_unit + 0.3 * cost
                for u, rec in zip(batch, recs):
                    on_record(u, rec)
            top_up()
    finally:
        if tasks:
            client.cancel(list(tasks))
        if held:
            client.cancel(list(held.values()))
