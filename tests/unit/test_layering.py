"""Import rules the import-linter contracts (pyproject.toml) cannot express.

- No module imports another module's private names (``from emu.x import _name``) or reaches
  into them through a module alias (``x._name``): a private name may change with its module.
- Reading the era catalog does not start the emulator, and a sweep does not load the terminal
  renderer (docs/architecture.md, "Import rules").
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "emu"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or \
        (PACKAGE.parent / rel / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(path: Path, importer: str | None = None) -> list[str]:
    """Every use in ``path`` (module ``importer``) of a private name another emu module defines."""
    importer = importer or _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
    found: list[str] = []
    aliases: dict[str, str] = {}     # local name → emu module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "emu" and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, path.name == "__init__.py")
            if source.split(".")[0] != "emu":
                continue
            for a in node.names:
                if _is_module(f"{source}.{a.name}"):
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
                elif _private(a.name) and source != importer:
                    found.append(f"{where}:{node.lineno}: from {source} import {a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr)
                and aliases[node.value.id] != importer):
            found.append(f"{where}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in private_imports(p)]
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_scan_sees_a_private_import(tmp_path: Path) -> None:
    # The scan itself: a from-import of a private name and a reach through a module alias.
    probe = tmp_path / "probe.py"
    probe.write_text("from emu.kernel.policy import _UNDECODED\n"
                     "from emu.kernel import policy\n"
                     "x = policy._READS_REGISTERS\n")
    found = private_imports(probe, "emu.runs.probe")
    assert [f.split(": ", 1)[1] for f in found] == [
        "from emu.kernel.policy import _UNDECODED", "emu.kernel.policy._READS_REGISTERS"]


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = (f"import sys; {statement}; "
            f"print(','.join(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_era_catalog_does_not_load_the_emulator() -> None:
    assert _loaded_after("import emu.kernel.eras", ("unicorn", "capstone", "elftools", "rich")) == []


def test_a_sweep_does_not_load_the_terminal_renderer() -> None:
    assert _loaded_after("import emu.runs.sweep", ("rich", "matplotlib")) == []


@pytest.mark.parametrize("leaf", ["emu.errors", "emu.paths", "emu.caching"])
def test_the_shared_leaves_load_nothing_of_emu(leaf: str) -> None:
    loaded = _loaded_after(f"import {leaf}", ("emu.core", "emu.kernel", "emu.build", "emu.runs",
                                              "emu.render", "emu.cli"))
    assert loaded == []
