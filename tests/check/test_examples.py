"""The CI examples run for real against a small git repository the test creates.

examples/kselftest/emu_check.sh and the "emu check" step of examples/ci/github-workflow.yml
are executed (the workflow step with the shell GitHub uses for ``run:``, ``bash --noprofile
--norc -eo pipefail``) on three commits of a project-written source: base, a change of only
the extable type of the unrolled loop's loads (must fail as a new #MC panic, exit 1) and an
unrelated comment (must pass, exit 0).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_helpers import IN_TREE, ROOT
from ktap import validate

WRAPPER = ROOT / "examples" / "kselftest" / "emu_check.sh"
WORKFLOW = ROOT / "examples" / "ci" / "github-workflow.yml"
EMU = Path(sys.executable).parent / "emu"

Repo = tuple[Path, dict[str, str]]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, LC_ALL="C")
    env["PATH"] = f"{EMU.parent}{os.pathsep}{env.get('PATH', '')}"
    for k in ("EMU", "EMU_TREE", "EMU_FILE", "EMU_ALLOW", "EMU_JUNIT"):
        env.pop(k, None)
    env.update(extra)
    return env


def wrapper(repo: Path, *revs: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(WRAPPER), *revs], cwd=repo, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_emu_is_installed_next_to_python() -> None:
    assert EMU.is_file(), "the emu console script of this venv"


def test_kselftest_wrapper(repo: Repo) -> None:
    path, sha = repo
    r = wrapper(path, sha["base"], sha["type"], EMU=str(EMU))
    assert r.returncode == 1, r.stderr
    doc = validate(r.stdout)
    assert {s.name for t in doc.subtests for s in t.subtests if not s.ok} == {"new_mc_panic"}
    assert "  not ok 3 new_mc_panic" in r.stdout.splitlines()
    r = wrapper(path, sha["type"], sha["comment"], EMU=str(EMU))
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(t.ok for t in validate(r.stdout).subtests)
    assert "# Totals: pass:4 fail:0" in r.stdout
    # defaults: HEAD~1 HEAD in the current directory (the comment commit)
    r = subprocess.run(["bash", str(WRAPPER)], cwd=path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_kselftest_wrapper_allow_and_junit(repo: Repo, tmp_path: Path) -> None:
    path, sha = repo
    xml = tmp_path / "emu.xml"
    r = wrapper(path, sha["base"], sha["type"], EMU_ALLOW="new_mc_panic,return_changed",
                EMU_TREE=str(path), EMU_JUNIT=str(xml))
    assert r.returncode == 0, r.stderr
    assert "  ok 3 new_mc_panic # XFAIL allowed by --allow" in r.stdout
    assert ET.parse(xml).getroot().get("skipped") == "1"


def test_kselftest_wrapper_skips_without_emu(repo: Repo) -> None:
    path, sha = repo
    r = wrapper(path, sha["base"], sha["type"], EMU="/nonexistent/emu")
    assert r.returncode == 4
    assert r.stdout.splitlines()[1].startswith("1..0 # SKIP")


def test_kselftest_wrapper_bad_revision_is_exit_2(repo: Repo) -> None:
    path, sha = repo
    r = wrapper(path, sha["base"], "no-such-rev", EMU=str(EMU))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown revision 'no-such-rev'" in r.stderr


def workflow_step(step_id: str) -> tuple[list[str], str]:
    """The env keys and the ``run: |`` script of one step of the workflow file.

    A small reader for the block style the example uses (no YAML library needed).
    """
    lines = WORKFLOW.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == f"id: {step_id}")
    step_indent = len(lines[start]) - len(lines[start].lstrip())
    end = next((j for j in range(start + 1, len(lines))
                if lines[j].strip().startswith("- ") and
                len(lines[j]) - len(lines[j].lstrip()) < step_indent), len(lines))
    body = lines[start:end]
    env_at = next(i for i, ln in enumerate(body) if ln.strip() == "env:")
    keys = []
    for ln in body[env_at + 1:]:
        if len(ln) - len(ln.lstrip()) <= step_indent:
            break
        keys.append(ln.strip().split(":", 1)[0])
    run_at = next(i for i, ln in enumerate(body) if ln.strip() == "run: |")
    script = []
    for ln in body[run_at + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= step_indent:
            break
        script.append(ln[step_indent + 2:])
    return keys, "\n".join(script) + "\n"


def run_step(repo: Path, base: str, head: str, allow: str = "", script: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the step as GitHub does when the step names no shell: the script written to a
    file and run with ``bash -e {0}`` -- errexit, and no pipefail."""
    keys, text = workflow_step("emu-check")
    assert set(keys) == {"BASE", "HEAD", "EMU_FILE", "EMU_ALLOW"}
    assert "shell:" not in WORKFLOW.read_text(), "the test models GitHub's default shell"
    env = _env(BASE=base, HEAD=head, EMU_FILE=IN_TREE, EMU_ALLOW=allow)
    step = repo.parent / "step.sh"
    step.write_text(text if script is None else script)
    return subprocess.run(["bash", "-e", str(step)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


def test_github_workflow_step(repo: Repo) -> None:
    path, sha = repo
    for f in ("emu-check.xml", "emu-check.txt"):
        (path / f).unlink(missing_ok=True)
    r = run_step(path, sha["base"], sha["type"])
    assert r.returncode == 1, r.stderr
    root = ET.parse(path / "emu-check.xml").getroot()
    failed = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["new_mc_panic"]
    assert "result: regression (new_mc_panic); exit 1" in (path / "emu-check.txt").read_text()
    r = run_step(path, sha["type"], sha["comment"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert ET.parse(path / "emu-check.xml").getroot().get("failures") == "0"
    r = run_step(path, sha["base"], sha["type"], allow="new_mc_panic")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_step_without_pipefail_would_pass_a_regression(repo: Repo) -> None:
    # the reason for the step's `set -o pipefail`: under GitHub's default `bash -e`, the same
    # script without it exits 0 on the regression (tee's status), so this test can fail
    path, sha = repo
    _, text = workflow_step("emu-check")
    assert text.splitlines()[0] == "set -o pipefail"
    r = run_step(path, sha["base"], sha["type"], script="\n".join(text.splitlines()[1:]))
    assert r.returncode == 0
    assert "result: regression" in (path / "emu-check.txt").read_text()


def test_workflow_installs_emu_and_uploads_the_report() -> None:
    text = WORKFLOW.read_text()
    assert re.search(r"fetch-depth: 0", text)
    assert "pip install" in text and "actions/upload-artifact" in text
