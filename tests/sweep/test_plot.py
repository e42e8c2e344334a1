"""``emu sweep --plot/--html``: the files exist, decode, and are not trivial."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from emu.render.plot import CLASS_COLOURS

from sweep_helpers import emu


def colours(png: bytes) -> set[tuple[int, ...]]:
    img = mpimg.imread(io.BytesIO(png), format="png")
    px = (np.asarray(img)[..., :3] * 255).round().astype(int).reshape(-1, 3)
    return {tuple(p) for p in np.unique(px, axis=0)}


def rgb(hexcol: str) -> tuple[int, ...]:
    return tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))


def test_png_and_html(tmp_path: Path) -> None:
    png, page = tmp_path / "out.png", tmp_path / "report.html"
    rc, out = emu("sweep", "A", "C", "E", "--len", "256", "--src-align", "0x7e0", "--step", "4",
                  "--plot", str(png), "--html", str(page), "--jobs", "1")
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    seen = colours(data)
    # the three eras behave differently: panic (A), violation (C), ok and benign (E)
    for cls in ("panic", "violation", "ok", "benign"):
        assert rgb(CLASS_COLOURS[cls]) in seen, cls
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    sections = re.findall(r'<section class="variant" id="variant-(\w+)">', text)
    assert sections == ["A", "C", "E"]
    assert "src=\"http" not in text and "<script" not in text      # self-contained
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 4                                           # combined + 3 variants
    for b64 in imgs:
        assert len(colours(base64.b64decode(b64))) > 5
    assert "benign (tail zero-padded)" in text and "zero_with_missing" in text


def test_error_metric_with_length_rows(tmp_path: Path) -> None:
    png = tmp_path / "err.png"
    rc, _ = emu("sweep", "C", "E", "--len", "64..192/64", "--src-align", "0x7e0", "--step",
                "line", "--plot", str(png), "--metric", "error", "--jobs", "1")
    assert rc == 0
    seen = colours(png.read_bytes())
    assert len(seen) > 20   # a diverging colour scale: C under (blue), E over (red)


def test_plot_refuses_to_overwrite_results(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    res = tmp_path / "r.db"
    rc, _ = emu("sweep", "C", "--len", "8", "--results", str(res), "--plot", str(res))
    assert rc == 2 and not res.exists()


def test_violation_metric_tells_eras_apart(tmp_path: Path) -> None:
    """C (returns 0) and D (consumes the poison twice) share the class "violation" but not
    the violation name; the violation heatmap shows both colours."""
    from emu.render.plot import LABEL_COLOURS
    png = tmp_path / "v.png"
    rc, _ = emu("sweep", "C", "D", "--len", "128", "--step", "line", "--plot", str(png),
                "--metric", "violation", "--jobs", "1")
    assert rc == 0
    seen = colours(png.read_bytes())
    for name in ("zero_with_missing", "poison_consumed_twice"):
        assert rgb(LABEL_COLOURS[name]) in seen, name
    assert rgb(CLASS_COLOURS["panic"]) not in seen


def test_every_cpu_path_has_its_own_panel(tmp_path: Path) -> None:
    """Era F with --cpu all: the rep_movsq paths (none, rep_good) consume the poison twice,
    the rep_movsb paths (erms, fsrm) are ok.  Per-path panels show both; merged into the
    worst over paths (--worst-over-paths, only on request) era F is all violation."""
    from emu.render.plot import panels
    from emu.runs.sweep import Grid, parse_variant
    png, merged = tmp_path / "paths.png", tmp_path / "worst.png"
    argv = ["sweep", "F", "--len", "512", "--step", "line", "--cpu", "all", "--jobs", "1"]
    assert emu(*argv, "--plot", str(png))[0] == 0
    assert emu(*argv, "--plot", str(merged), "--worst-over-paths")[0] == 0
    seen, worst = colours(png.read_bytes()), colours(merged.read_bytes())
    assert rgb(CLASS_COLOURS["ok"]) in seen and rgb(CLASS_COLOURS["violation"]) in seen
    assert rgb(CLASS_COLOURS["ok"]) not in worst and rgb(CLASS_COLOURS["violation"]) in worst
    g = Grid(variants=(parse_variant("F", None),), cpus=("none", "rep_good", "erms", "fsrm"))
    recs = [{"case": c.to_json()} for c in g.cases()][:: 64]
    assert [p for _, _, p in panels(g, recs)] == [
        f"cpu {c}: copy_user_generic" for c in ("none", "rep_good", "erms", "fsrm")]
    assert [p for _, _, p in panels(g, recs, worst_over_paths=True)] == [None]
