"""Kernel inputs for the CLI: a source, tree revision, patch, object or vmlinux → a ``Target``.

Glue between ``sources`` (text), ``detect`` (which era's rules), the assembler backends and
``target.Target``.  A ``KernelTarget`` remembers its ``Detection`` so the CLI can pick the
routine the kernel would have called, among those the file really defines (a real v6.4+
copy_user_64.S has rep_movs_alternative only; its caller is inlined C).

get_user helpers (getuser.S) take their argument in rax and return the value in rdx and
0 / -EFAULT in eax (kernel-facts §4b), so they have their own small runner.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

from emu.kernel import outcome
from emu.build.detect import GET_USER_SIZES, Detection, detect
from emu.kernel.eras import ERAS, Era, Routine
from emu.errors import UsageError
from emu.build.assemble import AsmConfig
from emu.core.machine import Buffers, Call, Machine, State
from emu.kernel.outcome import Fault
from emu.kernel.policy import Kernel
from emu.build.sources import COPY_USER, DEBIAN_VERSIONS, Source, apply_patches, debian_file, read_file, \
    read_rev
from emu.build.target import Settings, Target

EFAULT = 14
#: --assembler values: GNU as (reference) and the keystone backend (keystone_backend.py).
ASSEMBLER_NAMES = ("gas", "keystone")


class KernelTarget(Target):
    """A ``Target`` built from a kernel input, with the era detection that configured it."""

    def __init__(self, src: Source, detection: Detection, cpu: frozenset[str],
                 assembler: str = "gas", count_insns: bool = False) -> None:
        if assembler not in ASSEMBLER_NAMES:
            raise UsageError(f"unknown assembler '{assembler}' (known: "
                             f"{', '.join(ASSEMBLER_NAMES)})")
        if assembler == "keystone":
            from emu.build.keystone import KeystoneAssembler
            era = detection.era
            ks = KeystoneAssembler()
            if not ks.available():
                raise UsageError("--assembler keystone: the keystone-engine package is not "
                                 "installed (pip install keystone-engine)")
            self.name, self.settings, self.cpu = src.name, Settings.of(era), cpu
            self.image = ks.assemble_image(src.text, AsmConfig(int(era.encoding), era.ex_layout,
                                                               cpu), src.name,
                                           encoding=era.encoding, layout_id=era.ex_layout)
            self.machine = Machine(self.image, count_insns=count_insns)
            self.kernel = Kernel(self.image.extable, self.settings.severity, self.image.read)
        else:
            super().__init__(src.text, src.name, Settings.of(detection.era), cpu, assembler,
                             count_insns)
        self.source = src
        self.detection = detection

    def run(self, routine: Routine, bufs: Buffers, *, budget: int | None = None):  # type: ignore[no-untyped-def, override]
        if routine.name in GET_USER_SIZES:
            raise UsageError(f"{routine.name} is a get_user helper (address in rax, value in "
                             "rdx): run it with `emu run`, not as a copy routine")
        return super().run(routine, bufs, budget=budget)

    def routine_for(self, name: str | None, cpu: frozenset[str]) -> Routine:
        """The routine ``--routine`` names, else the one the kernel would call on ``cpu``."""
        det = self.detection
        if name:
            self.image.symbol(name)
            for r in det.routines:
                if r.name == name:
                    return r
            if name in GET_USER_SIZES:
                return Routine(name, len_reg="rax", ret_reg="eax")
            return Routine(name)
        if not det.routines and not det.get_user:
            funcs = ", ".join(s.name for s in self.image.functions())
            raise UsageError(f"{self.name}: --routine is required for a source file "
                             f"(functions: {funcs})")
        if det.get_user and not det.routines:
            return Routine(det.get_user[0], len_reg="rax", ret_reg="eax")
        return det.select_routine(cpu)


_CACHE: dict[tuple[str, str, frozenset[str], str, bool], KernelTarget] = {}


def kernel_target(src: Source, cpu: frozenset[str], *, era: str | None = None,
                  assembler: str = "gas", count_insns: bool = False) -> KernelTarget:
    """Detect the era of ``src`` (or use ``era``) and build its target, cached."""
    det = detect(src.text, name=src.name, forced=era)
    key = (hashlib.sha256(src.text.encode()).hexdigest(), det.era.key, cpu, assembler,
           count_insns)
    t = _CACHE.get(key)
    if t is None or t.name != src.name:
        t = _CACHE[key] = KernelTarget(src, det, cpu, assembler, count_insns)
    return t


# ---- command line ------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The kernel-input options shared by ``run`` and ``diff``."""
    p.add_argument("--tree", metavar="DIR",
                   help="a kernel git tree; files are read with git show REV:PATH (for diff, "
                        "the variants are revisions)")
    p.add_argument("--rev", metavar="REV", help="revision to read from --tree (run; default HEAD)")
    p.add_argument("--file", metavar="PATH", default=None,
                   help=f"file inside the tree (default {COPY_USER})")
    p.add_argument("--patch", metavar="FILE", action="append", default=[],
                   help="apply an mbox (like git am) or a plain diff (like git apply) first; "
                        "repeat for a series, applied in order.  For diff, adds the last "
                        "variant with the patches applied as one more variant")
    if not p.prog.endswith(" diff"):
        p.add_argument("--object", metavar="FILE.o", help="run a built relocatable object "
                       "(kbuild .o) instead of assembling a source (for diff: name .o files "
                       "as variants)")
        p.add_argument("--vmlinux", metavar="FILE", help="run a linked kernel image with "
                       "symbols (for diff: name variants vmlinux:FILE)")
    p.add_argument("--assembler", default="gas", help="assembler backend: gas (default) "
                   "or keystone")


def uses_inputs(a: argparse.Namespace) -> bool:
    return bool(getattr(a, "tree", None) or getattr(a, "patch", None))


def source_for(spec: str | None, a: argparse.Namespace) -> Source:
    """The source a variant spec names: a tree revision, ``debian:6.1``, or a file."""
    tree = getattr(a, "tree", None)
    path = getattr(a, "file", None) or COPY_USER
    if tree:
        if a.cmd == "run":
            return read_rev(tree, getattr(a, "rev", None) or "HEAD", spec or path)
        if spec is None:
            raise UsageError("diff --tree needs revisions to compare (e.g. v5.9 v5.17 v6.4)")
        return read_rev(tree, spec, path)
    if getattr(a, "rev", None):
        raise UsageError("--rev needs --tree DIR")
    if spec is None:
        raise UsageError(f"{a.cmd}: name a source (.S file, era key, or debian:VERSION)")
    if spec.startswith("debian:"):
        version = spec.split(":", 1)[1]
        if version not in DEBIAN_VERSIONS:
            raise UsageError(f"'{spec}': known Debian sources are "
                             f"{', '.join('debian:' + v for v in DEBIAN_VERSIONS)}")
        p = debian_file(version, getattr(a, "file", None) or COPY_USER)
        s = read_file(str(p))
        return Source(s.text, f"debian-{version}:{p.name}", str(p))
    if not Path(spec).suffix and not Path(spec).exists():
        raise UsageError(f"'{spec}' is neither an era ({', '.join(ERAS)}) nor a .S file")
    return read_file(spec)


def variant(spec: str | None, a: argparse.Namespace, cpu: frozenset[str], count: bool = False,
            patches: list[str] | None = None) -> tuple[str, KernelTarget]:
    """A labelled target for one variant spec (patches: those of ``--patch`` by default)."""
    obj = getattr(a, "object", None) if a.cmd == "run" else None
    lnk = getattr(a, "vmlinux", None) if a.cmd == "run" else None
    if spec and spec.endswith(".o"):
        obj = spec
    elif spec and spec.startswith("vmlinux:"):
        lnk = spec.split(":", 1)[1]
    if obj or lnk:
        if spec and a.cmd == "run" and (getattr(a, "object", None) or getattr(a, "vmlinux", None)):
            raise UsageError("run: give either a source or --object/--vmlinux, not both")
        if a.patch or getattr(a, "tree", None):
            raise UsageError("--patch and --tree apply to sources, not to built objects")
        from emu.build.objects import built_target
        bt = built_target(obj or lnk, linked=bool(lnk), cpu=cpu, era=getattr(a, "era", None),
                          routine=getattr(a, "routine", None), count_insns=count)
        return f"{bt.name} ({bt.detection.era.key})", bt
    src = source_for(spec, a)
    src = apply_patches(src, a.patch if patches is None else patches)
    t = kernel_target(src, cpu, era=getattr(a, "era", None),
                      assembler=getattr(a, "assembler", "gas"), count_insns=count)
    return f"{src.name} ({t.detection.era.key})", t


# ---- get_user ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GetUserResult:
    """One call of a __get_user_N helper.

    ``err`` is eax as a signed int (0 or -EFAULT), ``value`` rdx masked to the access size,
    ``expected`` the user bytes at the address.  ``ok`` holds when the helper either read the
    right value and returned 0, or returned -EFAULT with rdx cleared.
    """

    name: str
    state: State
    err: int | None
    value: int | None
    expected: int
    faults: tuple[Fault, ...]
    message: str = ""

    @property
    def verdict(self) -> str:
        if self.state is not State.RETURNED:
            return self.state.value
        if self.err == 0:
            return "ok" if self.value == self.expected else "wrong_value"
        if self.err == -EFAULT:
            return "ok" if self.value == 0 else "efault_with_value"
        return "bad_error_code"

    def to_json(self) -> dict[str, object]:
        return {"routine": self.name, "state": self.state.value, "err": self.err,
                "value": None if self.value is None else hex(self.value),
                "expected": hex(self.expected), "verdict": self.verdict,
                "message": self.message, "faults": [f.to_json() for f in self.faults]}


def is_get_user(name: str) -> bool:
    return name in GET_USER_SIZES


def run_get_user(t: Target, name: str, bufs: Buffers) -> GetUserResult:
    """Call ``name`` with rax = the user source address of ``bufs`` (direction "from")."""
    if bufs.direction != "from":
        raise UsageError(f"{name} reads user memory: --direction must be 'from'")
    size = GET_USER_SIZES[name]
    if bufs.length < size:
        raise UsageError(f"{name} reads {size} bytes: --len must be at least {size}")
    entry = t.image.symbol(name).addr
    raw = t.machine.run(Call(entry, (("rax", bufs.src),)), bufs, t.kernel)
    o = outcome.build(raw, bufs, "eax", t.image.symbolize)
    regs = dict(raw.regs)
    src = raw.src_window[bufs.src_align:bufs.src_align + size]
    err = value = None
    if raw.state is State.RETURNED:
        e = regs["rax"] & 0xFFFFFFFFFFFFFFFF
        err = e - (1 << 64) if e >> 63 else e
        value = regs["rdx"] & ((1 << (8 * size)) - 1)
    return GetUserResult(name, raw.state, err, value, int.from_bytes(src, "little"),
                         o.faults, raw.message)


def routine_for(t: Target, era: Era | None, name: str | None, cpu: frozenset[str]) -> Routine:
    """The routine ``--routine NAME`` names, or the one the era's CPU selection calls."""
    if isinstance(t, KernelTarget):
        return t.routine_for(name, cpu)
    if era is not None:
        return era.routine(name) if name else era.select_routine(cpu)
    if not name:
        funcs = ", ".join(s.name for s in t.image.functions())
        raise UsageError(f"{t.name}: --routine is required for a source file (functions: {funcs})")
    t.image.symbol(name)
    return Routine(name)
