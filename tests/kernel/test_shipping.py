"""What a cluster worker gets of a built input (``emu.build.shipping``): a .o's bytes, the
slice of a vmlinux that its routines read.

Debian's real 6.1 and 6.12 debug images (scripts/linux-dbg, as in test_real_vmlinux.py) are
cut for their routines, the slice goes through pickle as Dask sends it, and the target a
worker builds from it must be the one the file gives: the same window, symbols, entries,
boot-time patching, era detection and rules, on every CPU path.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, GasAssembler
from emu.build.objects import built_target
from emu.build.resolve import parse_spec, portable, resolve
from emu.build.shipping import ship
from emu.core.machine import Buffers
from emu.errors import ImageError, UsageError
from emu.kernel.eras import ERAS, parse_cpu
from emu.runs.sweep import variant_of

from test_real_vmlinux import CPUS, behaviour, vmlinux

ROOT = Path(__file__).resolve().parents[2]
RUNS = [Buffers(length=4096, src_align=0x7E0, poison=(0x960,)),
        Buffers(length=4096, src_align=0x7E0, unmapped=(0x820,))]


def same_target(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.image.name == b.image.name
    assert a.image.sections == b.image.sections
    assert a.image.symbols == b.image.symbols
    assert list(a.image.extable) == list(b.image.extable)
    assert a.image.origin == b.image.origin
    assert a.detection == b.detection and a.era == b.era and a.settings == b.settings
    assert a.version == b.version


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_a_vmlinux_slice_builds_the_files_targets(version: str, tmp_path: Path) -> None:
    path = str(vmlinux(version))
    absent = str(tmp_path / "vmlinux")          # same name, no file: a worker's view
    catalog = variant_of(parse_spec(f"vmlinux:{path}")).catalog
    routines = tuple(r.name for r in catalog.routines)
    sent = ship(path, linked=True, routines=routines)
    whole = Path(path).stat().st_size
    assert sent.size < 64 * 1024 < whole // 1000          # ~20 KB of a 350-630 MB file
    piece = pickle.loads(pickle.dumps(sent.contents))
    paths = {(cpu, catalog.select_routine(parse_cpu(cpu)).name) for cpu in CPUS}   # a sweep's
    paths |= {("none", r) for r in routines}
    for cpu, routine in sorted(paths):
        c = parse_cpu(cpu)
        a = built_target(path, linked=True, cpu=c, routine=routine)
        b = built_target(absent, linked=True, cpu=c, routine=routine, contents=piece)
        same_target(a, b)
        if cpu == "icelake-sp":
            r = a.routine_for(routine, c)
            for case in RUNS:
                assert behaviour(a.run(r, case)) == behaviour(b.run(r, case))


def test_a_slice_refuses_what_was_not_sent() -> None:
    path = str(vmlinux("6.12"))
    piece = ship(path, linked=True, routines=("rep_movs_alternative",)).contents
    # a routine it was not cut for, and bytes outside its windows: errors, never zeros
    with pytest.raises(ImageError):
        built_target(path, linked=True, cpu=frozenset(), routine="__get_user_8",
                     contents=piece)
    text = piece.section(".text")
    assert text is not None
    with pytest.raises(ImageError, match="not in the slice"):
        piece.read(text.addr, 64)
    # a name the image does not define: the file's own error, word for word
    errors = []
    for contents in (None, ship(path, linked=True, routines=("no_such_routine",)).contents):
        with pytest.raises(ImageError) as e:
            built_target(path, linked=True, cpu=frozenset(), routine="no_such_routine",
                         contents=contents)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "defines none of no_such_routine" in errors[0]


def test_an_object_travels_as_its_bytes(tmp_path: Path) -> None:
    era = ERAS["E"]
    obj = tmp_path / "mine.o"
    obj.write_bytes(GasAssembler().assemble((ROOT / "asm" / "era-E.S").read_text(),
                                            AsmConfig(int(era.encoding), era.ex_layout,
                                                      frozenset()), "mine.S"))
    spec = portable(parse_spec(str(obj)))
    assert spec.digest is not None and spec.shipped == obj.read_bytes()
    local = resolve(parse_spec(str(obj)), frozenset(), routine="copy_user_generic_string")
    obj.unlink()                                   # the worker has no file, only the bytes
    t = resolve(spec, frozenset(), routine="copy_user_generic_string")
    same_target(local, t)
    r = t.routine_for("copy_user_generic_string")
    assert behaviour(t.run(r, RUNS[0])) == behaviour(local.run(r, RUNS[0]))
    # the digest stands for the bytes: a spec that lost them is refused, not read from disk
    with pytest.raises(UsageError, match="not attached"):
        resolve(type(spec)(spec.kind, spec.value, digest=spec.digest), frozenset())
