"""What dashboards read from emu check: nested KTAP (checked by our reading of ktap.rst and by
the kernel's own KTAP parser, tools/testing/kunit/kunit_parser.py from Debian's
linux-source-6.12, a run-time input), KTAP and JUnit on an input error, JUnit times, and
snapshots that cannot stand for a matrix run."""

from __future__ import annotations

import datetime
import functools
import io
import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from check_helpers import run_cli
from emu.build.sources import debian_file
from emu.errors import InputError
from emu.runs import check
from ktap import validate

Cap = pytest.CaptureFixture[str]


@functools.lru_cache(maxsize=1)
def kunit_parser() -> ModuleType:
    try:
        parser = debian_file("6.12", "tools/testing/kunit/kunit_parser.py")
    except InputError as e:
        pytest.fail(f"{e} -- `make test` runs scripts/linux-sources", pytrace=False)
    sys.path.insert(0, str(parser.parent))
    try:
        spec = importlib.util.spec_from_file_location("kunit_parser", parser)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["kunit_parser"] = mod      # its dataclasses look their module up
        spec.loader.exec_module(mod)
        # its summary goes to a buffer, not to a stdout pytest may have closed since
        mod.stdout = sys.modules["kunit_printer"].Printer(io.StringIO())
    finally:
        sys.path.remove(str(parser.parent))
    return mod


def test_the_kernels_ktap_parser_reads_the_nested_output(sources: dict[str, Path],
                                                         capsys: Cap) -> None:
    code, out, _ = run_cli(["check", str(sources["base"]), str(sources["type"]), "--ktap"],
                           capsys)
    assert code == 1
    kp = kunit_parser()
    test = kp.parse_run_tests(out.splitlines())
    capsys.readouterr()
    assert test.counts.errors == 0, test.log
    assert len(test.subtests) == len(check.MATRIX_CPUS)
    assert [t.name for t in test.subtests] == [f"era E cpu {c}" for c in check.MATRIX_CPUS]
    for t in test.subtests:
        assert t.status == kp.TestStatus.FAILURE
        assert [s.name for s in t.subtests] == list(check.CLASSES)
        failed = [s.name for s in t.subtests if s.status == kp.TestStatus.FAILURE]
        assert failed == ["new_mc_panic"]
    code, out, _ = run_cli(["check", str(sources["base"]), str(sources["comment"]), "--ktap"],
                           capsys)
    test = kp.parse_run_tests(out.splitlines())
    capsys.readouterr()
    assert code == 0 and test.counts.errors == 0 and test.status == kp.TestStatus.SUCCESS


@pytest.mark.parametrize("argv, needle", [
    (["{base}", "/nonexistent.S"], "no such file"),
    (["--against", "{empty}", "{type}"], "no cases"),
    (["{base}", "{type}", "--routine", "nope"], "defined in neither"),
    (["{base}", "{type}", "--no-such-option"], "unrecognized arguments"),
    (["{base}", "{type}", "--allow", "nope"], "unknown class"),
])
def test_an_input_error_is_still_ktap_and_junit(argv: list[str], needle: str,
                                                sources: dict[str, Path], tmp_path: Path,
                                                capsys: Cap) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": check.SNAPSHOT_FORMAT,
                                 "version": check.SNAPSHOT_VERSION,
                                 "matrix": check.matrix_json(), "source": "x", "era": "E",
                                 "detected_era": "E", "routines": [], "callers": {},
                                 "conventions": {}, "cases": {}, "map": {}}))
    xml = tmp_path / "report.xml"
    subst = {"base": sources["base"], "type": sources["type"], "empty": empty}
    code, out, err = run_cli(["check", *[a.format(**subst) for a in argv], "--ktap",
                              "--junit", str(xml)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    doc = validate(out)
    [t] = doc.subtests
    assert not t.ok and t.directive.startswith("ERROR") and needle in t.directive
    assert any(d.startswith("# error:") and needle in d for d in t.diagnostics)
    assert out.splitlines()[-1].endswith("error:1")
    root = ET.parse(xml).getroot()
    assert root.get("errors") == "1"
    [error] = root.iter("error")
    assert needle in (error.get("message") or "")
    kp = kunit_parser()
    parsed = kp.parse_run_tests(out.splitlines())
    capsys.readouterr()
    assert parsed.status != kp.TestStatus.SUCCESS


def test_junit_has_time_and_timestamp(sources: dict[str, Path], tmp_path: Path,
                                      capsys: Cap) -> None:
    xml = tmp_path / "report.xml"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    code, _, _ = run_cli(["check", str(sources["base"]), str(sources["type"]), "--junit",
                          str(xml)], capsys)
    after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert code == 1
    root = ET.parse(xml).getroot()
    for el in (root, root.find("testsuite")):
        assert el is not None
        t = float(el.get("time") or "-1")
        assert 0 < t <= (after - before).total_seconds() + 1
        stamp = datetime.datetime.fromisoformat(el.get("timestamp") or "")
        assert before <= stamp <= after


def _snapshot(sources: dict[str, Path], tmp_path: Path, capsys: Cap) -> dict:
    snap = tmp_path / "snap.json"
    assert run_cli(["snapshot", str(sources["base"]), "-o", str(snap)], capsys)[0] == 0
    return json.loads(snap.read_text())


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: d.update(cases={}, map={}), "no cases"),
    (lambda d: d["cases"].pop(sorted(d["cases"])[0]), "1 missing"),
    (lambda d: d.update(format="junit"), "not an emu snapshot"),
    (lambda d: d.update(version=1), "snapshot version 1"),
    (lambda d: d.update(version=check.SNAPSHOT_VERSION + 1), "record it again"),
])
def test_a_snapshot_that_is_not_a_matrix_run_is_refused(tamper, needle: str,  # type: ignore[no-untyped-def]
                                                        sources: dict[str, Path],
                                                        tmp_path: Path, capsys: Cap) -> None:
    d = _snapshot(sources, tmp_path, capsys)
    tamper(d)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    code, out, err = run_cli(["check", "--against", str(bad), str(sources["base"])], capsys)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1
