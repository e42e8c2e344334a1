"""``emu sweep --cluster`` on a real Dask scheduler and two real workers on 127.0.0.1.

Nothing of Dask is mocked: the test starts ``dask scheduler`` and two ``dask worker``
processes (one thread each, no nanny, so a SIGKILL takes the worker down for good), runs
sweeps through them, and compares the store and the summary with the local pool's.  The
workers run in an empty directory, so a relative ``.S`` variant reaches them only as the
text the client sends.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from sweep_helpers import ROOT, dump, emu, emu_proc, query, runs_committed  # noqa: E402

#: About 16.5 k distinct runs: long enough to kill a worker in the middle.
BIG = ["C", "D", "E", "F", "--len", "2048..8192/512", "--src-align", "0,0x7e0", "--step",
       "line", "--faults", "mc,mc2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A scheduler and its workers, as separate processes (each in its own session).

    The workers run in ``workdir`` with ``env`` added to their environment."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scheduler = self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--dashboard-address", ":0")
        self.workers = [self.worker() for _ in range(2)]
        self.wait_for(2)

    def _spawn(self, module: str, *args: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": "", **(env or {})}
        p = subprocess.Popen([sys.executable, "-m", module, *args], cwd=self.workdir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def worker(self) -> subprocess.Popen[bytes]:
        return self._spawn("distributed.cli.dask_worker", self.address, "--nthreads", "1",
                           "--no-nanny", "--dashboard-address", ":0", "--host", "127.0.0.1",
                           env=self.env)

    def wait_for(self, n: int) -> None:
        from distributed import Client
        with Client(self.address, timeout=60) as c:
            c.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers in an empty directory, with an empty emu cache of their own."""
    work = tmp_path / "workers"
    work.mkdir()
    c = Cluster(work, env={"EMU_CACHE": str(tmp_path / "workers-cache")})
    try:
        yield c
    finally:
        c.close()


def _sweep(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``emu sweep ARGV`` run from ``cwd`` (the client's directory); it must succeed."""
    r = subprocess.run([sys.executable, "-m", "emu", "sweep", *argv], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_cluster_sweep_equals_the_local_one(cluster: Cluster, tmp_path: Path) -> None:
    """Same store rows and byte-identical summary, an era key and a relative .S file (which
    the workers, in another directory, cannot read) alike; then --resume over the cluster."""
    src = tmp_path / "client"
    src.mkdir()
    shutil.copy(ROOT / "asm" / "era-E.S", src / "mine.S")
    grid = ["F", "mine.S", "--len", "1000,4096", "--src-align", "0x7e0", "--faults", "mc,pf",
            "--step", "4", "--json"]
    local, dist = tmp_path / "local.db", tmp_path / "dask.db"

    sweep = functools.partial(_sweep, src)

    a = sweep(*grid, "--results", str(local), "--jobs", "2")
    b = sweep(*grid, "--results", str(dist), "--cluster", cluster.address)
    assert b.stdout == a.stdout
    assert dump(dist) == dump(local)
    assert query(dist, "SELECT COUNT(*) FROM runs WHERE class = 'tool_error'") == [(0,)]
    # a half-done store finishes on the cluster: only the missing runs run
    half = tmp_path / "half.db"
    sweep(*grid, "--results", str(half), "--max-cases", "500", "--jobs", "1")
    assert 0 < runs_committed(half) < runs_committed(local)
    c = sweep(*grid, "--results", str(half), "--resume", "--cluster", cluster.address)
    assert c.stdout == a.stdout and dump(half) == dump(local)


def test_killed_worker_loses_and_duplicates_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL one of the two workers mid-sweep: Dask reruns its tasks on the other, and the
    store is the local pool's, every run once, no tool_error."""
    results = tmp_path / "dask.db"
    argv = [sys.executable, "-m", "emu", "sweep", *BIG, "--results", str(results),
            "--cluster", cluster.address, "--json"]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and runs_committed(results) < 1500:
            time.sleep(0.02)
        assert p.poll() is None, "the sweep finished before a worker could be killed"
        victim = cluster.workers[0]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = runs_committed(results)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    local = tmp_path / "local.db"
    r = emu_proc("sweep", *BIG, "--results", str(local), "--json", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    total = runs_committed(local)
    assert 1500 <= killed_at < total
    assert out == r.stdout
    assert dump(results) == dump(local)
    assert query(results, "SELECT COUNT(*), COUNT(DISTINCT id) FROM runs") == [(total, total)]
    assert query(results, "SELECT COUNT(*) FROM runs WHERE class = 'tool_error'") == [(0,)]


def test_local_cluster_and_bad_addresses(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--cluster local:2 starts its own LocalCluster; bad addresses are one line, exit 2."""
    grid = ["E", "--len", "512", "--src-align", "0x7e0", "--json"]
    local, dist = tmp_path / "l.db", tmp_path / "d.db"
    rc, a = emu("sweep", *grid, "--results", str(local), "--jobs", "1")
    assert rc == 0
    r = emu_proc("sweep", *grid, "--results", str(dist), "--cluster", "local:2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == a and dump(dist) == dump(local)
    capsys.readouterr()
    monkeypatch.setenv("EMU_DASK_CONNECT_TIMEOUT", "2")
    for argv, msg in [(["--cluster", "local:0"], "worker count"),
                      (["--cluster", "nowhere"], "scheduler address"),
                      (["--cluster", "local", "--jobs", "2"], "--jobs"),
                      (["--cluster", f"tcp://127.0.0.1:{_free_port()}"], "cannot reach")]:
        rc, out = emu("sweep", *grid, *argv)
        err = capsys.readouterr().err
        assert rc == 2 and out == "", (argv, err)
        assert msg in err and err.count("\n") == 1, (argv, err)


def test_built_object_and_vmlinux_sweep_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """A .o and Debian's real 6.1 and 6.12 debug images as variants: the store and the
    summary are the local pool's.  The client names them by relative paths in its own
    directory, which the workers (another directory) do not have, so every run a worker
    made, with no tool_error, was made from the contents the client sent.  No worker opened
    a vmlinux: that would have left its symbol cache (by build-id) in their emu cache."""
    sys.path.insert(0, str(ROOT / "tests" / "kernel"))
    from test_real_vmlinux import vmlinux
    client = tmp_path / "client"
    for v in ("6.1", "6.12"):
        (client / v).mkdir(parents=True)
        (client / v / "vmlinux").symlink_to(vmlinux(v))
    _object(client / "mine.o")
    grid = ["mine.o", "vmlinux:6.1/vmlinux", "vmlinux:6.12/vmlinux", "--cpu", "none",
            "--cpu", "erms", "--cpu", "icelake-sp", "--len", "100,4096", "--src-align",
            "0,0x7e0", "--faults", "mc,pf", "--step", "line", "--json"]
    local, dist = tmp_path / "local.db", tmp_path / "dask.db"

    sweep = functools.partial(_sweep, client)

    a = sweep(*grid, "--results", str(local), "--jobs", "2")
    b = sweep(*grid, "--results", str(dist), "--cluster", cluster.address)
    assert b.stdout == a.stdout
    assert dump(dist) == dump(local)
    assert query(dist, "SELECT COUNT(*) FROM runs WHERE class = 'tool_error'") == [(0,)]
    assert query(dist, "SELECT COUNT(DISTINCT variant), COUNT(DISTINCT cpu) FROM runs") == \
        [(3, 3)]
    assert not (tmp_path / "workers-cache" / "vmlinux").exists()


def _object(path: Path) -> None:
    """An era-F .o built with emu's headers, as a user's kbuild object."""
    from emu.build.assemble import AsmConfig, GasAssembler
    from emu.kernel.eras import ERAS
    era = ERAS["F"]
    path.write_bytes(GasAssembler().assemble((ROOT / "asm" / "era-F.S").read_text(),
                                             AsmConfig(int(era.encoding), era.ex_layout,
                                                       frozenset()), "mine.S"))


def test_shipped_object_outlives_the_workers_that_held_it(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """A .o sweep (~17 k runs) loses both workers mid-run (SIGKILL) and a third joins: all
    copies of the object's bytes died with them, so Dask runs the ``hold`` task again on
    the new worker (the scheduler kept its argument), and the store is the local pool's."""
    client = tmp_path / "client"
    client.mkdir()
    _object(client / "mine.o")
    grid = ["mine.o", "--cpu", "none", "--cpu", "fsrm", "--routine", "all",
            "--len", "2048..8192/512", "--src-align", "0,0x7e0", "--step", "line",
            "--faults", "mc,mc2", "--json"]
    results = tmp_path / "dask.db"
    p = subprocess.Popen([sys.executable, "-m", "emu", "sweep", *grid, "--results",
                          str(results), "--cluster", cluster.address], cwd=client,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and runs_committed(results) < 1500:
            time.sleep(0.02)
        assert p.poll() is None, "the sweep finished before the workers could be killed"
        for victim in cluster.workers:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        killed_at = runs_committed(results)
        cluster.workers.append(cluster.worker())
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    local = tmp_path / "local.db"
    r = subprocess.run([sys.executable, "-m", "emu", "sweep", *grid, "--results", str(local),
                        "--jobs", "2"], cwd=client, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    total = runs_committed(local)
    assert 1500 <= killed_at < total
    assert out == r.stdout and dump(results) == dump(local)
    assert query(results, "SELECT COUNT(*) FROM runs WHERE class = 'tool_error'") == [(0,)]


def test_campaign_on_the_cluster_equals_the_local_one(cluster: Cluster, tmp_path: Path) -> None:
    """``emu campaign --cluster`` over a demo tree's range (5 revisions × 2 CPU models,
    ~7.7 k runs): the per-revision report and the store are the local campaign's.  The tree
    is a relative path in the client's directory, so the workers get each revision as its
    text.  Then the client is SIGKILLed mid-campaign and ``--resume`` finishes it on the
    cluster, to the same report and store."""
    client = tmp_path / "client"
    client.mkdir()
    subprocess.run([str(ROOT / "scripts" / "demo-tree"), str(client / "linux")], check=True,
                   capture_output=True)
    argv = ["campaign", "--tree", "linux", "v5.9..HEAD", "--len", "4096,8192", "--src-align",
            "0,0x7e0", "--step", "line", "--faults", "mc,mc2", "--cpu", "none", "--cpu",
            "erms", "--json"]

    def emu_in_client(*more: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "emu", *argv, *more], cwd=client,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r

    local, dist, cut = tmp_path / "local.db", tmp_path / "dask.db", tmp_path / "cut.db"
    a = emu_in_client("--results", str(local), "--jobs", "2")
    b = emu_in_client("--results", str(dist), "--cluster", cluster.address)
    rep = json.loads(b.stdout)
    assert rep["revisions"] == 5 and [r["era"] for r in rep["rows"]
                                      if r["cpu"] == "none"] == list("ACDEF")
    assert b.stdout == a.stdout and dump(dist) == dump(local)
    assert query(dist, "SELECT COUNT(*) FROM runs WHERE class = 'tool_error'") == [(0,)]
    # killed mid-campaign, resumed on the cluster
    p = subprocess.Popen([sys.executable, "-m", "emu", *argv, "--results", str(cut),
                          "--cluster", cluster.address], cwd=client,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and runs_committed(cut) < 500:
            time.sleep(0.02)
        assert p.poll() is None, "the campaign finished before it could be killed"
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert 500 <= runs_committed(cut) < runs_committed(local)
    c = emu_in_client("--results", str(cut), "--resume", "--cluster", cluster.address)
    assert c.stdout == a.stdout and dump(cut) == dump(local)
