"""The keystone backend: kernel AT&T sources → ``Image`` without GNU as.

Keystone 0.9.2 mis-assembles kernel sources in the ways unicorn-notes.md §5 lists, and this
module works around each one before keystone sees the text:

1. cpp runs first (``gcc -E``), as for the gas backend, with the same -D flags;
2. gas macros (``.macro``, ``.irp``, ``.rept``, ``.if``/``.ifc``/``.ifb``, ``.set``) are expanded
   here, because macro bodies carry section switches and numeric labels;
3. numeric labels (``1:``, ``1b``, ``1f``), which keystone rejects, become unique ``.L`` names;
4. decimal literals, which keystone reads as hex in AT&T mode, are rewritten as hex;
5. section directives, which crash keystone, are never passed on: statements are split into
   sections here, each code section is assembled on its own at its final address, and
   ``__ex_table`` is evaluated here from the label addresses (three words per entry);
6. keystone aligns (and relaxes jumps around the padding), then its padding bytes are replaced
   by the NOPs GNU as uses, at the same length; jumps and calls to a label in another section
   or outside the file are emitted as rel32 (as gas must), so the code bytes can match;
7. keystone runs in a subprocess, so a crash is an error message, not a dead process.

Inputs keystone is known to encode differently (``%gs:``/``%fs:`` absolute operands become
RIP-relative) are refused.  When GNU as is available the result is cross-checked byte for
byte against it and any difference is refused loudly (``EMU_KEYSTONE_CHECK=0`` skips that).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from emu.core import layout as L
from emu.build import tool
from emu.build.assemble import AsmConfig, c_locale_env
from emu.errors import AssembleError
from emu.paths import INCLUDE_DIR
from emu.kernel.extable import Encoding, Extable, decode
from emu.kernel.image import Image, Section, Symbol

#: GNU as 2.40's x86-64 NOP padding for 1..15 bytes (measured with ``.p2align 4``).
GAS_NOPS = {
    1: "90", 2: "6690", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000", 6: "660f1f440000",
    7: "0f1f8000000000", 8: "0f1f840000000000", 9: "660f1f840000000000",
    10: "662e0f1f840000000000", 11: "66662e0f1f840000000000",
}
JCC = {"jo": 0x80, "jno": 0x81, "jb": 0x82, "jc": 0x82, "jnae": 0x82, "jae": 0x83, "jnb": 0x83,
       "jnc": 0x83, "je": 0x84, "jz": 0x84, "jne": 0x85, "jnz": 0x85, "jbe": 0x86, "jna": 0x86,
       "ja": 0x87, "jnbe": 0x87, "js": 0x88, "jns": 0x89, "jp": 0x8A, "jpe": 0x8A, "jnp": 0x8B,
       "jpo": 0x8B, "jl": 0x8C, "jnge": 0x8C, "jge": 0x8D, "jnl": 0x8D, "jle": 0x8E, "jng": 0x8E,
       "jg": 0x8F, "jnle": 0x8F}

_WORKER = r"""
import json, sys
import keystone as K
req = json.load(sys.stdin)
ks = K.Ks(K.KS_ARCH_X86, K.KS_MODE_64)
ks.syntax = K.KS_OPT_SYNTAX_ATT
syms = {k.encode(): v for k, v in req["symbols"].items()}
def resolve(sym, value):
    if sym in syms:
        value[0] = syms[sym]
        return True
    return False
ks.sym_resolver = resolve
out = []
for text, base in req["chunks"]:
    try:
        enc, _ = ks.asm(text, base)
        out.append({"hex": bytes(enc or b"").hex()})
    except K.KsError as e:
        out.append({"error": str(e)})
json.dump(out, sys.stdout)
"""

Stmt = tuple[str, str]   # (file:line, statement text)


def _split_statements(text: str, loc: str) -> list[Stmt]:
    out, cur, quote = [], [], False
    for ch in text:
        if ch == '"':
            quote = not quote
        if ch == ";" and not quote:
            out.append((loc, "".join(cur).strip()))
            cur = []
        elif ch == "#" and not quote:
            break
        else:
            cur.append(ch)
    out.append((loc, "".join(cur).strip()))
    return [s for s in out if s[1]]


def _cpp_lines(text: str) -> list[Stmt]:
    out: list[Stmt] = []
    fname, line = "input.S", 1
    for raw in text.splitlines():
        m = re.match(r'^#\s*(\d+)\s+"([^"]*)"', raw)
        if m:
            line, fname = int(m.group(1)), m.group(2)
            continue
        out.extend(_split_statements(raw, f"{Path(fname).name}:{line}"))
        line += 1
    return out


_LABEL = re.compile(r"^([A-Za-z_.$][\w.$]*|\d+):\s*(.*)$", re.S)
_IDENT = re.compile(r"[A-Za-z_.$][\w.$]*")


def _evaluate(expr: str, syms: dict[str, int]) -> int | None:
    """A gas absolute expression over known ``.set`` symbols, or None if it is not one."""
    bad = False

    def sub(m: re.Match[str]) -> str:
        nonlocal bad
        word = m.group(0)
        if word in syms:
            return f"({syms[word]})"
        bad = True
        return "0"
    e = re.sub(r"(?<![\w.$])(?:0[xX][0-9a-fA-F]+|\d+)(?![\w.$])|[A-Za-z_.$][\w.$]*",
               lambda m: m.group(0) if m.group(0)[0].isdigit() else sub(m), expr)
    if bad or e.strip() in ("", "."):
        return None
    e = e.replace("&&", " and ").replace("||", " or ").replace("<>", "!=")
    e = re.sub(r"!(?!=)", " not ", e).replace("/", "//")
    try:
        v = eval(e, {"__builtins__": {}}, {})  # noqa: S307 - digits and operators only
    except Exception:   # noqa: BLE001 - not an absolute expression
        return None
    return int(v)


def _macro_args(text: str) -> list[str]:
    """Split macro arguments the way gas does: commas or blanks, quotes and parens kept."""
    args: list[str] = []
    cur, depth, quote, pending = "", 0, False, False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quote = not quote
            cur += ch
        elif quote:
            cur += ch
        elif ch == "(":
            depth += 1
            cur += ch
        elif ch == ")":
            depth -= 1
            cur += ch
        elif ch == "," and depth == 0:
            args.append(cur)
            cur, pending = "", True
        elif ch.isspace() and depth == 0:
            j = i
            while j < len(text) and text[j].isspace():
                j += 1
            if cur and j < len(text) and text[j] != ",":
                args.append(cur)
                cur = ""
            i = j
            continue
        else:
            cur += ch
        i += 1
    if cur or pending:
        args.append(cur)
    return [a.strip() for a in args]


def _unquote(v: str) -> str:
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v


@dataclass
class _Macro:
    params: list[tuple[str, str | None, bool, bool]]   # name, default, required, vararg
    body: list[Stmt]


#: Most statements macro and ``.rept`` expansion may make (a kernel copy file: a few
#: thousand).
MAX_STATEMENTS = 500_000


class _Expander:
    """gas's macro layer: everything that produces statements, nothing that encodes them."""

    def __init__(self) -> None:
        self.macros: dict[str, _Macro] = {}
        self.syms: dict[str, int] = {}
        self.counter = 0
        self.made = 0

    def run(self, stmts: list[Stmt], depth: int = 0) -> list[Stmt]:
        if depth > 100:
            raise AssembleError(f"{stmts[0][0] if stmts else '?'}: macro recursion too deep")
        out: list[Stmt] = []
        i = 0
        while i < len(stmts):
            loc, s = stmts[i]
            m = _LABEL.match(s)
            if m:
                out.append((loc, m.group(1) + ":"))
                rest = m.group(2).strip()
                if rest:
                    stmts = stmts[:i] + [(loc, rest)] + stmts[i + 1:]
                else:
                    i += 1
                continue
            head, _, rest = s.partition(" ") if " " in s else s.partition("\t")
            head_l, rest = head.lower(), rest.strip()
            if head_l == ".macro":
                end = self._block_end(stmts, i, (".macro",), (".endm",))
                parts = _macro_args(rest)
                params = []
                for p in parts[1:]:
                    nm, _, dflt = p.partition("=")
                    req, var = nm.endswith(":req"), nm.endswith(":vararg")
                    nm = nm.split(":")[0]
                    params.append((nm, dflt if "=" in p else None, req, var))
                self.macros[parts[0].lower()] = _Macro(params, stmts[i + 1:end])
                i = end + 1
                continue
            if head_l in (".irp", ".irpc", ".rept"):
                end = self._block_end(stmts, i, (".irp", ".irpc", ".rept"), (".endr",))
                body = stmts[i + 1:end]
                if head_l == ".rept":
                    n = _evaluate(rest, self.syms)
                    if n is None:
                        raise AssembleError(f"{loc}: .rept count '{rest}' is not a constant")
                    n = max(n, 0)
                    self._spend(loc, n * max(1, len(body)))
                    out.extend(self.run(body * n, depth + 1))
                else:
                    var, _, values = rest.partition(",")
                    items = (_macro_args(values) if head_l == ".irp"
                             else list(values.strip()))
                    for v in items:
                        out.extend(self.run(self._subst(body, {var.strip(): v}), depth + 1))
                i = end + 1
                continue
            if head_l.startswith(".if"):
                end, branches = self._if_block(stmts, i)
                for cond_loc, cond, body in branches:
                    if cond is None or self._cond(cond_loc, cond):
                        out.extend(self.run(body, depth + 1))
                        break
                i = end + 1
                continue
            if head_l in (".endm", ".endr", ".endif", ".else", ".elseif"):
                raise AssembleError(f"{loc}: {head} without its opening directive")
            if head_l == ".error":
                raise AssembleError(f"{loc}: {_unquote(rest)}")
            if head_l in (".set", ".equ") or re.match(r"^[A-Za-z_.$][\w.$]*\s*=", s):
                name, _, expr = (rest.partition(",") if head_l in (".set", ".equ")
                                 else s.partition("="))
                v = _evaluate(expr, self.syms)
                if v is not None:
                    self.syms[name.strip()] = v
                    i += 1
                    continue
                out.append((loc, f".set {name.strip()}, {expr.strip()}"))
                i += 1
                continue
            mac = self.macros.get(head_l)
            if mac is not None:
                out.extend(self.run(self._invoke(loc, head, mac, rest), depth + 1))
                i += 1
                continue
            self._spend(loc, 1)
            out.append((loc, s))
            i += 1
        return out

    def _spend(self, loc: str, n: int) -> None:
        """Count statements made by expansion; a ``.rept``/macro bomb is refused before it
        is built (``MAX_STATEMENTS``)."""
        self.made += n
        if self.made > MAX_STATEMENTS:
            raise AssembleError(f"{loc}: expands to more than {MAX_STATEMENTS} statements "
                                "(a .rept or macro bomb?); refused")

    @staticmethod
    def _block_end(stmts: list[Stmt], i: int, opens: tuple[str, ...],
                   closes: tuple[str, ...]) -> int:
        level = 0
        for j in range(i, len(stmts)):
            h = re.split(r"\s", stmts[j][1], maxsplit=1)[0].lower()
            if h in opens:
                level += 1
            elif h in closes:
                level -= 1
                if level == 0:
                    return j
        raise AssembleError(f"{stmts[i][0]}: {stmts[i][1].split()[0]} without {closes[0]}")

    def _if_block(self, stmts: list[Stmt], i: int) -> tuple[int, list[tuple[str, str | None, list[Stmt]]]]:
        level, branches = 0, []
        cur_loc, cur_cond, start = stmts[i][0], stmts[i][1], i + 1
        for j in range(i, len(stmts)):
            h = re.split(r"\s", stmts[j][1], maxsplit=1)[0].lower()
            if h.startswith(".if"):
                level += 1
            elif h == ".endif":
                level -= 1
                if level == 0:
                    branches.append((cur_loc, cur_cond, stmts[start:j]))
                    return j, branches
            elif level == 1 and h in (".else", ".elseif"):
                branches.append((cur_loc, cur_cond, stmts[start:j]))
                cur_loc, start = stmts[j][0], j + 1
                cur_cond = None if h == ".else" else ".if" + stmts[j][1][len(".elseif"):]
        raise AssembleError(f"{stmts[i][0]}: .if without .endif")

    def _cond(self, loc: str, cond: str) -> bool:
        head, _, rest = cond.partition(" ") if " " in cond else cond.partition("\t")
        h, rest = head.lower(), rest.strip()
        if h in (".ifc", ".ifnc", ".ifeqs", ".ifnes"):
            a, _, b = rest.partition(",")
            same = _unquote(a.strip()) == _unquote(b.strip())
            return same if h in (".ifc", ".ifeqs") else not same
        if h in (".ifb", ".ifnb"):
            return (rest == "") == (h == ".ifb")
        if h in (".ifdef", ".ifndef"):
            return (rest in self.syms) == (h == ".ifdef")
        v = _evaluate(rest, self.syms)
        if v is None:
            raise AssembleError(f"{loc}: cannot evaluate '{rest}' in {head}")
        return {".if": v != 0, ".ifne": v != 0, ".ifeq": v == 0, ".ifgt": v > 0,
                ".ifge": v >= 0, ".iflt": v < 0, ".ifle": v <= 0}.get(h, v != 0)

    def _invoke(self, loc: str, head: str, mac: _Macro, rest: str) -> list[Stmt]:
        args = _macro_args(rest) if rest else []
        values: dict[str, str] = {}
        positional = []
        for a in args:
            k, eq, v = a.partition("=")
            if eq and any(p[0] == k.strip() for p in mac.params):
                values[k.strip()] = v.strip()
            else:
                positional.append(a)
        for n, (name, dflt, req, var) in enumerate(mac.params):
            if name in values:
                continue
            if var:
                values[name] = ", ".join(positional[n:])
            elif n < len(positional) and positional[n] != "":
                values[name] = positional[n]
            elif dflt is not None:
                values[name] = dflt
            elif req:
                raise AssembleError(f"{loc}: macro {head}: missing value for required "
                                    f"argument '{name}'")
            else:
                values[name] = ""
        self.counter += 1
        return self._subst(mac.body, {k: _unquote(v) for k, v in values.items()})

    def _subst(self, body: list[Stmt], values: dict[str, str]) -> list[Stmt]:
        names = sorted(values, key=len, reverse=True)
        out: list[Stmt] = []
        for loc, s in body:
            for n in names:
                s = re.sub(rf"\\{re.escape(n)}(?![\w])", lambda _m, v=values[n]: v, s)
            s = s.replace("\\()", "").replace("\\@", str(self.counter))
            out.extend(_split_statements(s, loc))
        return out


@dataclass
class _Section:
    name: str
    items: list[tuple[str, ...]] = field(default_factory=list)
    align: int = 1


def _hexify(text: str) -> str:
    """Decimal literals → hex (keystone reads bare numbers as hex in AT&T mode)."""
    return re.sub(r"(?<![\w.])(\d+)(?![\w.$])",
                  lambda m: m.group(1) if m.group(1) in "01234567" and len(m.group(1)) == 1
                  else hex(int(m.group(1))), text)


class KeystoneAssembler:
    """In-process-friendly assembly with keystone (run in a subprocess), see module doc."""

    name = "keystone"

    def __init__(self, gcc: str | None = None, check: bool | None = None) -> None:
        self.gcc = gcc or os.environ.get("EMU_GCC", "gcc")
        self.check = (os.environ.get("EMU_KEYSTONE_CHECK", "1") != "0") if check is None else check

    def available(self) -> bool:
        try:
            import keystone  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import keystone
        return f"keystone {getattr(keystone, '__version__', '?')}"

    # ---- stage 1-4: text --------------------------------------------------------------

    def preprocess(self, source: str, config: AsmConfig, name: str) -> list[Stmt]:
        with tool.workdir("emu-ks-") as tmp:
            src = tmp / (Path(name).stem + ".S")
            src.write_text(source)
            env = c_locale_env()
            cmd = [self.gcc, *tool.gcc_wrapper(self.gcc, env), "-E", "-x",
                   "assembler-with-cpp", "-nostdinc", "-I", str(INCLUDE_DIR), "-D__ASSEMBLY__",
                   "-D__KERNEL__", "-DCONFIG_X86_64", "-DCONFIG_64BIT", *config.defines(),
                   str(src)]
            lim = tool.Limits.from_env()
            try:
                proc = tool.run(cmd, workdir=tmp, env=env, limits=lim)
            except OSError as e:
                raise AssembleError(f"cannot run the C preprocessor {self.gcc}: {e.strerror}"
                                    ) from e
            if proc.limit:
                raise AssembleError(f"{name}: the C preprocessor "
                                    f"{tool.describe(proc.limit, lim)}")
            if proc.returncode != 0:
                err = next((ln for ln in proc.errors.splitlines() if "error" in ln),
                           proc.errors.strip())
                raise AssembleError(f"{name}: preprocessing failed: {err.replace(str(src), name)}")
            # cpp's line markers carry file names, which need not be UTF-8
            text = proc.stdout.decode("utf-8", errors="surrogateescape")
        stmts = [(loc.replace(src.name, Path(name).name), s) for loc, s in _cpp_lines(text)]
        return stmts

    def assemble_image(self, source: str, config: AsmConfig, name: str, *,
                       encoding: Encoding, layout_id: int) -> Image:
        """Assemble ``source`` and lay it out like ``image.load_object`` lays out gas output.

        Raises:
            AssembleError: a construct keystone cannot be trusted with, a keystone error or
                crash, or (when GNU as is available) code bytes that differ from gas's.
        """
        exp = _Expander()
        flat = exp.run(self.preprocess(source, config, name))
        for loc, s in flat:
            if re.search(r"%[gf]s:\s*[^(%\s]", s) and "(" not in s.split(":", 1)[1]:
                raise AssembleError(f"{loc}: keystone encodes the absolute operand in '{s}' as "
                                    "RIP-relative (unicorn-notes §5); refusing this input, use "
                                    "--assembler gas")
        img = self._layout(flat, exp.syms, name, encoding, layout_id)
        if self.check:
            self._cross_check(img, source, config, name, encoding, layout_id)
        return img

    # ---- stage 5-7: sections, labels, keystone ---------------------------------------

    def _layout(self, flat: list[Stmt], syms: dict[str, int], name: str, encoding: Encoding,
                layout_id: int) -> Image:
        # numeric labels → unique names
        defs: dict[str, list[int]] = {}
        for idx, (_, s) in enumerate(flat):
            m = re.match(r"^(\d+):$", s)
            if m:
                defs.setdefault(m.group(1), []).append(idx)
        renamed: list[Stmt] = []
        for idx, (loc, s) in enumerate(flat):
            m = re.match(r"^(\d+):$", s)
            if m:
                renamed.append((loc, f".Lks_{m.group(1)}_{idx}:"))
                continue

            def ref(mm: re.Match[str], idx: int = idx, loc: str = loc) -> str:
                n, d = mm.group(1), mm.group(2)
                cands = [j for j in defs.get(n, []) if (j < idx if d == "b" else j > idx)]
                if not cands:
                    raise AssembleError(f"{loc}: local label {n}{d} has no definition")
                return f".Lks_{n}_{cands[-1] if d == 'b' else cands[0]}"
            renamed.append((loc, re.sub(r"(?<![\w.$])(\d+)([bf])(?![\w.$])", ref, s)))

        sections: dict[str, _Section] = {".text": _Section(".text")}
        cur, stack, prev = ".text", [], ".text"
        globals_: set[str] = set()
        funcs: set[str] = set()
        sizes: dict[str, tuple[str, str]] = {}
        label_sec: dict[str, str] = {}
        marker = 0
        for loc, s in renamed:
            head = re.split(r"[\s,]", s, maxsplit=1)[0].lower()
            rest = s[len(head):].strip()
            if head in (".text", ".data", ".bss"):
                prev, cur = cur, head
            elif head in (".section", ".pushsection"):
                sec = _unquote(rest.split(",")[0].strip())
                if head == ".pushsection":
                    stack.append(cur)
                prev, cur = cur, sec
            elif head == ".popsection":
                if not stack:
                    raise AssembleError(f"{loc}: .popsection without .pushsection")
                prev, cur = cur, stack.pop()
            elif head == ".previous":
                prev, cur = cur, prev
            elif head in (".globl", ".global"):
                globals_.update(x.strip() for x in rest.split(","))
                continue
            elif head == ".type":
                sym, _, kind = rest.partition(",")
                if kind.strip().lstrip("@%") in ("function", "STT_FUNC"):
                    funcs.add(sym.strip())
                continue
            elif head == ".set":
                sym, _, expr = rest.partition(",")
                m = re.match(r"^\.\s*-\s*([\w.$]+)$", expr.strip())
                if m:
                    marker += 1
                    lbl = f".Lks_pos_{marker}"
                    sections.setdefault(cur, _Section(cur)).items.append(("label", lbl))
                    label_sec[lbl] = cur
                    sizes[sym.strip()] = (m.group(1), lbl)
                    continue
                raise AssembleError(f"{loc}: cannot handle '{s}' with keystone")
            elif head == ".size":
                sym, _, expr = (x.strip() for x in rest.partition(","))
                m = re.match(r"^\.\s*-\s*([\w.$]+)$", expr)
                if expr in sizes:
                    sizes[sym] = sizes[expr]
                elif m:
                    marker += 1
                    lbl = f".Lks_pos_{marker}"
                    sections.setdefault(cur, _Section(cur)).items.append(("label", lbl))
                    label_sec[lbl] = cur
                    sizes[sym] = (m.group(1), lbl)
                continue
            elif head in (".weak", ".local", ".file", ".loc", ".ident", ".hidden") or \
                    head.startswith(".cfi_") or head in (".code64", ".att_syntax"):
                continue
            else:
                sec = sections.setdefault(cur, _Section(cur))
                if s.endswith(":") and _IDENT.fullmatch(s[:-1]):
                    sec.items.append(("label", s[:-1]))
                    label_sec[s[:-1]] = cur
                elif head in (".p2align", ".balign", ".align"):
                    args = [a.strip() for a in rest.split(",")]
                    n = _evaluate(args[0], syms)
                    if n is None:
                        raise AssembleError(f"{loc}: alignment '{args[0]}' is not a constant")
                    if not 0 <= n <= (20 if head == ".p2align" else 1 << 20):
                        raise AssembleError(f"{loc}: alignment '{args[0]}' is out of range")
                    nbytes = 1 << n if head == ".p2align" else n
                    fill = args[1] if len(args) > 1 and args[1] else None
                    sec.align = max(sec.align, nbytes)
                    marker += 1
                    sec.items.append(("align", f".Lks_al_{marker}", str(nbytes), fill or ""))
                    label_sec[f".Lks_al_{marker}"] = cur
                else:
                    sec.items.append(("stmt", loc, s))
            sections.setdefault(cur, _Section(cur))
        return self._assemble_sections(sections, label_sec, syms, globals_, funcs, sizes,
                                       name, encoding, layout_id)

    def _render(self, sec: _Section, label_sec: dict[str, str], externals: set[str],
                addrs: dict[str, int]) -> tuple[str, list[str]]:
        lines: list[str] = []
        markers: list[str] = []
        for n, item in enumerate(sec.items):
            if item[0] == "label":
                lines.append(f"{item[1]}:")
                markers.append(item[1])
            elif item[0] == "align":
                # keystone aligns (and relaxes jumps around it); its padding bytes are
                # replaced with gas's afterwards, at the same length
                lines.append(f"{item[1]}:")
                markers.append(item[1])
                lines.append(f".balign {hex(int(item[2]))}" + (f", {item[3]}" if item[3] else ""))
            else:
                s = item[2]
                m = re.match(r"^(jmp|call|j[a-z]+)\s+([A-Za-z_.$][\w.$]*)$", s)
                if m and (label_sec.get(m.group(2), None) not in (None, sec.name)
                          or m.group(2) in externals):
                    op, tgt = m.group(1).lower(), m.group(2)
                    code = {"jmp": "0xe9", "call": "0xe8"}.get(op)
                    if code is None and op in JCC:
                        code = f"0x0f, {hex(JCC[op])}"
                    if code is not None:
                        # keystone drops the addend of "sym - . - 4": use last pass's numbers
                        mk = f".Lks_j_{sec.name}_{n}"
                        end = addrs.get(mk, 0) + code.count(",") + 1 + 4
                        rel = (addrs.get(tgt, 0) - end) & 0xFFFFFFFF if mk in addrs else 0
                        lines.append(f"{mk}:")
                        markers.append(mk)
                        lines.append(f".byte {code}")
                        lines.append(f".long {hex(rel)}")
                        continue
                # keystone picks movabs for "mov $imm, %r64"; gas the sign-extended form
                s = re.sub(r"^mov(\s+\$[^,]+,\s*%r(?:[a-d]x|[sd]i|[sb]p|\d+)\s*)$", r"movq\1", s)
                lines.append(_hexify(s))
        return "\n".join(lines), markers

    def _assemble_sections(self, sections: dict[str, _Section], label_sec: dict[str, str],
                           syms: dict[str, int], globals_: set[str], funcs: set[str],
                           sizes: dict[str, tuple[str, str]], name: str, encoding: Encoding,
                           layout_id: int) -> Image:
        ex = sections.pop("__ex_table", None)
        code = [s for s in sections.values() if any(i[0] == "stmt" for i in s.items)]
        words = re.compile(r"(?<![%\w.$])[A-Za-z_.][\w.$]*")
        referenced = {w for s in code for i in s.items if i[0] == "stmt" and
                      not i[2].startswith(".") for w in words.findall(_operands(i[2]))}
        if ex is not None:
            referenced |= {w for i in ex.items if i[0] == "stmt" for w in words.findall(i[2])}
        externals = sorted(w for w in referenced if w not in label_sec and w not in syms
                           and not w.startswith(".") and w.lower() not in _REGISTERS)
        stubs = {e: L.STUB_BASE + 16 * k for k, e in enumerate(externals)}
        addrs: dict[str, int] = dict(stubs)
        pads: dict[str, int] = {}
        data: dict[str, bytes] = {}
        bases: dict[str, int] = {}
        for _ in range(12):
            chunks, marks, base = [], [], L.TEXT_BASE
            for s in code:
                base = (base + max(s.align, 16) - 1) & ~(max(s.align, 16) - 1)
                bases[s.name] = base
                text, markers = self._render(s, label_sec, set(externals), addrs)
                tail = "\n".join(f".quad {m}" for m in markers)
                chunks.append((text + "\n" + tail, base))
                marks.append(markers)
                base += len(data.get(s.name, b"")) or 0x1000
            symbols = {k: v for k, v in addrs.items()}
            for lbl, sec in label_sec.items():
                symbols.setdefault(lbl, bases.get(sec, L.TEXT_BASE))
            results = _run_keystone(chunks, symbols, name)
            new_addrs = dict(stubs)
            new_pads: dict[str, int] = {}
            new_data: dict[str, bytes] = {}
            for s, res, markers in zip(code, results, marks):
                if "error" in res:
                    raise AssembleError(f"{name}: keystone rejected section {s.name}: "
                                        f"{res['error']}")
                raw = bytes.fromhex(res["hex"])
                body, tail = raw[:len(raw) - 8 * len(markers)], raw[len(raw) - 8 * len(markers):]
                for k, m in enumerate(markers):
                    new_addrs[m] = int.from_bytes(tail[8 * k:8 * k + 8], "little")
                fixed = bytearray(body)
                for item in s.items:
                    if item[0] == "align":
                        off = new_addrs[item[1]] - bases[s.name]
                        pad = (-off) % int(item[2])
                        new_pads[item[1]] = pad
                        if pad and (not item[3] or int(item[3], 0) & 0xFF == 0x90):
                            fixed[off:off + pad] = bytes.fromhex("".join(
                                x[2:] for x in _nops(pad)))   # gas pads code with NOPs
                new_data[s.name] = bytes(fixed)
            stable = new_addrs == addrs and new_pads == pads and new_data == data
            addrs, pads, data = new_addrs, new_pads, new_data
            if stable:
                break
        else:
            raise AssembleError(f"{name}: keystone layout did not converge (jump sizes keep "
                                "changing); use --assembler gas")
        sects = tuple(Section(s.name, bases[s.name], data[s.name], True) for s in code)
        symbols_out: dict[str, Symbol] = {}
        for lbl, sec in label_sec.items():
            if lbl.startswith(".Lks_") or lbl not in addrs:
                continue
            size = 0
            if lbl in sizes:
                start, end = sizes[lbl]
                size = addrs.get(end, 0) - addrs.get(start, 0)
            symbols_out[lbl] = Symbol(lbl, addrs[lbl], size,
                                      "func" if lbl in funcs else "notype", lbl in globals_)
        entries = self._extable(ex, addrs, syms, encoding, layout_id, name) if ex else []
        return Image(name, sects, symbols_out, Extable(entries), encoding,
                     {e: stubs[e] for e in externals})

    def _extable(self, ex: _Section, addrs: dict[str, int], syms: dict[str, int],
                 encoding: Encoding, layout_id: int, name: str) -> list:  # type: ignore[type-arg]
        longs: list[tuple[str, str]] = []
        for item in ex.items:
            if item[0] == "stmt":
                head, _, rest = item[2].partition(" ")
                if head.lower() != ".long":
                    raise AssembleError(f"{item[1]}: unexpected '{item[2]}' in __ex_table")
                longs.append((item[1], rest.strip()))
        if len(longs) % 3:
            raise AssembleError(f"{name}: __ex_table holds {len(longs)} words, not whole entries")
        rel = re.compile(r"^\(?\s*([\w.$]+)\s*\)?\s*-\s*\.$")
        entries = []
        for k in range(0, len(longs), 3):
            fields: list[int] = []
            for loc, expr in longs[k:k + 2]:
                m = rel.match(expr)
                if not m or m.group(1) not in addrs:
                    raise AssembleError(f"{loc}: __ex_table word '{expr}' is not label - .")
                fields.append(addrs[m.group(1)])
            loc, expr = longs[k + 2]
            m = rel.match(expr)
            if encoding is Encoding.HANDLER:
                if not m:
                    raise AssembleError(f"{loc}: handler encoding needs 'handler - .', got {expr}")
                entries.append(decode(encoding, layout_id, fields[0], fields[1], 0,
                                      handler=m.group(1)))
            else:
                v = _evaluate(expr, syms)
                if v is None:
                    raise AssembleError(f"{loc}: __ex_table data word '{expr}' is not a constant")
                entries.append(decode(encoding, layout_id, fields[0], fields[1], v))
        return entries

    def _cross_check(self, img: Image, source: str, config: AsmConfig, name: str,
                     encoding: Encoding, layout_id: int) -> None:
        from emu.build.assemble import GasAssembler
        from emu.build.elf import load_object
        gas = GasAssembler(self.gcc)
        if not gas.available():
            return
        ref = gas.assemble_accepted(source, config, name, lambda obj: load_object(
            obj, encoding=encoding, layout_id=layout_id, name=name))
        diff = compare(img, ref)
        if diff:
            raise AssembleError(f"{name}: keystone output differs from GNU as ({diff}); "
                                "refusing to use it (--assembler gas)")


_REGISTERS = {f"{p}{r}" for p in ("", "%") for r in (
    "rax rbx rcx rdx rsi rdi rbp rsp eax ebx ecx edx esi edi ebp esp ax bx cx dx si di bp sp "
    "al bl cl dl sil dil bpl spl ah bh ch dh "
    + " ".join(f"r{n} r{n}d r{n}w r{n}b" for n in range(8, 16))).split()}


_PREFIXES = {"rep", "repe", "repz", "repne", "repnz", "lock", "notrack", "cs", "ds"}


def _operands(stmt: str) -> str:
    """The operand text of an instruction statement (after the mnemonic and prefixes)."""
    parts = stmt.split(None, 1)
    while parts and parts[0].lower() in _PREFIXES and len(parts) > 1:
        parts = parts[1].split(None, 1)
    return parts[1] if len(parts) > 1 else ""


def _nops(n: int) -> list[str]:
    out: list[str] = []
    while n > 0:
        k = min(n, 11)
        out.extend(f"0x{GAS_NOPS[k][i:i + 2]}" for i in range(0, len(GAS_NOPS[k]), 2))
        n -= k
    return out


#: The keystone worker's time limit (it assembles chunk by chunk, slower than gas).
KEYSTONE_SECONDS = 120.0


def _run_keystone(chunks: list[tuple[str, int]], symbols: dict[str, int],
                  name: str) -> list[dict[str, str]]:
    req = json.dumps({"chunks": chunks, "symbols": symbols})
    lim = tool.Limits.from_env()
    lim = tool.Limits(seconds=max(lim.seconds, KEYSTONE_SECONDS), output=lim.output,
                      memory=lim.memory)
    with tool.workdir("emu-ks-") as tmp:
        try:
            proc = tool.run([sys.executable, "-c", _WORKER], workdir=tmp, env=dict(os.environ),
                            stdin=req.encode(), limits=lim)
        except OSError as e:
            raise AssembleError(f"{name}: cannot start the keystone worker: {e.strerror}"
                                ) from None
    if proc.limit:
        raise AssembleError(f"{name}: keystone {tool.describe(proc.limit, lim)}")
    if proc.returncode < 0:
        raise AssembleError(f"{name}: keystone crashed (signal {-proc.returncode}); "
                            "use --assembler gas")
    if proc.returncode != 0:
        errs = proc.errors
        last = (errs.strip().splitlines() or ["no output"])[-1]
        if "No module named 'keystone'" in errs:
            last = "keystone is not installed (pip install keystone-engine)"
        raise AssembleError(f"{name}: keystone failed: {last}")
    try:
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    except ValueError:
        raise AssembleError(f"{name}: keystone worker gave no answer") from None


def compare(ks: Image, gas: Image) -> str:
    """'' when the code bytes and exception tables match, else the first difference."""
    gsec = {s.name: s for s in gas.sections if s.executable}
    for s in ks.sections:
        g = gsec.get(s.name)
        if g is None:
            return f"section {s.name} missing from gas output"
        if (s.addr, len(s.data)) != (g.addr, len(g.data)):
            return (f"section {s.name} at {s.addr:#x}+{len(s.data)} vs gas {g.addr:#x}"
                    f"+{len(g.data)}")
        if s.data != g.data:
            off = next(i for i, (a, b) in enumerate(zip(s.data, g.data)) if a != b)
            return (f"{s.name}+{off:#x} ({gas.symbolize(g.addr + off)}): keystone "
                    f"{s.data[off:off + 8].hex()} vs gas {g.data[off:off + 8].hex()}")
    missing = set(gsec) - {s.name for s in ks.sections}
    if missing:
        return f"sections {', '.join(sorted(missing))} missing from keystone output"
    a = [(e.insn, e.fixup, e.type, e.data, e.handler) for e in ks.extable]
    b = [(e.insn, e.fixup, e.type, e.data, e.handler) for e in gas.extable]
    if a != b:
        return f"__ex_table differs ({len(a)} vs {len(b)} entries)"
    return ""
