"""A runnable target: one kernel image configured for one era's rules and one CPU.

This is where the stages meet: an ``Image`` (assembled from source text by a registered
backend, or loaded from a built object) → ``Machine`` + ``Kernel`` policy → ``Outcome``.
There is one way to make a target, ``Target(image, settings, cpu, ...)``; ``emu.build.resolve``
turns every kind of source spec into one.  Assembled targets are cached per (source text, era
settings, CPU, backend) in a bounded cache, so a diff or sweep assembles each variant once and
reuses one Unicorn instance per target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from emu.build.assemble import AsmConfig, get_assembler
from emu.build.elf import load_object
from emu.caching import Bounded
from emu.core.machine import Buffers, Call, Checkpoint, FastForward, Machine, RawRun
from emu.errors import UsageError
from emu.kernel import conventions, helpers, outcome
from emu.kernel.conventions import SIZES, Oracle, Routine
from emu.kernel.eras import Era, cpu_name
from emu.kernel.extable import Encoding
from emu.kernel.helpers import HelperResult
from emu.kernel.image import Image
from emu.kernel.outcome import Outcome
from emu.kernel.policy import Kernel
from emu.kernel.severity import MceRules, Severity

_MISSING = object()


def _recording_bytes(ff: Any) -> int:
    """The memory a recording (a ``FastForward``, or None for a run that cannot be
    fast-forwarded) holds."""
    return 1 if ff is None else ff.nbytes()

#: Clean-run recordings for fast-forward, by (target, routine, direction, length,
#: alignments, budget), shared by every target of the process.  A recording of a 16 KiB
#: copy holds a checkpoint per line (the CPU context and the dirty pages: ~1-2 MB); a sweep
#: runs a cell's offsets in a row, so a few recordings serve it.  One bound for the process,
#: not 16 per target (issue 17: 16 per target × 24 targets grew a worker to 1 GB).
#: A recording of a 64 KiB copy holds ~12 MB (1,040 checkpoints of ~5.6 KB of context and a
#: 4 KiB page each), so the bound is also by bytes: 8 recordings of 64 KiB copies held
#: 96 MB and made the largest ``make bench-sweep`` worker 158 MB (issue 19).
RECORDINGS_BUDGET = 32 << 20
_RECORDINGS: Bounded[tuple[object, ...], Any] = Bounded(
    8, "target.recordings", weigh=_recording_bytes, budget=RECORDINGS_BUDGET)


@dataclass(frozen=True, slots=True)
class Settings:
    """The kernel-version facts a source is assembled and judged with."""

    encoding: Encoding
    ex_layout: int
    severity: Severity
    how: str = ""       # how emu knew the #MC rules (``MceRules.how``)

    @classmethod
    def of(cls, era: Era, severity: Severity | None = None,
           rules: MceRules | None = None, how: str | None = None) -> Settings:
        """An era's settings; #MC rules from ``severity`` (``--mce-rules``), else ``rules``
        (a tree's severity.c), else the era's (``how`` says why)."""
        if severity is not None:
            return cls(era.encoding, era.ex_layout, severity, "--mce-rules")
        if rules is not None:
            return cls(era.encoding, era.ex_layout, rules.severity, rules.how)
        return cls(era.encoding, era.ex_layout, era.severity, how or f"era {era.key}'s rules")


class Catalog(Protocol):
    """Which routines a target offers and which one the kernel calls on a CPU
    (an ``Era`` for a bundled source, a ``Detection`` for a real kernel file)."""

    routines: tuple[Routine, ...]

    def select_routine(self, cpu: frozenset[str]) -> Routine: ...


# ---- assembler backends ------------------------------------------------------------------

Backend = Callable[[str, str, Settings, frozenset[str]], Image]


def _gas(text: str, name: str, s: Settings, cpu: frozenset[str]) -> Image:
    # The object is cached only once it loads: a refused input leaves nothing in the cache.
    return get_assembler("gas").assemble_accepted(
        text, AsmConfig(int(s.encoding), s.ex_layout, cpu), name,
        lambda obj: load_object(obj, encoding=s.encoding, layout_id=s.ex_layout, name=name))


def _keystone(text: str, name: str, s: Settings, cpu: frozenset[str]) -> Image:
    from emu.build.keystone import KeystoneAssembler
    ks = KeystoneAssembler()
    if not ks.available():
        raise UsageError("--assembler keystone: the keystone-engine package is not installed "
                         "(pip install keystone-engine)")
    return ks.assemble_image(text, AsmConfig(int(s.encoding), s.ex_layout, cpu), name,
                             encoding=s.encoding, layout_id=s.ex_layout)


#: Source text → Image, by ``--assembler`` name.  GNU as is the reference.
BACKENDS: dict[str, Backend] = {"gas": _gas, "keystone": _keystone}


def assemble_image(text: str, name: str, settings: Settings, cpu: frozenset[str],
                   assembler: str = "gas") -> Image:
    """Assemble ``text`` with the named backend into an image at kernel addresses."""
    backend = BACKENDS.get(assembler)
    if backend is None:
        raise UsageError(f"unknown assembler '{assembler}' (known: {', '.join(BACKENDS)})")
    return backend(text, name, settings, cpu)


# ---- the target --------------------------------------------------------------------------

class Target:
    """One image on one CPU under one era's rules, ready to run cases.

    Args:
        image: the code, symbols and exception table.
        settings: extable encoding, EX_TYPE layout, severity rules.
        cpu: CPU features (REP_GOOD, ERMS, FSRM) the ALTERNATIVE sites were resolved for.
        name: label for messages (default: the image's name).
        catalog: the routines on offer and the CPU's choice (an Era or a Detection).
        count_insns: count instructions (slower).
        era: the era whose rules apply (for labels and the caller model).
    """

    def __init__(self, image: Image, settings: Settings, cpu: frozenset[str], *,
                 name: str | None = None, catalog: Catalog | None = None,
                 count_insns: bool = False, era: Era | None = None,
                 detection: Any = None) -> None:
        self.image = image
        self.name = name or image.name
        self.settings = settings
        self.cpu = cpu
        self.catalog = catalog
        self.era = era
        self.detection = detection
        self.machine = Machine(image, count_insns=count_insns, smap="SMAP" in cpu,
                               smep="SMEP" in cpu)
        self.kernel = Kernel(image.extable, settings.severity, image.read)
        self._calls: Bounded[tuple[object, ...], Call] = Bounded(256, "target.calls")

    @property
    def rules(self) -> MceRules:
        """The #MC rules this target is judged by, and how emu knew."""
        return MceRules(self.settings.severity,
                        self.settings.how or (f"era {self.era.key}'s rules" if self.era
                                              else "default"))

    def routine_for(self, name: str | None, cpu: frozenset[str] | None = None,
                    convention: str | None = None) -> Routine:
        """The routine ``--routine NAME`` names, else the one the kernel calls on ``cpu``.

        A named routine is called by the convention emu knows for it
        (``emu.kernel.conventions.KNOWN``), else by ``convention`` (``--convention``).

        Raises:
            ImageError: ``name`` is not a symbol of the image.
            UsageError: emu does not know ``name`` and no convention is given, or the
                convention contradicts the known one; or no name and nothing says which
                routine the kernel would call.
        """
        cpu = self.cpu if cpu is None else cpu
        cat = self.catalog
        if name:
            if isinstance(cat, Era):
                r = cat.routine(name)
                return conventions.routine(r.name, convention)
            self.image.symbol(name)
            return conventions.routine(name, convention)
        if convention is not None:
            raise UsageError("--convention applies to a routine named with --routine")
        if cat is not None and cat.routines:
            return cat.select_routine(cpu)
        funcs = ", ".join(s.name for s in self.image.functions())
        raise UsageError(f"{self.name}: --routine is required for a source file "
                         f"(functions: {funcs})")

    def run(self, routine: Routine, bufs: Buffers, *, budget: int | None = None,
            fast_forward: bool = False, every_checkpoint: bool = False) -> Outcome:
        """Call a copy or clear ``routine`` on the case ``bufs`` and judge the result.

        Args:
            routine: what to call and how.
            bufs: the case.
            budget: instruction limit (default: the machine's).
            fast_forward: start a faulting case from the checkpoint of its clean run just
                before the first load that meets the fault (``Machine.record``); the
                outcome is the same as a full run, which the tests check across eras.
                A checkpoint inside a bulk ``rep movs``/``rep stos`` saves nothing (the
                run from the entry gets there in one bulk step as well) and is skipped.
            every_checkpoint: with ``fast_forward``, start from such checkpoints too (the
                tests, which check that they give the full run's outcome as well).

        Raises:
            UsageError: a get_user / put_user helper (``call`` runs those), or a case the
                routine's convention cannot take.
        """
        conv = routine.convention
        if conv.oracle in (Oracle.GET_USER, Oracle.PUT_USER):
            raise UsageError(f"{routine.name} takes the {conv.name} convention "
                             f"({conv.summary}): emu run and emu check run it; emu sweep and "
                             "emu fuzz run copy and clear routines")
        self.check_case(routine, bufs)
        call = self._call(routine, bufs)
        start = self.checkpoint(routine, bufs, budget, every_checkpoint) if fast_forward else None
        if budget is None:
            raw = self.machine.run(call, bufs, self.kernel, start=start)
        else:
            raw = self.machine.run(call, bufs, self.kernel, start=start, budget=budget)
        return self.judge(routine, raw, bufs)  # type: ignore[return-value]

    def judge(self, routine: Routine, raw: RawRun, bufs: Buffers) -> Outcome | HelperResult:
        """Judge a run of ``routine`` with its convention's oracle."""
        conv = routine.convention
        if conv.oracle is Oracle.CLEAR:
            return outcome.build_clear(raw, bufs, routine.ret_reg, self.image.symbolize)
        if conv.oracle is Oracle.COPY:
            return outcome.build(raw, bufs, routine.ret_reg, self.image.symbolize)
        size = routine.size or bufs.length
        return helpers.judge(raw, bufs, routine.name, conv, size, self.image.symbolize)

    def registers(self, routine: Routine, bufs: Buffers) -> tuple[tuple[str, int], ...]:
        """The registers the caller sets for ``routine`` on the case ``bufs``."""
        conv = routine.convention
        value = helpers.put_value(bufs, routine.size or bufs.length) if conv.sized else 0
        return conv.registers(dst=bufs.dst, src=bufs.src, length=bufs.length, user=bufs.src,
                              value=value)

    def call(self, routine: Routine, bufs: Buffers) -> Outcome | HelperResult:
        """Call ``routine`` by its convention and judge it with the convention's oracle:
        an ``Outcome`` for copy and clear routines, a ``HelperResult`` for get_user and
        put_user helpers.

        Raises:
            UsageError: the case does not fit the convention (a helper's size, a direction).
        """
        conv = routine.convention
        if conv.oracle not in (Oracle.GET_USER, Oracle.PUT_USER):
            return self.run(routine, bufs)
        self.check_case(routine, bufs)
        raw = self.machine.run(self._call(routine, bufs), bufs, self.kernel)
        return self.judge(routine, raw, bufs)

    def check_case(self, routine: Routine, bufs: Buffers) -> int:
        """Refuse a case the convention cannot take; returns the access size of a sized one
        (else the length)."""
        conv = routine.convention
        if conv.two_buffers:
            return bufs.length
        if bufs.direction != "from":
            raise UsageError(f"{routine.name} takes one user buffer ({conv.name} convention): "
                             "--direction does not apply (the buffer is placed by "
                             "--src-align)")
        if not conv.sized:
            return bufs.length
        size = routine.size or bufs.length
        if size not in SIZES:
            raise UsageError(f"{routine.name}: a {conv.name} helper moves 1, 2, 4 or 8 bytes; "
                             f"--len {bufs.length} is not one of them")
        if bufs.length < size:
            raise UsageError(f"{routine.name} accesses {size} bytes: --len must be at least "
                             f"{size}")
        return size

    def _call(self, routine: Routine, bufs: Buffers) -> Call:
        # names, not the Routine: hashing a Convention record costs ~1 µs a case
        key = (routine.name, routine.convention.name, routine.size, bufs.direction,
               bufs.length, bufs.src_align, bufs.dst_align)
        call = self._calls.get(key)
        if call is None:
            entry = self.image.symbol(routine.name).addr
            call = self._calls[key] = Call(entry, self.registers(routine, bufs),
                                           stac=routine.caller_stac)
        return call

    def checkpoint(self, routine: Routine, bufs: Buffers, budget: int | None = None,
                   every: bool = False) -> Checkpoint | None:
        """Where a fast-forwarded run of ``bufs`` starts (None: from the entry point).

        The clean run of the same call is recorded once per (routine, direction, length,
        alignments) and kept for the next cases of a sweep.  A checkpoint that saves
        nothing (``Checkpoint.at_bulk_string``) gives None unless ``every``.
        """
        if not (bufs.poison or bufs.unmapped) or self.machine.count_insns:
            return None
        key = (self, routine.name, bufs.direction, bufs.length, bufs.src_align,
               bufs.dst_align, budget)
        ff = _RECORDINGS.get(key, _MISSING)
        if ff is _MISSING:
            clean = Buffers(bufs.direction, bufs.length, bufs.src_align, bufs.dst_align)
            kwargs = {} if budget is None else {"budget": budget}
            ff = _RECORDINGS[key] = self.machine.record(self._call(routine, clean), clean,
                                                        self.kernel, **kwargs)
        return ff.start_for(bufs, every) if ff is not None else None  # type: ignore[union-attr]

    def describe(self) -> str:
        return f"{self.name} [{cpu_name(self.cpu)}]"


#: Assembled targets by (text digest, settings, CPU, backend, counting, catalog).  Each holds
#: a Unicorn instance (~7-10 MB with its translations), so the bound keeps a long
#: multi-variant sweep's RSS flat (issue 17: 48 targets let a worker pass 1 GB).  A sweep
#: runs one path's cells in a row, so a few suffice; a miss costs a new Unicorn (the object
#: comes from the disk cache).
_CACHE: Bounded[tuple[Any, ...], Target] = Bounded(12, "target.targets")


def read_source(path: str) -> str:
    """Read a .S file, with a one-line error if it cannot be read (``sources.read_file``)."""
    from emu.build.sources import read_file
    return read_file(path).text


def get_target(text: str, name: str, settings: Settings, cpu: frozenset[str],
               assembler: str = "gas", count_insns: bool = False, *,
               catalog: Catalog | None = None, era: Era | None = None,
               detection: Any = None) -> Target:
    """The target of a source text, assembled once per (text, settings, CPU, backend)."""
    key = (hashlib.sha256(text.encode()).hexdigest(), settings, cpu, assembler, count_insns,
           catalog, era, name)
    t = _CACHE.get(key)
    if t is None:
        img = assemble_image(text, name, settings, cpu, assembler)
        t = _CACHE[key] = Target(img, settings, cpu, name=name, catalog=catalog,
                                 count_insns=count_insns, era=era, detection=detection)
    return t


def era_target(era: Era, cpu: frozenset[str], *, count_insns: bool = False,
               severity: Severity | None = None) -> Target:
    """The bundled source of an era, assembled for ``cpu``."""
    return get_target(read_source(era.path), Path(era.path).name, Settings.of(era, severity),
                      cpu, count_insns=count_insns, catalog=era, era=era)
