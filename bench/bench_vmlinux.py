"""`make bench`: one `emu run --vmlinux` of Debian's 6.1 debug image, cold-cache and warm.

The first run parses .symtab and stores it by build-id; the second must take <= 1 s wall and
<= 200 MB RSS (issue 14).  Measured, never asserted.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMU = str(Path(sys.executable).parent / "emu")
IMAGE = Path(os.environ.get("EMU_LINUX_DBG") or Path.home() / ".cache/emu/linux-dbg") / "6.1" / "vmlinux"


def once(cache: Path) -> tuple[float, int]:
    cmd = [EMU, "run", "--vmlinux", str(IMAGE), "--routine", "copy_user_generic_unrolled",
           "--len", "4096", "--src-align", "32", "--poison", "2016", "--cpu", "skylake-sp",
           "--json"]
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(rss, before)


def main() -> None:
    if not IMAGE.is_file():
        sys.exit(f"{IMAGE}: missing (scripts/linux-dbg downloads it)")
    cache = Path("/tmp") / f"emu-bench-vmlinux-{os.getpid()}"
    shutil.rmtree(cache, ignore_errors=True)
    size = IMAGE.stat().st_size >> 20
    print(f"emu run --vmlinux on Debian 6.1 debug vmlinux ({size} MB), cpu skylake-sp")
    for label in ("first (cold symbol cache)", "second (cached by build-id)"):
        wall, rss = once(cache)
        print(f"  {label:30} wall {wall:5.2f} s   max RSS {rss // 1024:4d} MB")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
