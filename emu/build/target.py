"""A runnable target: one source assembled for one era and CPU, with its machine and kernel.

This is where the stages meet: source text → object (``assemble``) → ``Image`` → ``Machine``
+ ``Kernel`` policy → ``Outcome``.  Targets are cached per (source text, era settings, CPU), so
a diff or sweep assembles each variant once and reuses one Unicorn instance per target.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from emu.kernel import outcome
from emu.build.assemble import AsmConfig, get_assembler
from emu.kernel.eras import ERAS, Era, Routine, cpu_name
from emu.errors import UsageError
from emu.kernel.extable import Encoding
from emu.build.elf import load_object
from emu.kernel.image import Image
from emu.core.machine import Buffers, Call, Checkpoint, FastForward, Machine
from emu.kernel.outcome import Outcome
from emu.kernel.policy import Kernel, Severity

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Settings:
    """The kernel-version facts a source is assembled and judged with."""

    encoding: Encoding
    ex_layout: int
    severity: Severity

    @classmethod
    def of(cls, era: Era) -> Settings:
        return cls(era.encoding, era.ex_layout, era.severity)


class Target:
    """One assembled source on one CPU, ready to run cases.

    Args:
        text: the .S source.
        name: its file name (for messages).
        settings: extable encoding, EX_TYPE layout, severity rules.
        cpu: CPU features (REP_GOOD, ERMS, FSRM) for the ALTERNATIVE sites.
        assembler: backend name.
        count_insns: count instructions (slower).
    """

    def __init__(self, text: str, name: str, settings: Settings, cpu: frozenset[str],
                 assembler: str = "gas", count_insns: bool = False) -> None:
        self.name = name
        self.settings = settings
        self.cpu = cpu
        obj = get_assembler(assembler).assemble(
            text, AsmConfig(int(settings.encoding), settings.ex_layout, cpu), name)
        self.image: Image = load_object(obj, encoding=settings.encoding,
                                        layout_id=settings.ex_layout, name=name)
        self.machine = Machine(self.image, count_insns=count_insns)
        self.kernel = Kernel(self.image.extable, settings.severity, self.image.read)
        self._ff: dict[tuple[object, ...], FastForward | None | object] = {}
        self._calls: dict[tuple[object, ...], Call] = {}   # (routine, placement) → Call

    def run(self, routine: Routine, bufs: Buffers, *, budget: int | None = None,
            fast_forward: bool = False) -> Outcome:
        """Call ``routine`` on the case ``bufs`` and judge the result.

        Args:
            routine: what to call and how.
            bufs: the case.
            budget: instruction limit (default: the machine's).
            fast_forward: start a faulting case from the checkpoint of its clean run just
                before the first load that meets the fault (``Machine.record``); the
                outcome is the same as a full run, which the tests check across eras.
        """
        call = self._call(routine, bufs)
        kwargs: dict[str, int] = {} if budget is None else {"budget": budget}
        start = self.checkpoint(routine, bufs, budget) if fast_forward else None
        raw = self.machine.run(call, bufs, self.kernel, start=start, **kwargs)
        return outcome.build(raw, bufs, routine.ret_reg, self.image.symbolize)

    def _call(self, routine: Routine, bufs: Buffers) -> Call:
        key = (routine.name, routine.len_reg, routine.caller_stac, bufs.direction,
               bufs.length, bufs.src_align, bufs.dst_align)
        try:
            calls = self._calls
        except AttributeError:           # subclasses that build their own image skip __init__
            calls = self._calls = {}
        call = calls.get(key)
        if call is None:
            entry = self.image.symbol(routine.name).addr
            regs = (("rdi", bufs.dst), ("rsi", bufs.src), (routine.len_reg, bufs.length),
                    ("rax", 0))
            call = Call(entry, regs, stac=routine.caller_stac)
            if len(calls) >= 256:        # a sweep unit reuses a few placements; keep RSS flat
                calls.clear()
            calls[key] = call
        return call

    def checkpoint(self, routine: Routine, bufs: Buffers,
                   budget: int | None = None) -> Checkpoint | None:
        """Where a fast-forwarded run of ``bufs`` starts (None: from the entry point).

        The clean run of the same call is recorded once per (routine, direction, length,
        alignments) and kept for the next cases of a sweep.
        """
        if not (bufs.poison or bufs.unmapped) or self.machine.count_insns:
            return None
        key = (routine.name, bufs.direction, bufs.length, bufs.src_align, bufs.dst_align, budget)
        ff = self._ff.get(key, _MISSING)
        if ff is _MISSING:
            clean = Buffers(bufs.direction, bufs.length, bufs.src_align, bufs.dst_align)
            if len(self._ff) >= 16:
                self._ff.pop(next(iter(self._ff)))
            kwargs = {} if budget is None else {"budget": budget}
            ff = self._ff[key] = self.machine.record(self._call(routine, clean), clean,
                                                     self.kernel, **kwargs)
        return ff.start_for(bufs) if ff is not None else None  # type: ignore[union-attr]

    def describe(self) -> str:
        return f"{self.name} [{cpu_name(self.cpu)}]"


_CACHE: dict[tuple[str, Settings, frozenset[str], str, bool], Target] = {}


def read_source(path: str) -> str:
    """Read a .S file, with a one-line error if it cannot be read (``sources.read_file``)."""
    from emu.build.sources import read_file
    return read_file(path).text


def get_target(text: str, name: str, settings: Settings, cpu: frozenset[str],
               assembler: str = "gas", count_insns: bool = False) -> Target:
    key = (hashlib.sha256(text.encode()).hexdigest(), settings, cpu, assembler, count_insns)
    t = _CACHE.get(key)
    if t is None:
        t = _CACHE[key] = Target(text, name, settings, cpu, assembler, count_insns)
    return t


def era_target(era: Era, cpu: frozenset[str], *, count_insns: bool = False) -> Target:
    """The bundled source of an era, assembled for ``cpu``."""
    return get_target(read_source(era.path), Path(era.path).name, Settings.of(era), cpu,
                      count_insns=count_insns)


def resolve_era(key: str | None) -> Era | None:
    if key is None:
        return None
    era = ERAS.get(key.upper())
    if era is None:
        raise UsageError(f"unknown era '{key}' (known: {', '.join(ERAS)})")
    return era
