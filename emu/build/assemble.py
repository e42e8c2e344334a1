"""Source → relocatable object: the assembler backends.

GNU as, driven through ``gcc -c`` (cpp + as, the kernel's own toolchain), is the reference
backend.  A source is preprocessed against the project's kernel-macro headers in
``asm/include`` with the -D flags of the selected era and CPU (see asm/include/asm/emu_kernel.h).
Objects are cached by a hash of the source text, the flags and the assembler version, so a
repeated ``emu run`` does not pay for gcc again; only objects emu accepted are cached
(``assemble_accepted``).  gcc runs under ``emu.build.tool``'s limits (time, output size,
memory) in its own process group, which is killed whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from emu.build import tool
from emu.errors import AssembleError, EmuError

from emu.paths import ASM_DIR, INCLUDE_DIR


T = TypeVar("T")


def cache_dir() -> Path:
    """Where assembled objects are kept ($EMU_CACHE, else $XDG_CACHE_HOME/emu)."""
    env = os.environ.get("EMU_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emu"


@dataclass(frozen=True)
class AsmConfig:
    """What the preprocessor is told: era encoding, EX_TYPE layout, CPU features."""

    extable_abi: int = 3
    ex_layout: int = 517
    features: frozenset[str] = field(default_factory=frozenset)

    def defines(self) -> list[str]:
        flags = [f"-DEMU_EXTABLE_ABI={self.extable_abi}", f"-DEMU_EX_LAYOUT={self.ex_layout}"]
        for feat in ("REP_GOOD", "ERMS", "FSRM"):
            flags.append(f"-DEMU_CPU_{feat}={1 if feat in self.features else 0}")
        return flags


#: Fixed preprocessor/assembler flags; -Wa,-L keeps .L labels (e.g. .Lcopy_user_handle_tail)
#: in the symbol table so reports can name them.
_FLAGS = ["-D__ASSEMBLY__", "-D__KERNEL__", "-DCONFIG_X86_64", "-DCONFIG_64BIT", "-Wa,-L"]

#: What follows "FILE:" in a gas or cpp diagnostic: the line, a column for cpp, the message.
_GAS_REST = re.compile(r"^(?P<line>\d+):(?:\d+:)? (?:Error|error|Fatal error|fatal error): "
                       r"(?P<msg>.*)$")
#: Another file named in a diagnostic (a kernel header): "PATH:LINE..." with no ':' in PATH.
_OTHER_FILE = re.compile(r"^(?P<file>[^:\s]+):(?=\d)")


class GasAssembler:
    """GNU as via ``gcc -c -x assembler-with-cpp`` (the reference backend)."""

    name = "gas"

    def __init__(self, gcc: str | None = None) -> None:
        self.gcc = gcc or os.environ.get("EMU_GCC", "gcc")
        self._version: str | None = None

    def available(self) -> bool:
        return shutil.which(self.gcc) is not None

    def version(self) -> str:
        if self._version is None:
            if not self.available():
                raise AssembleError(f"GNU as not found: '{self.gcc}' is not on PATH "
                                    "(install it with: apt-get install gcc binutils)")
            out = subprocess.run([self.gcc, "-print-prog-name=as"], capture_output=True,
                                 text=True, env=c_locale_env()).stdout.strip() or "as"
            ver = subprocess.run([out, "--version"], capture_output=True, text=True,
                                 env=c_locale_env()).stdout.splitlines()
            self._version = (ver[0] if ver else "unknown") + " / " + self.gcc
        return self._version

    def cache_key(self, source: str, config: AsmConfig) -> str:
        """The object cache key: assembler version, flags, headers and the source text."""
        return hashlib.sha256("\0".join(
            [self.version(), " ".join(_FLAGS + config.defines()), _headers_digest(), source]
        ).encode()).hexdigest()

    def assemble(self, source: str, config: AsmConfig, name: str = "input.S") -> bytes:
        """Assemble kernel-style AT&T source text and return the relocatable ELF object
        (cached; use ``assemble_accepted`` to cache only what the caller accepts).

        Args:
            source: the .S text (preprocessed with cpp first).
            config: era and CPU selection.
            name: the file name used in error messages.

        Raises:
            AssembleError: gcc is missing, or the source does not assemble (the message
                names the file and line of the first error), or gcc hit a limit.
        """
        return self.assemble_accepted(source, config, name, lambda data: data)

    def _assemble(self, source: str, config: AsmConfig, name: str) -> bytes:
        with tool.workdir("emu-as-") as tmp:
            # A fixed temporary name: the user's name may hold ':' (REV:path, debian:N:path)
            # or '+' (a patch series), which would make gas's "FILE:LINE:" ambiguous.
            src = tmp / "input.S"
            src.write_text(source)
            obj = tmp / "out.o"
            env = c_locale_env()
            cmd = [self.gcc, *tool.gcc_wrapper(self.gcc, env), "-c", "-x",
                   "assembler-with-cpp", "-nostdinc", "-I", str(INCLUDE_DIR), *_FLAGS,
                   *config.defines(), "-o", str(obj), str(src)]
            lim = tool.Limits.from_env()
            try:
                proc = tool.run(cmd, workdir=tmp, env=env, limits=lim)
            except OSError as e:
                raise AssembleError(f"cannot run {self.gcc}: {e.strerror} "
                                    "(install it with: apt-get install gcc binutils)") from e
            if proc.limit:
                raise AssembleError(f"{name}: the assembler {tool.describe(proc.limit, lim)}")
            if proc.returncode != 0:
                raise AssembleError(explain_error(_first_error(proc.errors, src, name),
                                                  source))
            data = obj.read_bytes()
        return data

    def assemble_accepted(self, source: str, config: AsmConfig, name: str,
                          accept: Callable[[bytes], T]) -> T:
        """Assemble (or take from the cache) and return ``accept(object)``; the object is
        cached only when ``accept`` returns, so an input emu refuses (e.g. a section too
        large to load) leaves nothing in the cache.

        Raises:
            AssembleError: as ``assemble``; and whatever ``accept`` raises.
        """
        key = self.cache_key(source, config)
        cached = cache_dir() / "objects" / f"{key}.o"
        if cached.is_file():
            try:
                return accept(cached.read_bytes())
            except EmuError:
                cached.unlink(missing_ok=True)   # a cache entry emu no longer accepts
                raise
        data = self._assemble(source, config, name)
        result = accept(data)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmpfile = cached.with_suffix(f".{os.getpid()}.tmp")
            tmpfile.write_bytes(data)
            os.replace(tmpfile, cached)
        except OSError:
            pass   # a cache that cannot be written costs time, not correctness
        return result


def c_locale_env() -> dict[str, str]:
    """The environment for an external tool: ours, with ``LC_ALL=C`` (stable messages)."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


_HEADERS_DIGEST: str | None = None


def _headers_digest() -> str:
    global _HEADERS_DIGEST
    if _HEADERS_DIGEST is None:
        h = hashlib.sha256()
        for p in sorted(INCLUDE_DIR.rglob("*.h")):
            h.update(str(p.relative_to(INCLUDE_DIR)).encode())
            h.update(p.read_bytes())
        _HEADERS_DIGEST = h.hexdigest()
    return _HEADERS_DIGEST


def _first_error(stderr: str, src: Path, name: str) -> str:
    """The first error of gas/cpp's output as ``SOURCE:LINE: message``, with the temporary
    file replaced by the user's name for the source (whatever characters that name holds)."""
    prefix = f"{src}:"
    for line in (ln.strip() for ln in stderr.splitlines()):
        if line.startswith(prefix):
            where, rest = name, line[len(prefix):]
        elif (o := _OTHER_FILE.match(line)) is not None:
            where, rest = o["file"], line[o.end():]
        else:
            continue
        m = _GAS_REST.match(rest)
        if m:
            return f"{where}:{m['line']}: {m['msg']}"
    lines = [ln.replace(str(src), name) for ln in stderr.splitlines() if ln.strip()]
    return f"{name}: " + (lines[-1].strip() if lines else "assembler failed")


_NO_INSN = re.compile(r"^(?P<where>.*?:(?P<line>\d+)): no such instruction: `(?P<word>[^\s(']+)")
_PAREN = re.compile(r"^(?P<where>.*?:(?P<line>\d+)): invalid character '\(' in mnemonic")
_NO_HEADER = re.compile(r"^(?P<where>.*?:\d+): (?P<hdr>\S+\.h): No such file or directory")


def explain_error(message: str, source: str) -> str:
    """Turn gas/cpp wording into what went wrong in kernel terms.

    gas reports an undefined kernel macro as an unknown, lower-cased instruction
    ("no such instruction: `_asm_extable_foo(1b,2b)'"); the macro's real name is read back
    from the source line.  A missing kernel header gets a hint where emu's headers live.
    """
    m = _NO_INSN.match(message)
    if m:
        word = m["word"]
        lines = source.splitlines()
        n = int(m["line"])
        text = lines[n - 1] if 0 < n <= len(lines) else ""
        hit = re.search(re.escape(word), text, re.I)
        real = hit.group(0) if hit else word
        if "(" in message or real != real.lower() or real.startswith("_"):
            return (f"{m['where']}: unknown macro '{real}' (not defined by emu's kernel headers "
                    f"in {INCLUDE_DIR}; add it to asm/emu_kernel.h)")
    m = _PAREN.match(message)
    if m:
        lines = source.splitlines()
        n = int(m["line"])
        call = re.search(r"\b([A-Za-z_]\w*)\s*\(", lines[n - 1] if 0 < n <= len(lines) else "")
        if call:
            return (f"{m['where']}: unknown macro '{call.group(1)}' (not defined by emu's "
                    f"kernel headers in {INCLUDE_DIR}; add it to asm/emu_kernel.h)")
    m = _NO_HEADER.match(message)
    if m:
        return (f"{m['where']}: kernel header <{m['hdr']}> is not provided by emu "
                f"({INCLUDE_DIR}: add a one-line file that includes <asm/emu_kernel.h>)")
    return message


ASSEMBLERS = {"gas": GasAssembler}


def get_assembler(name: str = "gas") -> GasAssembler:
    try:
        return ASSEMBLERS[name]()
    except KeyError:
        raise AssembleError(f"unknown assembler '{name}' (known: {', '.join(ASSEMBLERS)})") from None
