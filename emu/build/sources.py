"""Kernel source inputs: files, git revisions of a kernel tree, patches, Debian's sources.

Real kernel files are run-time inputs and are never copied into the project (kernel-facts.md,
preamble).  This module only obtains source *text*:

* a file the user names;
* ``git show REV:PATH`` in a kernel tree the user names (the tree is only read);
* the same with one or more patches applied the way ``git am`` (mbox) or ``git apply`` (plain
  diff) would, in a throw-away repository under a temporary directory, so nothing the user
  gave is changed;
* the files ``scripts/linux-sources`` extracted from Debian's ``linux-source-*`` packages into
  the cache directory (``$EMU_LINUX_SOURCES``, else ``$EMU_CACHE/linux-source``, else
  ``~/.cache/emu/linux-source``).

Every failure is an ``InputError`` whose message names the file, tree, revision or patch.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emu.errors import InputError, UsageError

#: The default file in a kernel tree.
COPY_USER = "arch/x86/lib/copy_user_64.S"
#: Debian package versions (linux-source-X) scripts/linux-sources extracts; their eras are
#: detected from the files like any other source.
DEBIAN_VERSIONS = ("6.1", "6.12")


@dataclass(frozen=True, slots=True)
class Source:
    """Source text plus where it came from.

    Attributes:
        text: the .S text.
        name: a short label for tables (``v5.17:copy_user_64.S``, ``copy_user_64.S+fix.mbox``).
        path: the file's path inside a kernel tree (``arch/x86/lib/...``) or on disk.
    """

    text: str
    name: str
    path: str


def _git(args: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    except OSError as e:
        raise InputError(f"cannot run git: {e.strerror} (install it with: apt-get install git)"
                         ) from None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no message"


def linux_source_root() -> Path:
    """Where scripts/linux-sources puts Debian's kernel files (same rule as the script)."""
    env = os.environ.get("EMU_LINUX_SOURCES")
    if env:
        return Path(env)
    cache = os.environ.get("EMU_CACHE")
    if cache:
        return Path(cache) / "linux-source"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emu" / "linux-source"


def debian_file(version: str, path: str = COPY_USER) -> Path:
    """The extracted file of Debian's linux-source-``version`` package.

    Raises:
        InputError: not extracted yet (the message says how to get it).
    """
    p = linux_source_root() / version / path
    if not p.is_file():
        raise InputError(f"{p}: Debian linux-source-{version} file not extracted; run "
                         "scripts/linux-sources (make test does)")
    return p


def read_file(path: str) -> Source:
    """A source file on disk."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a .S file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return Source(_decode(data, path), p.name, str(p))


def _decode(data: bytes, where: str) -> str:
    if not data.strip():
        raise InputError(f"{where}: empty file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not a text assembly source (byte {e.start} is not UTF-8)"
                         ) from None


def read_rev(tree: str, rev: str, path: str = COPY_USER) -> Source:
    """``git show REV:PATH`` in a kernel tree (the tree is only read).

    Raises:
        InputError: not a git tree, unknown revision, or no such file at that revision.
    """
    rev_parse(tree, rev)
    show = _git(["show", f"{rev}:{path}"], cwd=tree)
    if show.returncode != 0:
        raise InputError(f"{tree}: {rev} has no {path}")
    return Source(_decode(show.stdout.encode(), f"{tree}:{rev}:{path}"),
                  f"{rev}:{Path(path).name}", path)


def revisions(tree: str, span: str, paths: list[str]) -> list[tuple[str, str]]:
    """The commits of ``A..B`` in a kernel tree that touch ``paths``, oldest first, after
    ``A`` itself (the baseline): ``git rev-list --reverse A..B -- PATHS``.

    Returns:
        ``(commit id abbreviated to 12 hex digits, subject)`` per revision.

    Raises:
        InputError: not a git tree, or an unknown revision.
        UsageError: ``span`` is not ``A..B``.
    """
    start, sep, end = span.partition("..")
    if not sep or not start or not end or end.startswith("."):
        raise UsageError(f"'{span}': give a revision range A..B (e.g. v5.9..v6.4)")
    base = rev_parse(tree, start)
    subject = _git(["log", "-1", "--format=%s", base], cwd=tree).stdout.strip()
    return [(base[:12], subject),
            *((sha[:12], s) for sha, s in rev_list(tree, start, end, paths))]


def _tree_top(tree: str) -> str:
    if not Path(tree).is_dir():
        raise InputError(f"{tree}: no such directory (--tree)")
    top = _git(["rev-parse", "--show-toplevel"], cwd=tree)
    if top.returncode != 0:
        raise InputError(f"{tree}: not a git tree (--tree): {_first_line(top.stderr)}")
    return top.stdout.strip()


def rev_parse(tree: str, rev: str) -> str:
    """The full commit id of ``rev`` in ``tree``.

    Raises:
        InputError: not a git tree, or unknown revision.
    """
    _tree_top(tree)
    r = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=tree)
    if r.returncode != 0:
        raise InputError(f"{tree}: unknown revision '{rev}'")
    return r.stdout.strip()


def rev_list(tree: str, start: str, end: str, paths: list[str]) -> list[tuple[str, str]]:
    """The commits of ``start..end`` that touch ``paths``, oldest first: (id, subject).

    Raises:
        InputError: not a git tree, or an unknown revision.
    """
    a, b = rev_parse(tree, start), rev_parse(tree, end)
    r = _git(["log", "--reverse", "--topo-order", "--format=%H %s", f"{a}..{b}", "--",
              *paths], cwd=tree)
    if r.returncode != 0:
        raise InputError(f"{tree}: git log {start}..{end}: {_first_line(r.stderr)}")
    out: list[tuple[str, str]] = []
    for line in r.stdout.splitlines():
        sha, _, subject = line.partition(" ")
        out.append((sha, subject))
    return out


# ---- patches --------------------------------------------------------------------------

_DIFF_PATH = re.compile(r"^(?:\+\+\+|---) (?:[ab]/)?(\S+)", re.M)
_GIT_DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.M)


def is_mbox(text: str) -> bool:
    """An mbox (``git format-patch`` / LKML mail) rather than a plain diff."""
    head = text.lstrip()[:2000]
    return head.startswith("From ") or bool(re.match(r"(?:[\w-]+: .*\n)+", head)
                                            and re.search(r"^Subject: ", head, re.M))


def patched_paths(text: str) -> list[str]:
    """Files a patch changes (from its ``diff --git`` / ``+++`` headers)."""
    out: list[str] = []
    for m in _GIT_DIFF.finditer(text):
        if m.group(2) not in out:
            out.append(m.group(2))
    for m in _DIFF_PATH.finditer(text):
        p = m.group(1)
        if p != "/dev/null" and p not in out:
            out.append(p)
    return out


def _read_patch(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise InputError(f"{path}: no such patch file (--patch)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read patch: {e.strerror}") from None


def apply_patches(src: Source, patches: list[str]) -> Source:
    """Apply patches in order to ``src`` in a temporary repository; ``src`` is unchanged.

    mbox files are applied like ``git am`` (each mail a commit, several files form a series
    in the given order), plain diffs like ``git apply``.  Only hunks for ``src.path`` are
    applied (``--include``), so a series that also changes headers or C files still applies.
    A source read from disk is placed at the path the patch names for a file of the same
    name (``copy_user_64.S`` → ``arch/x86/lib/copy_user_64.S``), or at the only path the
    series changes.

    Raises:
        InputError: a patch does not apply (git's reason and the patch are named), or the
            series does not change the file at all.
    """
    if not patches:
        return src
    texts = [(p, _read_patch(p)) for p in patches]
    path = src.path
    if not path.startswith("arch/"):
        wanted = Path(path).name
        named = sorted({q for _, t in texts for q in patched_paths(t)})
        cands = {q for q in named if Path(q).name == wanted}
        if not cands and len(named) == 1:   # the series changes one file: this one
            cands = set(named)
        if len(cands) != 1:
            raise InputError(f"{', '.join(patches)}: changes no file named {wanted} "
                             f"(it changes: {', '.join(named) or 'nothing'})")
        path = cands.pop()
    with tempfile.TemporaryDirectory(prefix="emu-patch-") as tmp:
        repo = Path(tmp)
        dest = repo / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(src.text)
        ident = ["-c", "user.name=emu", "-c", "user.email=emu@localhost",
                 "-c", "commit.gpgsign=false"]
        for args in (["init", "-q"], [*ident, "add", "-A"],
                     [*ident, "commit", "-q", "-m", "base"]):
            r = _git(args, cwd=repo)
            if r.returncode != 0:
                raise InputError(f"cannot prepare a patch workspace: {_first_line(r.stderr)}")
        for pfile, text in texts:
            absp = str(Path(pfile).resolve())
            if is_mbox(text):
                r = _git([*ident, "am", "-q", "--keep-cr", "--empty=drop",
                          f"--include={path}", absp],
                         cwd=repo)
            else:
                r = _git(["apply", f"--include={path}", absp], cwd=repo)
            if r.returncode != 0:
                _git(["am", "--abort"], cwd=repo)
                raise InputError(f"{pfile}: does not apply to {src.name} ({path}): "
                                 f"{_git_reason(r.stderr or r.stdout)}")
        new = dest.read_text()
    if new == src.text:
        raise InputError(f"{', '.join(patches)}: changes nothing in {path}")
    tag = Path(patches[0]).stem[:24] if len(patches) == 1 else f"{len(patches)}-patches"
    return Source(new, f"{src.name}+{tag}", src.path)


def _git_reason(err: str) -> str:
    for line in err.splitlines():
        line = line.strip()
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return _first_line(err)
