"""The silicon differential for #PF: the same assembled routine on the real CPU and in emu.

``harness.c`` (next to this file) is linked with the exact object emu assembled for an era
and CPU, with stac/clac rewritten to NOPs, and runs cases natively: a PROT_NONE page supplies
the #PF and a SIGSEGV handler applies the era's ``__ex_table`` fixup.  This module

1. builds that harness (``patch_privileged``, ``build_harness``),
2. runs a batch of cases through it (``Harness.run``),
3. runs the same cases in emu (``emu_behaviour``), and
4. reduces both sides to one comparable ``Behaviour``: state, return value, the faults
   (RIP as section+offset, address as window+offset) and the exact destination window.

Nothing here decides what a routine *should* return: the CPU is the oracle and emu must
agree with it.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from emu.core import layout as L
from emu.build.assemble import AsmConfig, get_assembler
from emu.kernel.conventions import GET_USER, Routine
from emu.kernel.eras import cpu_name
from emu.errors import EmulationError
from emu.build.elf import load_object
from emu.kernel.image import Image
from emu.core.machine import WINDOW_SPAN, Buffers, Call, FaultHandler, State, source_pattern
from emu.build.target import Target

HERE = Path(__file__).resolve().parent
HARNESS_C = HERE / "harness.c"
PATTERN = source_pattern(WINDOW_SPAN)
NOP3 = b"\x0f\x1f\x00"              # nopl (%rax): same length as stac/clac
PRIVILEGED = {b"\x0f\x01\xcb": "stac", b"\x0f\x01\xca": "clac"}
#: Native signal → the fault kind emu reports for the same CPU exception.
SIGNAL_KIND = {11: "pf", 4: "ud", 7: "bus", 5: "trap", 8: "de"}

# ---- building the harness ------------------------------------------------------------------


def object_for(target: Target, text: str) -> bytes:
    """The object ``target`` runs: assembled again with the same configuration (the
    assembler's cache returns the same bytes), and checked against the target's image."""
    s = target.settings
    obj = get_assembler().assemble(text, AsmConfig(int(s.encoding), s.ex_layout, target.cpu),
                                   target.name)
    img = load_object(obj, encoding=s.encoding, layout_id=s.ex_layout, name=target.name)
    mine = [(x.name, x.addr, x.data) for x in img.sections]
    theirs = [(x.name, x.addr, x.data) for x in target.image.sections]
    if mine != theirs:
        raise AssertionError(f"{target.name}: re-assembled object differs from the one emu runs "
                             "(AsmConfig in emu/target.py changed?)")
    return obj


def patch_privileged(obj: bytes) -> tuple[bytes, dict[str, int]]:
    """Rewrite every stac/clac in the executable sections of ``obj`` to a 3-byte NOP.

    Instructions are found by disassembling each section from its start, so only real
    instruction boundaries are patched; the section must decode completely.  Offsets do not
    move, so every label, relocation and extable entry stays valid.

    Returns:
        the patched object and how many of each instruction were replaced.
    """
    out = bytearray(obj)
    counts = {"stac": 0, "clac": 0}
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    elf = ELFFile(io.BytesIO(obj))
    for sec in elf.iter_sections():
        if not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR or sec["sh_type"] != "SHT_PROGBITS":
            continue
        data = sec.data()
        base = int(sec["sh_offset"])
        end = 0
        for addr, size, _mn, _ops in md.disasm_lite(data, 0):
            name = PRIVILEGED.get(data[addr:addr + size])
            if name:
                out[base + addr:base + addr + size] = NOP3
                counts[name] += 1
            end = addr + size
        if end != len(data):
            raise AssertionError(f"section {sec.name} does not disassemble past offset {end:#x}")
    return bytes(out), counts


_MAP_LINE = re.compile(r"^ (?P<sec>[.\w]+)\s*\n?\s+0x(?P<addr>[0-9a-f]+)\s+0x(?P<size>[0-9a-f]+)"
                       r"\s+(?P<file>\S+)$", re.M)


@dataclass
class Harness:
    """A linked native harness for one object."""

    exe: Path
    encoding: int
    layout: int
    #: (section name, start, size) of the object's input sections in the executable.
    sections: list[tuple[str, int, int]]
    patched: dict[str, int]
    #: ud2 stubs standing for the object's undefined symbols: name → address.
    stubs: dict[str, int] = field(default_factory=dict)

    def place(self, addr: int) -> tuple[str, int] | int:
        """An address as (section, offset) in the object, ("stub:NAME", 0), or itself."""
        for name, start, size in self.sections:
            if start <= addr < start + size:
                return name, addr - start
        for name, stub in self.stubs.items():
            if stub <= addr < stub + 2:
                return f"stub:{name}", addr - stub
        return addr

    def run(self, cases: Sequence[tuple[Routine, Buffers]], pattern_file: Path) -> list[Behaviour]:
        """Run cases in one process; one ``Behaviour`` per case, in order."""
        lines = "".join(case_line(r, b) + "\n" for r, b in cases)
        proc = subprocess.run([str(self.exe), str(pattern_file), str(self.encoding),
                               str(self.layout)], input=lines, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise AssertionError(f"harness {self.exe} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}")
        out = proc.stdout.splitlines()
        m = re.fullmatch(r"windows user=([0-9a-f]+) kernel=([0-9a-f]+)", out[0])
        assert m, out[0]
        windows = {"user": int(m[1], 16), "kernel": int(m[2], 16)}
        results = [self._parse(line, r, b, windows) for line, (r, b) in zip(out[1:], cases)]
        if len(results) != len(cases):
            raise AssertionError(f"harness answered {len(results)} of {len(cases)} cases")
        return results

    def _parse(self, line: str, routine: Routine, bufs: Buffers,
               windows: dict[str, int]) -> Behaviour:
        words = line.split(" ")
        state = words[0]
        kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        nf = int(kv["faults"])
        recs = [w for w in words[1:] if "=" not in w]
        faults = []
        for rec in recs:
            rip, addr, sig = rec.split(":")
            faults.append((SIGNAL_KIND.get(int(sig), f"sig{sig}"), self.place(int(rip, 16)),
                           where(int(addr, 16), windows["user"], windows["kernel"], self.place)))
        assert len(faults) == min(nf, 257), line[:200]
        ret = None
        if state == "returned":
            ret = result(routine, {k: int(kv[k], 16) for k in ("rax", "rcx", "rdx")})
        return Behaviour(state, ret, kv["src"] == "changed", tuple(faults), kv["dst"])


def build_harness(obj: bytes, encoding: int, layout: int, workdir: Path, *,
                  patch: bool = True) -> Harness:
    """Patch ``obj`` (unless ``patch`` is false), link it with harness.c (gcc, ld) and
    locate its sections in the executable."""
    patched, counts = patch_privileged(obj) if patch else (obj, {"stac": 0, "clac": 0})
    key = hashlib.sha256(patched + HARNESS_C.read_bytes()).hexdigest()[:16]
    d = workdir / key
    d.mkdir(parents=True, exist_ok=True)
    o, exe, mapf = d / "routines.o", d / "harness", d / "harness.map"
    o.write_bytes(patched)
    # Calls out of the object (e.g. copy_mc_fragile_handle_tail, C code in the kernel) land on
    # a ud2, as in emu, where an undefined symbol is a ud2 stub.
    undefined = sorted(_undefined(patched) - HARNESS_SYMBOLS)
    stubs_s = d / "stubs.S"
    stubs_s.write_text(".text\n" + "".join(
        f".globl {n}\n.type {n},@function\n{n}:\n\tud2\n" for n in undefined)
        + '.section .note.GNU-stack,"",@progbits\n')
    cmd = ["gcc", "-O1", "-g0", "-mno-red-zone", "-no-pie", "-Wall", "-Werror",
           "-Wl,-z,noexecstack", f"-Wl,-Map={mapf}", "-o", str(exe), str(HARNESS_C), str(o),
           str(stubs_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"cannot build the harness: {' '.join(cmd)}\n{proc.stderr}")
    sections = [(m["sec"], int(m["addr"], 16), int(m["size"], 16))
                for m in _MAP_LINE.finditer(mapf.read_text())
                if m["file"] == str(o) and int(m["size"], 16)]
    if not any(s[0] == "__ex_table" for s in sections):
        raise AssertionError(f"{mapf}: the object's __ex_table was not linked")
    with exe.open("rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        stubs = {sym.name: int(sym["st_value"]) for sym in symtab.iter_symbols()
                 if sym.name in undefined}
    return Harness(exe, encoding, layout, sections, counts, stubs)


#: The ex_handler_* functions harness.c defines for the <= v5.15 extable encoding.
HARNESS_SYMBOLS = frozenset(re.findall(r"HANDLER_SYM\((ex_handler_\w+)\)", HARNESS_C.read_text()))


def _undefined(obj: bytes) -> set[str]:
    symtab = ELFFile(io.BytesIO(obj)).get_section_by_name(".symtab")
    return {s.name for s in symtab.iter_symbols() if s["st_shndx"] == "SHN_UNDEF" and s.name}


def is_get_user(routine: Routine) -> bool:
    """A get_user helper: address in rax; eax = 0 / -EFAULT and rdx = the value out."""
    return routine.convention is GET_USER


def result(routine: Routine, regs: dict[str, int]) -> int | tuple[int, int]:
    """The routine's result: eax or rcx for the copies, (rax, rdx) for get_user."""
    if is_get_user(routine):
        return regs["rax"], regs["rdx"]
    return regs["rax"] & 0xFFFFFFFF if routine.ret_reg == "eax" else regs[routine.ret_reg]


def case_line(routine: Routine, b: Buffers) -> str:
    unmapped = ",".join(str(u) for u in b.unmapped) or "-"
    return (f"{routine.name} {routine.len_reg} {b.direction} {b.length} {b.src_align} "
            f"{b.dst_align} {unmapped}")


# ---- the comparable behaviour --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What one case did, in terms both sides can produce.

    ``faults`` holds (kind, RIP as (section, offset), address as (window, offset)); ``dst``
    is the exact destination window (guard pages included) in the run encoding of
    harness.c.
    """

    state: str
    ret: int | tuple[int, int] | None
    src_changed: bool
    faults: tuple[tuple[str, object, object], ...]
    dst: str = field(repr=False)
    #: why emu could not run the case (state "error": emu raised EmulationError)
    message: str = field(default="", compare=False)

    def short(self) -> str:
        if self.state == "error":
            return f"error: {self.message}"
        f = " ".join(f"{k}@{_fmt(rip)}->{_fmt(a)}" for k, rip, a in self.faults[:6])
        more = f" (+{len(self.faults) - 6})" if len(self.faults) > 6 else ""
        return (f"{self.state} ret={self.ret} faults=[{f}{more}] dst={self.dst[:120]}"
                f"{'...' if len(self.dst) > 120 else ''}{' SRC CHANGED' if self.src_changed else ''}")


def _fmt(x: object) -> str:
    if isinstance(x, tuple):
        return f"{x[0]}+{x[1]:#x}"
    return hex(x) if isinstance(x, int) else str(x)


def where(addr: int, user: int, kernel: int,
          place: Callable[[int], tuple[str, int] | int]) -> tuple[str, int] | int:
    """A fault address as (window, offset from the window's first data byte), else as a
    code place (a #UD reports the instruction's address)."""
    for name, base in (("user", user), ("kernel", kernel)):
        if base - 2 * L.PAGE <= addr < base + L.MAX_SPAN + 2 * L.PAGE:
            return name, addr - base
    return place(addr)


def emu_place(img: Image, addr: int) -> tuple[str, int] | int:
    """``Harness.place`` for emu's image."""
    for s in img.sections:
        if s.addr <= addr < s.end:
            return s.name, addr - s.addr
    for name, stub in img.stubs.items():
        if stub <= addr < stub + 2:
            return f"stub:{name}", addr - stub
    return addr


_SHIFTED: dict[int, bytes] = {}


def shifted_source(delta: int) -> bytes:
    """Source window bytes lined up with destination window offsets (0 outside)."""
    s = _SHIFTED.get(delta)
    if s is None:
        n = len(PATTERN)
        s = (PATTERN[delta:] + bytes(min(delta, n)) if delta >= 0
             else bytes(min(-delta, n)) + PATTERN[:max(n + delta, 0)])
        _SHIFTED[delta] = s = s[:n]
    return s


def _prefix(a: bytes, b: bytes) -> int:
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def encode_dst(dst: bytes, delta: int) -> str:
    """The run encoding of harness.c's print_runs, at C-ish speed for the usual shapes."""
    want = shifted_source(delta)
    n = len(dst)
    out: list[str] = []
    w = 0
    while w < n:
        if dst[w] == 0xFF:
            k = len(dst) - w - len(dst[w:].lstrip(b"\xff"))
            out.append(f"F{k}")
        else:
            end = dst.find(b"\xff", w)
            end = n if end < 0 else end
            if dst[w] == want[w]:
                k = _prefix(dst[w:end], want[w:end])
                out.append(f"S{k}")
            else:
                k = 1
                while w + k < end and dst[w + k] != want[w + k]:
                    k += 1
                out.append("O" + dst[w:w + k].hex())
        w += k
    return ",".join(out)


def emu_behaviour(target: Target, routine: Routine, b: Buffers,
                  handler: FaultHandler | None = None, *, fast_forward: bool = False
                  ) -> Behaviour:
    """Run one case in emu and reduce it to a ``Behaviour``.

    ``handler`` replaces the target's kernel policy (the tests use it to check that a wrong
    policy is caught).  ``fast_forward`` starts a faulting copy from the checkpoint of its
    clean run, as ``emu sweep`` does (``Target.checkpoint``)."""
    img = target.image
    entry = img.symbol(routine.name).addr
    regs: tuple[tuple[str, int], ...] = (
        (("rax", b.src),) if is_get_user(routine)
        else (("rdi", b.dst), ("rsi", b.src), (routine.len_reg, b.length), ("rax", 0)))
    start = (target.checkpoint(routine, b) if fast_forward and not is_get_user(routine)
             else None)
    try:
        raw = target.machine.run(Call(entry, regs, stac=routine.caller_stac), b,
                                 handler or target.kernel, start=start)
    except EmulationError as e:
        return Behaviour("error", None, False, (), "", str(e))
    ret = result(routine, dict(raw.regs)) if raw.state is State.RETURNED else None
    faults = []
    place = lambda a: emu_place(img, a)  # noqa: E731
    for rec in raw.faults:
        ev = rec.event
        faults.append((ev.kind.value, place(ev.rip),
                       where(ev.address, L.USER_WINDOW, L.KERNEL_WINDOW, place)))
    src_changed = raw.src_window != PATTERN[L.PAGE:L.PAGE + L.MAX_SPAN]
    return Behaviour(raw.state.value, ret, src_changed, tuple(faults),
                     encode_dst(raw.dst_window, b.src_align - b.dst_align))


# ---- cases ---------------------------------------------------------------------------------


def reproducer(spec: str, cpu: frozenset[str], routine: Routine, b: Buffers) -> str:
    """The ``emu run`` command for one case."""
    u = f" --unmapped {','.join(hex(x) for x in b.unmapped)}" if b.unmapped else ""
    return (f"emu run {spec} --routine {routine.name} --direction {b.direction} "
            f"--len {b.length} --src-align {b.src_align:#x} --dst-align {b.dst_align:#x}{u} "
            f"--cpu {cpu_name(cpu)} --json")


def boundary_case(direction: str, n: int, b: int, kalign: int) -> Buffers:
    """A copy of ``n`` bytes whose user buffer meets a PROT_NONE page after ``b`` bytes
    (``b`` = 0: the first page of the user buffer is not present)."""
    ualign = (L.PAGE - b) % L.PAGE if b else kalign * 3 % 64
    s, d = (ualign, kalign) if direction == "from" else (kalign, ualign)
    return Buffers(direction, n, s, d, unmapped=(b,) if n else ())


def clean_case(direction: str, n: int, ualign: int, kalign: int) -> Buffers:
    s, d = (ualign, kalign) if direction == "from" else (kalign, ualign)
    return Buffers(direction, n, s, d)


def default_cases(routine: Routine, seed: int) -> list[tuple[Routine, Buffers]]:
    """The quick sweep: every length 0..130 and 4096 in both directions, once each: against
    a guard page at a seeded offset (three cases in four) or clean; alignments are seeded
    too.  Plus the seed scenario's 4 KiB copy with the page at offset 0x820 missing."""
    out: list[Buffers] = []
    for direction in ("from", "to"):
        for n in [*range(0, 131), 4096]:
            rng = random.Random(f"{seed}:{direction}:{n}")
            k = rng.randrange(16)
            if n and rng.random() < 0.75:
                out.append(boundary_case(direction, n, rng.randrange(n), k))
            else:
                out.append(clean_case(direction, n, rng.randrange(64), k))
        out.append(Buffers(direction, 4096, 0x7E0, 0, unmapped=(0x820,))
                   if direction == "from" else Buffers(direction, 4096, 0, 0x7E0, unmapped=(0x820,)))
    return [(routine, b) for b in out]


def get_user_cases(routine: Routine, size: int) -> list[tuple[Routine, Buffers]]:
    """A get_user helper reading ``size`` bytes: aligned and misaligned reads in a present
    page, reads that straddle into a missing page after 1..size-1 bytes, and reads from a
    missing page."""
    out: list[Buffers] = []
    for ua in sorted({0, 1, size - 1, 7, 63, L.PAGE - size, L.PAGE - size // 2 - 1}):
        out.append(clean_case("from", size, ua, 0))       # the last two cross a page
    for b in range(size):
        out.append(boundary_case("from", size, b, 0))
    out.append(boundary_case("from", size, 0, 21))        # a missing page, misaligned
    return [(routine, b) for b in out]


def full_cases(routine: Routine) -> list[tuple[Routine, Buffers]]:
    """The slow sweep: every guard-page offset for lengths 0..130 (kernel-side alignment 0 or
    5 by parity), clean copies at several alignments, and 4 KiB copies with the guard page at
    many offsets (one and two missing pages)."""
    out: list[Buffers] = []
    for direction in ("from", "to"):
        for n in range(0, 131):
            for ua, ka in ((0, 0), (1, 7), (7, 1), (63, 8), ((L.PAGE - n // 2) % L.PAGE, 3)):
                out.append(clean_case(direction, n, ua, ka))
            for b in range(n):
                out.append(boundary_case(direction, n, b, 5 * (b & 1)))
        for b in [*range(0, 72), *range(72, 4096, 61), 4095]:
            for ka in (0, 9):
                out.append(boundary_case(direction, 4096, b, ka))
        for ua in (0x7E0, 0xFF9):                  # both pages of the buffer missing
            s, d = (ua, 0) if direction == "from" else (0, ua)
            out.append(Buffers(direction, 4096, s, d, unmapped=(0, L.PAGE - ua)))
        for ua in (0, 1, 0x7E0):                      # 4097 bytes: the last byte's page
            s, d = (ua, 0) if direction == "from" else (0, ua)
            out.append(Buffers(direction, 4097, s, d, unmapped=(4096,)))
    return [(routine, b) for b in out]


@dataclass
class Disagreement:
    variant: str
    command: str
    native: Behaviour
    emu: Behaviour

    def __str__(self) -> str:
        return f"{self.variant}: {self.command}\n  native: {self.native.short()}\n  emu:    {self.emu.short()}"


def compare(variant: str, spec: str, target: Target, harness: Harness,
            cases: Sequence[tuple[Routine, Buffers]], pattern_file: Path,
            known: Iterable[object] = (), handler: FaultHandler | None = None,
            fast_forward_every: int = 0) -> tuple[list[Behaviour], list[Disagreement]]:
    """Run ``cases`` on both sides; return the native behaviours and the disagreements not
    explained by ``known`` (objects with ``matches(variant, routine, bufs, native, emu)``).

    Every case is a full emu run from the entry point; every ``fast_forward_every``-th case
    (0: none) is also run fast-forwarded from its clean run's checkpoint, as ``emu sweep``
    runs cases, and that outcome is checked against the CPU too."""
    native = harness.run(cases, pattern_file)
    known = tuple(known)
    bad: list[Disagreement] = []
    for i, ((r, b), nat) in enumerate(zip(cases, native)):
        modes = (False, True) if fast_forward_every and i % fast_forward_every == 0 else (False,)
        for ff in modes:
            em = emu_behaviour(target, r, b, handler, fast_forward=ff)
            if nat == em or _same_hang(nat, em):
                continue
            if any(k.matches(variant, r, b, nat, em) for k in known):  # type: ignore[attr-defined]
                continue
            what = "fast-forwarded " if ff else ""
            bad.append(Disagreement(variant, what + reproducer(spec, target.cpu, r, b), nat, em))
    return native, bad


def _same_hang(a: Behaviour, b: Behaviour) -> bool:
    """Both hung: emu stops after an instruction budget, the harness after a wall-clock
    watchdog or the same fault limit, so only the state is comparable."""
    return a.state == b.state == "hang"
