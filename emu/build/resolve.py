"""One way in: a source spec → a runnable ``Target``, for every subcommand.

A *spec* is what the user named, before anything is read.  Its kinds:

==========  ==================================================================================
kind        spelled
==========  ==================================================================================
era         ``A`` … ``F``: the era's bundled source (asm/), its own rules
file        ``path/to/file.S``: a source file; its era is detected (``--era`` forces one)
debian      ``debian:6.1`` / ``debian:6.12`` (``debian:6.12:arch/x86/lib/getuser.S``, or
            ``--file``): the files ``scripts/linux-sources`` extracted from Debian's packages
rev         with ``--tree DIR``: ``REV`` or ``REV:PATH`` (``git show``), or for ``run`` the old
            ``--rev REV [PATH]``; the default path is arch/x86/lib/copy_user_64.S
object      ``file.o`` or ``--object FILE``: a built kbuild object (nothing is assembled)
vmlinux     ``vmlinux:FILE`` or ``--vmlinux FILE``: a linked image with symbols
==========  ==================================================================================

``--patch`` (a series, in order) applies to every text kind.  ``Spec.run_args`` spells a spec
back as ``emu run`` arguments, so every reproducer a report prints re-runs the same input.

``resolve`` reads the source, detects the era (kernel files) or takes the era key's, picks the
rules (``severity`` overrides the era's #MC rules), and builds the target through the one
``Target`` constructor; targets are cached (bounded) by ``emu.build.target`` and here.
Nothing in this module knows about argparse: the CLI turns options into ``Spec`` fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from emu.build.detect import Detection, detect
from emu.build.rules import SEVERITY_C, read_rules
from emu.build.sources import (COPY_USER, DEBIAN_VERSIONS, Source, apply_patches, debian_file,
                               patched_paths, read_file, read_rev)
from emu.build.target import BACKENDS, Settings, Target, era_target, get_target
from emu.caching import Bounded
from emu.errors import InputError, UsageError
from emu.kernel.conventions import Routine
from emu.kernel.eras import ERAS, Era, get_era
from emu.kernel.severity import MceRules, Severity

#: Every kind of source spec (the CLI's subcommand × spec-kind test iterates these).
KINDS = ("era", "file", "debian", "rev", "object", "vmlinux")
TEXT_KINDS = ("era", "file", "debian", "rev")


@dataclass(frozen=True, slots=True)
class Spec:
    """A source spec (see the module docstring).  Plain data: it pickles into sweep workers.

    Attributes:
        kind: one of ``KINDS``.
        value: the era key, the path (file, object, vmlinux), the Debian version or the
            revision.
        tree: the kernel git tree of a ``rev`` spec.
        file: the path inside the tree or the Debian package.
        patches: patch files applied in order (text kinds).
        era: ``--era``: the era whose rules apply instead of the detected one.
        assembler: the backend (``gas`` or ``keystone``).
        inline: the source text itself, patches applied (``portable``): resolving it reads
            no file, so a machine without the user's files (a cluster worker) can build it.
        rules: with ``inline``, the #MC rules read from the tree's severity.c (``tree_rules``).
        digest: a built input's contents as sent to cluster workers
            (``emu.build.shipping``): the spec stands for those contents, not the path.
        shipped: the contents ``digest`` names, once attached on the worker; not part of
            the spec's identity (the digest is).
    """

    kind: str
    value: str
    tree: str | None = None
    file: str | None = None
    patches: tuple[str, ...] = ()
    era: str | None = None
    assembler: str = "gas"
    inline: Source | None = None
    rules: MceRules | None = None
    digest: str | None = None
    shipped: object = field(default=None, compare=False, repr=False)

    @property
    def is_era(self) -> bool:
        return self.kind == "era"

    @property
    def text(self) -> str:
        """The spec as the user would type it as a variant (``A``, ``x.S``, ``v5.17``…)."""
        if self.kind == "debian":
            return f"debian:{self.value}" + (f":{self.file}" if self.file else "")
        if self.kind == "rev":
            return self.value if not self.file else f"{self.value}:{self.file}"
        if self.kind == "vmlinux":
            return f"vmlinux:{self.value}"
        return self.value

    def run_args(self) -> list[str]:
        """``emu run`` arguments (before the case options) that name this source again."""
        if self.kind == "rev":
            args = ["--tree", str(self.tree), "--rev", self.value, self.file or COPY_USER]
        elif self.kind == "era":
            args = [self.value]
        elif self.kind == "file":
            args = [self.value]
        elif self.kind == "debian":
            args = [f"debian:{self.value}"] + (["--file", self.file] if self.file else [])
        elif self.kind == "object":
            args = ["--object", self.value]
        else:
            args = ["--vmlinux", self.value]
        for p in self.patches:
            args += ["--patch", p]
        if self.assembler != "gas":
            args += ["--assembler", self.assembler]
        if self.era:
            args += ["--era", self.era]
        return args

    def with_patches(self, patches: tuple[str, ...]) -> Spec:
        return replace(self, patches=patches)


def _is_era_key(text: str) -> bool:
    return text.upper() in ERAS and not Path(text).suffix and not Path(text).exists()


def parse_spec(text: str | None, *, tree: str | None = None, rev: str | None = None,
               file: str | None = None, patches: tuple[str, ...] | list[str] = (),
               era: str | None = None, assembler: str = "gas", obj: str | None = None,
               vmlinux: str | None = None) -> Spec:
    """What the user typed (a positional spec plus the source options) → a ``Spec``.

    Raises:
        UsageError: a spec that names nothing, or options that do not apply to its kind.
    """
    patches = tuple(patches)
    if era is not None:
        era = get_era(era).key
    if assembler not in BACKENDS:
        raise UsageError(f"unknown assembler '{assembler}' (known: {', '.join(BACKENDS)})")
    built = obj or vmlinux
    if obj and vmlinux:
        raise UsageError("give --object or --vmlinux, not both")
    if built and text:
        raise UsageError("give either a source or --object/--vmlinux, not both")
    if text and text.startswith("vmlinux:"):
        built, vmlinux = text.split(":", 1)[1], text.split(":", 1)[1]
    elif text and text.endswith(".o"):
        built, obj = text, text
    if built:
        if patches or tree or rev or file:
            raise UsageError("--patch, --tree, --rev and --file apply to sources, not to "
                             "built objects")
        if assembler != "gas":
            raise UsageError("--assembler applies to sources, not to built objects")
        return Spec("vmlinux" if vmlinux else "object", built, era=era)
    if tree:
        if rev:
            return Spec("rev", rev, tree, text or file or COPY_USER, patches, era, assembler)
        if not text:
            raise UsageError("--tree needs a revision (e.g. v5.17, or v5.17:arch/x86/lib/"
                             "getuser.S)")
        r, _, path = text.partition(":")
        if not r:
            raise UsageError(f"'{text}': no revision before ':'")
        return Spec("rev", r, tree, path or file or COPY_USER, patches, era, assembler)
    if rev:
        raise UsageError("--rev needs --tree DIR")
    if not text:
        raise UsageError("name a source: an era key (" + ", ".join(ERAS) + "), a .S file, "
                         "debian:VERSION, a revision with --tree, a .o or vmlinux:FILE")
    if text.startswith("debian:"):
        _, version, *rest = text.split(":", 2)
        if version not in DEBIAN_VERSIONS:
            raise UsageError(f"'{text}': known Debian sources are "
                             f"{', '.join('debian:' + v for v in DEBIAN_VERSIONS)}")
        return Spec("debian", version, None, (rest[0] if rest else None) or file, patches, era,
                    assembler)
    if file:
        raise UsageError("--file names a file inside --tree or a debian: source")
    if _is_era_key(text):
        key = get_era(text).key
        if era is not None and era != key:
            raise UsageError(f"--era {era} does not apply to the era key {key}: an era key "
                             "uses its own rules (give a .S file to judge it by other rules)")
        return Spec("era", key, patches=patches, era=None, assembler=assembler)
    if not Path(text).suffix and not Path(text).exists():
        raise UsageError(f"'{text}' is neither an era ({', '.join(ERAS)}), a .S file, "
                         "debian:VERSION, nor (with --tree) a revision")
    return Spec("file", text, patches=patches, era=era, assembler=assembler)


def source_of(spec: Spec) -> Source:
    """The source text a text spec names, with its patches applied."""
    if spec.inline is not None:
        return spec.inline
    if spec.kind == "era":
        era = get_era(spec.value)
        src = read_file(era.path)
    elif spec.kind == "file":
        src = read_file(spec.value)
    elif spec.kind == "debian":
        p = debian_file(spec.value, spec.file or COPY_USER)
        s = read_file(str(p))
        src = Source(s.text, f"debian-{spec.value}:{p.name}", str(p))
    elif spec.kind == "rev":
        src = read_rev(str(spec.tree), spec.value, spec.file or COPY_USER)
    else:
        raise UsageError(f"{spec.text}: a built {spec.kind} has no source text")
    return apply_patches(src, list(spec.patches))


def portable(spec: Spec, routines: tuple[str, ...] = ()) -> Spec:
    """The same source, as a spec that reads none of the user's files: a text spec carries
    its text (patches applied) inline; a bundled era key is already portable; a built
    object or vmlinux carries its contents in ``shipped``, named by ``digest``
    (``emu.build.shipping``: an object's bytes, the slice of a vmlinux that ``routines``
    need).  Cluster workers get these, so they need only emu installed.

    Raises:
        InputError: the source or the built file cannot be read.
        ImageError: a vmlinux that is not a linked image.
    """
    if spec.inline is not None or spec.digest is not None or (
            spec.kind == "era" and not spec.patches):
        return spec
    if spec.kind not in TEXT_KINDS:
        from emu.build.shipping import ship
        sent = ship(spec.value, linked=spec.kind == "vmlinux", routines=routines)
        return replace(spec, digest=sent.digest, shipped=sent.contents)
    return replace(spec, inline=source_of(spec), patches=(), rules=tree_rules(spec)[0])


def _text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""     # source_of has named the unreadable patch already


def tree_rules(spec: Spec) -> tuple[MceRules | None, str]:
    """The #MC rules of the tree a source comes from, read from its own severity.c.

    A Debian source reads the package's ``arch/x86/kernel/cpu/mce/severity.c`` (extracted by
    scripts/linux-sources), a revision ``git show REV:...severity.c``; patches that change
    severity.c apply to it too.  Era keys, bare files and built objects have none.

    Returns:
        (the rules, or None; why there are none, for the note that the era's rules apply).
    """
    if spec.inline is not None:
        return spec.rules, ""
    try:
        if spec.kind == "debian":
            p = debian_file(spec.value, SEVERITY_C)
            src = Source(read_file(str(p)).text, f"debian-{spec.value} severity.c", SEVERITY_C)
        elif spec.kind == "rev":
            got = read_rev(str(spec.tree), spec.value, SEVERITY_C)
            src = Source(got.text, f"{spec.value}:severity.c", SEVERITY_C)
        else:
            return None, ""
    except InputError as e:
        return None, str(e)
    touched = [p for p in spec.patches if SEVERITY_C in patched_paths(_text(p))]
    if touched:
        src = apply_patches(src, touched)
    return read_rules(src.text, src.name)


#: Built targets (objects and images) by (path, size, mtime, spec, CPU, ...): one Unicorn each.
_BUILT: Bounded[tuple[object, ...], Target] = Bounded(16, "resolve.built")


#: A text spec's source and its tree's #MC rules, read once per process: a sweep worker
#: resolves the same spec for every case, and a revision costs two ``git show`` (and a
#: patch series a scratch repository) each time.
#: Files (the spec's own and its patches) are keyed with their size and mtime, so an edited
#: file is read again.
_READ: Bounded[tuple[object, ...], tuple[Source, MceRules | None, str]] = Bounded(
    64, "resolve.sources")


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _read(spec: Spec) -> tuple[Source, MceRules | None, str]:
    files = ([spec.value] if spec.kind == "file" and spec.inline is None else []) + \
        list(spec.patches)
    key = (spec, *(_stamp(f) for f in files))
    got = _READ.get(key)
    if got is None:
        got = _READ[key] = (source_of(spec), *tree_rules(spec))
    return got


def resolve(spec: Spec, cpu: frozenset[str], *, count_insns: bool = False,
            severity: Severity | None = None, routine: str | None = None) -> Target:
    """Build (or reuse) the target a spec names, for ``cpu``.

    Args:
        spec: the source.
        cpu: CPU features for the ALTERNATIVE sites.
        count_insns: count instructions (``emu run --instructions``).
        severity: #MC rules to judge by instead of the era's (``--mce-rules``).
        routine: for built images, the routine whose extable entries must be kept.
    """
    if spec.kind in ("object", "vmlinux"):
        from emu.build.objects import built_target
        stamp: tuple[object, ...] = ()
        if spec.digest is not None:
            if spec.shipped is None:
                raise UsageError(f"{spec.text}: its contents ({spec.digest}) were not attached")
        else:
            try:
                st = os.stat(spec.value)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        key = (spec, stamp, cpu, count_insns, severity, routine)
        t = _BUILT.get(key)
        if t is None:
            t = _BUILT[key] = built_target(spec.value, linked=spec.kind == "vmlinux", cpu=cpu,
                                           era=spec.era, routine=routine,
                                           count_insns=count_insns, severity=severity,
                                           contents=spec.shipped)  # type: ignore[arg-type]
        return t
    if (spec.kind == "era" and not spec.patches and spec.inline is None
            and spec.assembler == "gas"):
        return era_target(get_era(spec.value), cpu, count_insns=count_insns, severity=severity)
    forced = spec.era or (spec.value if spec.kind == "era" else None)
    src, rules, why = _read(spec)
    if severity is not None or spec.era:
        rules, why = None, ""
    return source_target(src, cpu, era=forced, assembler=spec.assembler,
                         count_insns=count_insns, severity=severity, rules=rules, why=why)


def source_target(src: Source, cpu: frozenset[str], *, era: str | None = None,
                  assembler: str = "gas", count_insns: bool = False,
                  severity: Severity | None = None, rules: MceRules | None = None,
                  why: str = "") -> Target:
    """The target of a kernel source text: its era detected (or ``era``), its routines
    those the file defines, assembled once per (text, rules, CPU, backend).

    The #MC rules are ``severity`` (``--mce-rules``), else ``rules`` (the tree's severity.c,
    ``tree_rules``), else the era's; ``why`` says why a tree's rules are missing."""
    det = detect(src.text, name=src.name, forced=era)
    how = f"era {det.era.key}'s rules" + (" (--era)" if det.forced else "") + (
        f"; {why}" if why else "")
    return get_target(src.text, src.name, Settings.of(det.era, severity, rules, how), cpu,
                      assembler, count_insns, catalog=det, era=det.era, detection=det)


def label(spec: Spec, t: Target) -> str:
    """How tables name a resolved variant: ``E v5.17 - v6.3`` or ``copy_user_64.S (E)``."""
    if spec.kind == "era" and not spec.patches and t.era is not None:
        return f"{t.era.key} {t.era.versions}"
    era = t.era.key if t.era is not None else "?"
    return f"{t.name} ({era})"


def era_of(t: Target) -> Era:
    """The era whose rules a target was built with (its record carries the caller model)."""
    if t.era is None:
        raise UsageError(f"{t.name}: no era is known for this target")
    return t.era




def era_for(spec: Spec) -> Era:
    """The era whose rules a spec's source runs under, without assembling it."""
    if spec.kind == "era":
        return get_era(spec.era or spec.value)
    if spec.kind in TEXT_KINDS:
        src = source_of(spec)
        return detect(src.text, name=src.name, forced=spec.era).era
    t = resolve(spec, frozenset())
    return era_of(t)
