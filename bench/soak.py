"""make soak: a long sweep under ``ulimit -v``, measuring the RSS of the parent and its workers.

The sweep of issue 17, class 12: eras A–F, lengths 4, 8, 12 and 16 KiB, 8 alignment pairs
(source 0, 0x7e0, 1, 0xfff × destination 0, 0x20), every line (``--step line``), every CPU
path (``--cpu all``), #MC and #PF — 125,376 cases — run by the real ``emu sweep`` command
into a results store, under an address-space limit (``ulimit -v``, ``--limit-mb``).  The
RSS of the parent and of every worker is sampled from /proc twice a second; the peak and
the peak of each quarter of the run are printed (steady quarters: no growth).  Targets
(issue 17): worker and parent ≤ 200 MB.

``--quick`` runs eras E and F on the 4 and 16 KiB lengths only (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["--len", "4096,8192,12288,16384", "--src-align", "0,0x7e0,1,0xfff",
        "--dst-align", "0,0x20", "--step", "line", "--cpu", "all", "--faults", "mc,pf"]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-mb", type=int, default=4096,
                    help="ulimit -v for the sweep and its workers (MiB of address space)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    variants = ["E", "F"] if a.quick else ["A", "B", "C", "D", "E", "F"]
    grid = list(GRID)
    if a.quick:
        grid[1] = "4096,16384"
    limit = a.limit_mb << 20

    def limit_as() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryDirectory(prefix="emu-soak-") as tmp:
        db = Path(tmp) / "soak.db"
        cmd = [sys.executable, "-m", "emu.cli.main", "sweep", *variants, *grid,
               "--results", str(db), "--jobs", str(a.jobs), "--json"]
        print("soak:", " ".join(["emu", *cmd[3:]]).replace(str(db), "SOAK.db"))
        print(f"under ulimit -v {limit >> 10} (KiB), {a.jobs} worker(s)", flush=True)
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=limit_as,
                             env={**os.environ, "EMU_PROGRESS_INTERVAL": "1e9"})
        samples: list[tuple[float, float, float]] = []    # (t, parent, largest worker)
        while p.poll() is None:
            par = rss_mb(p.pid) or 0.0
            workers = [r for r in (rss_mb(c) for c in children(p.pid)) if r is not None]
            samples.append((time.monotonic() - t0, par, max(workers, default=0.0)))
            time.sleep(0.5)
        out, err = p.communicate()
        wall = time.monotonic() - t0
        store_mb = db.stat().st_size / 1e6 if db.exists() else 0.0
    if p.returncode != 0:
        print(f"soak FAILED: exit {p.returncode}\n{err[-2000:]}")
        return 1
    import json
    summary = json.loads(out)
    cases = summary["cases"]
    runs = sum(v["runs"] for v in summary["variants"].values())
    print(f"{cases} cases, {runs} distinct runs, wall {wall:.0f} s ({cases / wall:.0f} cases/s), "
          f"store {store_mb:.1f} MB")
    peak_parent = max((s[1] for s in samples), default=0.0)
    peak_worker = max((s[2] for s in samples), default=0.0)
    print(f"peak RSS: parent {peak_parent:.0f} MB, largest worker {peak_worker:.0f} MB "
          f"(target <= 200 MB each)")
    if samples:
        q = max(1, len(samples) // 4)
        parts = [samples[i:i + q] for i in range(0, len(samples), q)][:4]
        print("per quarter of the run (peak parent / peak worker, MB): " + ", ".join(
            f"{max(s[1] for s in part):.0f}/{max(s[2] for s in part):.0f}" for part in parts))
    ok = peak_parent <= 200 and peak_worker <= 200
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
