"""``emu sweep`` and ``emu fuzz``: the grid of cases, run on every core or searched."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from emu.cli import common
from emu.errors import UsageError
from emu.kernel.eras import CPUS
from emu.render import report
from emu.runs.faults import KINDS, parse_kinds
from emu.runs.shards import parse_shard
from emu.runs.sweep import Backend, Grid, Unit, Variant, parse_ints, variant_of


T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sw = sub.add_parser("sweep", help="run a grid of cases on every core and summarise the "
                        "contract violations per variant")
    sw.add_argument("variants", nargs="*", help=f"{common.SPEC_HELP} (default: every era)")
    _grid_args(sw)
    run_options(sw)
    sw.add_argument("--jsonl", help="also export every case as JSON lines (small sweeps)")
    sw.add_argument("--worst-over-paths", action="store_true",
                    help="pictures: one panel per variant showing the worst over its CPU "
                    "paths (default: a panel per path)")
    sw.add_argument("--plot", help="write a heatmap PNG (a panel per variant and CPU path)")
    sw.add_argument("--html", help="write a self-contained HTML report")
    sw.add_argument("--metric", choices=("class", "violation", "error"), default="class",
                    help="heatmap colour: outcome class, worst violation name, or "
                    "returned - exact remainder")
    sw.add_argument("--y", dest="y_axis", choices=("auto", "length", "src_align", "dst_align"),
                    default="auto", help="heatmap rows (default: the first swept of these)")
    sw.add_argument("--json", action="store_true", help="print the summary as JSON")
    sw.set_defaults(func=cmd_sweep)

    fz = sub.add_parser("fuzz", help="search the sweep space with Hypothesis and shrink "
                        "the first failure to a minimal emu run command")
    fz.add_argument("variants", nargs="*", help=f"{common.SPEC_HELP} (default: every era)")
    _grid_args(fz)
    fz.add_argument("--max-len", type=common.to_int, default=8192, help="largest length tried")
    fz.add_argument("--want", default="any",
                    help="failure classes to look for: violation names, states (panic, oops, "
                    "hang, smap_violation, protection_fault, system_instruction), 'violation' "
                    "or 'any' (comma list)")
    fz.add_argument("--examples", type=common.positive, default=500,
                    help="cases to try before giving up")
    fz.add_argument("--seed", type=common.to_int, default=0,
                    help="random seed (same seed, same run)")
    fz.add_argument("--save", help="directory to save the shrunk case as a JSON fixture")
    fz.add_argument("--json", action="store_true", help="print the result as JSON")
    fz.set_defaults(func=cmd_fuzz)


def _grid_args(p: argparse.ArgumentParser) -> None:
    common.source_args(p, era_help="era rules for kernel-file variants (default: detected "
                       "from each file)")
    grid_options(p)


def grid_options(p: argparse.ArgumentParser) -> None:
    """The grid's axes other than the variants (``sweep``, ``fuzz``, ``campaign``)."""
    p.add_argument("--routine", action="append", default=[],
                   help="routine (repeatable; 'all' = every routine of the variant; "
                   "default: the CPU's choice)")
    p.add_argument("--len", dest="length", default=None,
                   help="lengths: a list like 64,100..200/4 (sweep default 4096; fuzz "
                   "default: any up to --max-len)")
    p.add_argument("--src-align", default=None,
                   help="source alignments, a list (sweep default 0; fuzz default: any)")
    p.add_argument("--dst-align", default=None,
                   help="destination alignments, a list (sweep default 0; fuzz default: any)")
    p.add_argument("--poison", default=None,
                   help="only these fault offsets (a list; default: every offset)")
    p.add_argument("--faults", default="mc",
                   help=f"fault kinds: {', '.join(KINDS)} or all (comma list; default mc)")
    p.add_argument("--direction", choices=("from", "to", "both"), default="from")
    p.add_argument("--cpu", action="append", default=[],
                   help="CPU path (repeatable: none, rep_good, erms, fsrm, a feature list, "
                   "or all; default none)")


def _grid(a: argparse.Namespace, step: int = 1) -> Grid:
    return grid_of(a, tuple(variant_of(s) for s in common.specs(a, a.variants)), step)


def grid_of(a: argparse.Namespace, variants: tuple[Variant, ...], step: int = 1) -> Grid:
    """The grid of ``variants`` along the axes of ``grid_options``."""
    cpus = [c for spec in (a.cpu or ["none"]) for c in (CPUS if spec == "all" else [spec])]
    return Grid(variants=variants,
                routines=tuple(a.routine), cpus=tuple(dict.fromkeys(cpus)),
                directions=("from", "to") if a.direction == "both" else (a.direction,),
                lengths=parse_ints(a.length or "4096"), src_aligns=parse_ints(a.src_align or "0"),
                dst_aligns=parse_ints(a.dst_align or "0"), kinds=parse_kinds(a.faults),
                step=step, offsets=parse_ints(a.poison) if a.poison else ())


def extra(module: str, extra: str, feature: str) -> None:
    """Check that an optional dependency imports, or raise the one-line pip hint."""
    import importlib
    try:
        importlib.import_module(module)
    except ImportError as e:
        from emu.errors import MissingExtra
        raise MissingExtra(f"{feature} needs {e.name or module}, which is not installed: "
                           f"pip install 'mce-emu[{extra}]'") from None


def cluster_backend(address: str, jobs: int | None) -> Backend:
    """``--cluster ADDRESS`` → the Dask backend (checked before anything runs)."""
    extra("distributed", "cluster", "--cluster")
    from emu.runs.cluster import dask_backend, parse_address
    parse_address(address)
    if jobs is not None:
        raise UsageError("--jobs sizes the local pool; a Dask cluster has its own workers "
                         "(--cluster local:N starts N)")
    return dask_backend(address)


def parse_step(text: str) -> int:
    step = {"byte": 1, "line": 64}.get(text)
    if step is None:
        try:
            step = int(text, 0)
        except ValueError:
            raise UsageError(f"--step must be byte, line or a number, not '{text}'") from None
    return step


def run_options(p: argparse.ArgumentParser) -> None:
    """Where a grid runs and where its results go (``sweep``, ``campaign``)."""
    p.add_argument("--step", default="byte",
                   help="poison offset step: byte (default), line, or a number")
    p.add_argument("--results", help="SQLite results store (one row per distinct run, "
                   "written as runs finish; query it with sqlite3)")
    p.add_argument("--resume", action="store_true",
                   help="continue the --results store: only runs it lacks are run")
    p.add_argument("--max-cases", type=common.positive, help="stop after this many new cases")
    p.add_argument("--jobs", type=common.positive, default=None,
                   help="worker processes (default: cores)")
    p.add_argument("--shard", metavar="K/N", default=None,
                   help="run only the K-th of N disjoint parts of the grid (split by a stable "
                   "hash of each run's key: the same on every machine); combine the shards' "
                   "stores with emu merge")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="run on a Dask scheduler (tcp://HOST:8786), or 'local[:N]' to start "
                   "N local Dask workers; results still stream into --results here "
                   "(needs pip install 'mce-emu[cluster]')")


def run_grid(a: argparse.Namespace, grid: Grid, *, check: Callable[[], None] | None = None,
             use: Callable[[dict[str, Any], Callable[[], Iterator[tuple[Unit, dict[str, Any]]]]],
                           T] | None = None) -> tuple[dict[str, Any], T | None]:
    """Run ``grid`` as the ``run_options`` say: the store, the progress line, the local
    pool or the cluster, a shard.  ``check`` runs after the options are checked and before
    the store is opened; ``use(summary, done)`` runs while the store is open, ``done()``
    streaming every stored unit with its record in grid order (nothing of the grid or the
    store is held in memory).  Returns the summary and what ``use`` returned."""
    from emu import __version__
    from emu.runs.store import Store
    from emu.runs.sweep import execute, stored_units
    shard = parse_shard(a.shard) if a.shard else None
    backend = cluster_backend(a.cluster, a.jobs) if a.cluster else None
    if check is not None:
        check()
    store = Store(a.results, grid.to_json(), resume=a.resume, emu_version=__version__,
                  shard=shard.text if shard else None)
    jobs = a.jobs if a.jobs is not None else (os.cpu_count() or 1)
    tty = sys.stderr.isatty()
    progress = None
    if not (a.json and tty):   # a bar on a terminal, a line every ~10 s in logs
        interval = float(os.environ.get("EMU_PROGRESS_INTERVAL", "10"))
        progress = report.SweepProgress(sys.stderr, tty=tty, interval=interval)
    finished = False
    try:
        summary = execute(grid, store, jobs=jobs, max_cases=a.max_cases, progress=progress,
                          shard=shard, backend=backend)
        if progress is not None:
            progress.close()
            progress = None
        used = use(summary, lambda: stored_units(grid, store)) if use is not None else None
        finished = True
    finally:
        if progress is not None:
            progress.close()
        store.close(compact=finished)   # a refused store is left exactly as it was
    return summary, used


def interrupted(a: argparse.Namespace, summary: dict[str, Any]) -> int:
    """The exit code, and the hint on stderr if the run was interrupted."""
    if summary.get("interrupted"):
        hint = f"; continue with --results {a.results} --resume" if a.results else ""
        print(f"emu: interrupted: summary of the finished cases above, {summary['pending']} "
              f"pending{hint}", file=sys.stderr)
        return 130
    return 0


def cmd_sweep(a: argparse.Namespace, out: IO[str]) -> int:
    from emu.runs.sweep import case_records
    grid = _grid(a, parse_step(a.step))

    def outputs() -> None:
        if a.plot or a.html:
            extra("emu.render.plot", "plot", "--plot" if a.plot else "--html")
        for opt, p in (("--plot", a.plot), ("--html", a.html), ("--jsonl", a.jsonl)):
            if p and a.results and Path(p).resolve() == Path(a.results).resolve():
                raise UsageError(f"{p}: {opt} would overwrite the results store")
        if a.jsonl and Path(a.jsonl).exists():
            raise UsageError(f"{a.jsonl} exists; name another --jsonl file")

    def records(done: Callable[[], Iterator[tuple[Unit, dict[str, Any]]]]
                ) -> Iterator[dict[str, Any]]:
        for u, rec in done():
            yield from case_records((u,), {u.id: rec})

    def write(summary: dict[str, Any],
              done: Callable[[], Iterator[tuple[Unit, dict[str, Any]]]]) -> None:
        if a.jsonl:
            from emu.runs.export import write_jsonl
            write_jsonl(a.jsonl, records(done), summary["cases"])
        if a.plot or a.html:
            from emu.render import plot
            recs = list(records(done))
            if a.plot:
                plot.write_png(grid, recs, a.plot, metric=a.metric, y_axis=a.y_axis,
                               worst_over_paths=a.worst_over_paths)
            if a.html:
                plot.write_html(grid, recs, summary, a.html, metric=a.metric,
                                y_axis=a.y_axis, worst_over_paths=a.worst_over_paths)
    summary, _ = run_grid(a, grid, check=outputs, use=write)
    if a.json:
        out.write(report.dumps(summary))
    else:
        report.sweep_summary(summary, out)
    return interrupted(a, summary)


def cmd_fuzz(a: argparse.Namespace, out: IO[str]) -> int:
    extra("hypothesis", "fuzz", "emu fuzz")
    from emu.runs import fuzz
    grid = _grid(a)
    found = fuzz.search(grid, want=fuzz.parse_want(a.want), max_len=a.max_len,
                        examples=a.examples, seed=a.seed, fixed_len=a.length is not None,
                        fixed_align=a.src_align is not None or a.dst_align is not None)
    path = fuzz.save(found, a.save) if found is not None and a.save else None
    if a.json:
        out.write(report.dumps(fuzz.to_json(found, path)))
    else:
        report.fuzz_result(fuzz.to_json(found, path), out)
    return 1 if found is not None else 0
