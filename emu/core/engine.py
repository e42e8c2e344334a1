"""Unicorn's C API called directly: the machine's hot-path engine calls.

``machine.py`` drives Unicorn through this thin layer instead of the Python binding's
wrappers, whose per-call ctypes work (a fresh buffer per register read, a closure per
``hook_add``) costs more than the emulation of a short copy (unicorn-notes §2–§3).  Nothing
here knows about kernels, images or cases.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import Uc

from emu.caching import Bounded
from emu.core import layout as L


class Engine:
    """Unicorn's C API called directly, with buffers allocated once.

    The binding's wrappers cost 1-2 µs a call (a fresh ctypes buffer per read, closures per
    ``hook_add``), and one case makes a few dozen calls (unicorn-notes §2); these take
    0.2-0.4 µs.  The hot functions are called through function pointers without
    ``argtypes``, with every argument already a ctypes object of the prototype's type (the
    64-bit addresses and sizes come from small caches), which halves ctypes' per-call
    argument conversion.  Return codes are not checked: every call uses register ids,
    mapped physical addresses or hook handles that are valid by construction.
    """

    def __init__(self, uc: Uc, pte_bytes: int) -> None:
        from unicorn.unicorn_py3.unicorn import uclib
        self._lib = uclib
        self._h = uc._uch  # noqa: SLF001 - the binding's engine handle
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)
        self._mem = ctypes.create_string_buffer(L.PAGE)
        self._span = ctypes.create_string_buffer(L.PAGE)
        self._ptes = ctypes.create_string_buffer(pte_bytes)
        self._hook = ctypes.c_size_t()
        self._hook_ref = ctypes.byref(self._hook)
        self._u64: Bounded[int, ctypes.c_uint64] = Bounded(4096, "engine.u64")
        self._f_reg_read = _raw(uclib, "uc_reg_read")
        self._f_reg_write = _raw(uclib, "uc_reg_write")
        self._f_mem_read = _raw(uclib, "uc_mem_read")
        self._f_mem_write = _raw(uclib, "uc_mem_write")
        self._f_emu_stop = _raw(uclib, "uc_emu_stop")
        self._f_emu_start = _raw(uclib, "uc_emu_start")
        self._f_ctx_restore = _raw(uclib, "uc_context_restore")
        self._zero = ctypes.c_uint64(0)
        self._pte_size = ctypes.c_uint64(pte_bytes)
        self._batches: Bounded[tuple[int, ...], RegBatch] = Bounded(256, "engine.batches")

    def u64(self, value: int) -> ctypes.c_uint64:
        """``value`` as a (shared, never modified) c_uint64: addresses and sizes repeat."""
        v = self._u64.get(value)
        if v is None:
            v = self._u64[value] = ctypes.c_uint64(value)
        return v

    def read(self, reg: int) -> int:
        self._f_reg_read(self._h, reg, self._ref)
        return self._buf.value

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value
        self._f_reg_write(self._h, reg, self._ref)

    def batch(self, ids: tuple[int, ...]) -> RegBatch:
        """A batch for ``ids``, built once per distinct list (a sweep's calls differ in
        values, not registers)."""
        b = self._batches.get(ids)
        if b is None:
            b = self._batches[ids] = RegBatch(self._lib, self._h, ids)
        return b

    # The hot methods look the cache up inline (``u64`` on a miss; a cached zero is falsy
    # and takes the slow path, with the same result).

    def mem_read(self, pa: int, size: int) -> bytes:
        """``size`` (at most a page) bytes of physical memory."""
        u = self._u64
        self._f_mem_read(self._h, u.get(pa) or self.u64(pa), self._mem,
                         u.get(size) or self.u64(size))
        return self._mem.raw[:size] if size < L.PAGE else self._mem.raw

    def mem_read_span(self, pa: int, size: int) -> bytes:
        """``size`` bytes of physical memory, any size (a buffer of the largest size asked
        for is kept)."""
        if size > len(self._span):
            self._span = ctypes.create_string_buffer(size)
        self._f_mem_read(self._h, self.u64(pa), self._span, self.u64(size))
        return ctypes.string_at(self._span, size)

    def pte_array(self, pa: int) -> bytes:
        """The ``WINDOW_PAGES`` page-table entries of one window."""
        self._f_mem_read(self._h, self._u64.get(pa) or self.u64(pa), self._ptes,
                         self._pte_size)
        return self._ptes.raw

    def mem_write(self, pa: int, data: bytes) -> None:
        u = self._u64
        n = len(data)
        self._f_mem_write(self._h, u.get(pa) or self.u64(pa), data, u.get(n) or self.u64(n))

    def context_restore(self, ctx: object) -> None:
        """``Uc.context_restore`` of a context the binding allocated (``context_save``)."""
        self._f_ctx_restore(self._h, ctx.context)  # type: ignore[attr-defined]

    def emu_start(self, begin: int, until: int, count: int) -> int:
        """``uc_emu_start`` without a timeout; returns Unicorn's status code."""
        u = self._u64
        return self._f_emu_start(self._h, u.get(begin) or self.u64(begin),
                                 u.get(until) or self.u64(until), self._zero,
                                 u.get(count) or self.u64(count))

    def hook_add(self, kind: int, callback: object, user_data: int, begin: int,
                 end: int) -> int:
        """Add a hook whose ctypes ``callback`` the caller keeps alive; returns its handle."""
        self._lib.uc_hook_add(self._h, self._hook_ref, kind, callback,
                              ctypes.c_void_p(user_data), begin, end)
        return self._hook.value

    def hook_del(self, handle: int) -> None:
        self._lib.uc_hook_del(self._h, handle)

    def emu_stop(self) -> None:
        self._f_emu_stop(self._h)


def _raw(lib: object, name: str) -> Callable[..., int]:
    """A function pointer to ``name`` without ``argtypes`` (callers pass ctypes objects)."""
    f = lib._FuncPtr((name, lib))  # type: ignore[attr-defined]
    f.restype = ctypes.c_int
    return f  # type: ignore[no-any-return]


class RegBatch:
    """Reads or writes a fixed list of registers in one ``uc_reg_*_batch`` call."""

    def __init__(self, lib: object, handle: object, ids: tuple[int, ...]) -> None:
        n = len(ids)
        self._h, self._n = handle, ctypes.c_int32(n)
        self._ids = (ctypes.c_int32 * n)(*ids)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        self._read = _raw(lib, "uc_reg_read_batch")
        self._write = _raw(lib, "uc_reg_write_batch")

    def read(self) -> list[int]:
        self._read(self._h, self._ids, self._ptrs, self._n)
        return self._vals[:]

    def write(self, values: list[int]) -> None:
        self._vals[:] = values
        self._write(self._h, self._ids, self._ptrs, self._n)
