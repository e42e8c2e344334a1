"""The compiled helper (``_fast.c``): built with gcc on first use, loaded through ctypes.

The library is built once per source version into ``$EMU_CACHE`` (default ``~/.cache/emu``)
as ``_fast-<hash of the source>.so`` and loaded with ctypes; ``make install`` builds it
ahead of time.  When gcc is missing or fails, or when ``EMU_PURE=1`` is set, ``load()``
returns None and the machine uses the pure-Python code of ``strings.py`` instead, with the
same results (tests/unit/test_strings.py runs both).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("_fast.c")
MAX_OPS = MAX_WATCH = MAX_ABSENT = 64

_U64 = ctypes.c_uint64


class EmuStrings(ctypes.Structure):
    """The ``EmuStrings`` record of ``_fast.c`` (all fields 64-bit, same order)."""

    _fields_ = [
        ("f_reg_read_batch", _U64), ("f_reg_write_batch", _U64), ("f_mem_read", _U64),
        ("f_mem_write", _U64), ("reg_ids", _U64 * 5), ("active", _U64),
        ("win_va", _U64 * 2), ("win_pa", _U64 * 2), ("win_pte", _U64 * 2),
        ("win_user", _U64 * 2), ("win_pages", _U64 * 2),
        ("nabsent", _U64), ("absent", _U64 * MAX_ABSENT),
        ("nwatch", _U64), ("watch_lo", _U64 * MAX_WATCH), ("watch_hi", _U64 * MAX_WATCH),
        ("nops", _U64), ("op_addr", _U64 * MAX_OPS), ("op_kind", _U64 * MAX_OPS),
        ("op_size", _U64 * MAX_OPS),
        ("buf", _U64), ("buf_size", _U64), ("calls", _U64), ("bulked", _U64),
    ]


def pure() -> bool:
    """Is the compiled helper switched off (``EMU_PURE=1``)?"""
    return os.environ.get("EMU_PURE", "") not in ("", "0")


def cache_dir() -> Path:
    return Path(os.environ.get("EMU_CACHE") or Path.home() / ".cache" / "emu")


def library_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return cache_dir() / f"_fast-{digest}.so"


def build() -> Path | None:
    """Compile ``_fast.c`` unless the library of this source version exists; None if the
    source is missing or gcc is missing or fails.  Concurrent builds (sweep workers) each
    write a temporary file and rename it into place, so a reader never sees half a library."""
    try:
        out = library_path()
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            r = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                               capture_output=True, env={**os.environ, "LC_ALL": "C"},
                               check=False)
            if r.returncode != 0:
                return None
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:                      # no source (a partial install), no gcc, no cache dir
        return None
    return out


_LIB: list[ctypes.CDLL | None] = []


def load() -> ctypes.CDLL | None:
    """The compiled helper, built if needed; None under ``EMU_PURE=1`` or without gcc."""
    if pure():
        return None
    if not _LIB:
        path = build()
        lib = None
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                lib = None
        _LIB.append(lib)
    return _LIB[0]


def string_hook() -> int | None:
    """Address of ``emu_string_hook`` (a UC_HOOK_BLOCK callback), or None."""
    lib = load()
    if lib is None:
        return None
    return ctypes.cast(lib.emu_string_hook, ctypes.c_void_p).value


_MEASURE: list[object] = []


def measure_function() -> object | None:
    """``emu_measure`` of the compiled helper (byte facts for ``outcome.build``), called
    with the GIL held; None without the helper."""
    if not _MEASURE:
        lib = load()
        f = None
        if lib is not None:
            f = ctypes.PyDLL(lib._name).emu_measure
            f.restype = None        # no argtypes (faster): callers pass three bytes, two
            #                         ints (C int) and a c_uint64 * 5 array
        _MEASURE.append(f)
    return _MEASURE[0] if not pure() else None


if __name__ == "__main__":                    # make install: build ahead of time
    print(library_path() if load() is not None else "emu: compiled helper not built "
          "(no gcc?); the pure-Python code is used")
