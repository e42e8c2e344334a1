"""Pictures of a sweep: per-variant heatmaps (PNG) and a self-contained HTML report.

Each panel is one variant: columns are the fault offset (the poisoned source byte, or the
first byte of the non-present user page), rows are the length, an alignment, or — when
neither varies — the CPU path / routine / direction / fault kind.  A cell shows the outcome
class of that case (``sweep.CLASSES``, best to worst); with ``metric="violation"`` the worst
violation name (or machine state) of the case, which tells apart eras that share a class
(returning 0 after #MC vs consuming the poison twice); or with ``metric="error"`` the error
of the returned value against the exact remainder (returned − (len − bytes copied)):
positive means the routine under-reported what it copied, negative means it claimed bytes it
never copied.  When several cases fall on one cell (other swept dimensions), the worst class
or the largest error is shown.  Each CPU path (CPU features and the routine they select) of a
variant gets its own panel, so a path that is fine is not painted with another path's
violations; ``worst_over_paths=True`` merges them into one panel showing the worst.  Panels
sit side by side (or stacked, for one-row panels) so era differences show at a glance.

Uses matplotlib's Agg backend only; nothing here needs a display.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, SymLogNorm  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from emu.errors import InputError  # noqa: E402
from emu.runs.sweep import CLASSES, Case, Grid  # noqa: E402

#: One colour per outcome class, in ``CLASSES`` order.
CLASS_COLOURS: dict[str, str] = {
    "ok": "#2ca02c", "benign": "#ffdd57", "violation": "#ff7f0e",
    "smap_violation": "#9467bd", "protection_fault": "#c5b0d5", "system_instruction": "#c49c94",
    "oops": "#8c564b", "hang": "#7f7f7f", "panic": "#d62728", "tool_error": "#000000",
}
#: ``metric="violation"``: labels from best to worst, with their colours.
LABEL_COLOURS: dict[str, str] = {
    "ok": "#2ca02c", "modified_past_reported": "#ffdd57", "claimed_nothing": "#bcbd22",
    "garbage_past_reported": "#e377c2", "poison_consumed_twice": "#ff7f0e",
    "bytes_mismatch": "#17becf", "write_outside_buffer": "#1f77b4",
    "out_of_range_return": "#aec7e8", "zero_with_missing": "#3b6fb6",
    "smap_violation": "#9467bd", "protection_fault": "#c5b0d5", "system_instruction": "#c49c94",
    "oops": "#8c564b", "hang": "#7f7f7f", "panic": "#d62728", "tool_error": "#000000",
}
LABELS = tuple(LABEL_COLOURS)


def label(rec: dict[str, Any]) -> str:
    """The worst violation name or machine state of a record (``metric="violation"``)."""
    names = set(rec["violations"]) | {rec["class"] if rec["class"] == "tool_error"
                                      else rec["state"]}
    names.discard("returned")
    ranked = [n for n in LABELS if n in names]
    return ranked[-1] if ranked else "ok"


def _categories(metric: str) -> tuple[tuple[str, ...], dict[str, str]]:
    return (CLASSES, CLASS_COLOURS) if metric == "class" else (LABELS, LABEL_COLOURS)


def _category(rec: dict[str, Any], metric: str) -> str:
    return rec["class"] if metric == "class" else label(rec)


def _row_key(case: Case, y_axis: str) -> Any:
    if y_axis in ("length", "src_align", "dst_align"):
        return getattr(case, y_axis)
    return f"{case.direction}/{case.kind}"   # the CPU path is the panel


def choose_y(grid: Grid, y_axis: str = "auto") -> str:
    """The row dimension: as asked, or the first of length/src/dst alignment that varies."""
    if y_axis != "auto":
        return y_axis
    for name, values in (("length", grid.lengths), ("src_align", grid.src_aligns),
                         ("dst_align", grid.dst_aligns)):
        if len(values) > 1:
            return name
    return "path"


def path_of(case: Case) -> str:
    """The CPU path of a case: CPU features and the routine run."""
    return f"cpu {case.cpu}: {case.routine}"


def matrix(records: Sequence[dict[str, Any]], variant: str, metric: str,
           y_axis: str, path: str | None = None) -> tuple[list[int], list[Any], np.ndarray]:
    """Cells of one variant's heatmap (of one CPU path, or of all when ``path`` is None):
    (column offsets, row keys, values with NaN = no case)."""
    cells: dict[tuple[Any, int], float] = {}
    for rec in records:
        case = Case.from_json(rec["case"])
        if case.variant != variant or (path is not None and path_of(case) != path):
            continue
        key = (_row_key(case, y_axis), case.offset)
        if metric in ("class", "violation"):
            val = float(_categories(metric)[0].index(_category(rec, metric)))
            cells[key] = max(cells.get(key, -1.0), val)
        else:
            err = rec.get("error")
            if err is None:
                cells.setdefault(key, math.nan)
                continue
            old = cells.get(key, math.nan)
            cells[key] = err if math.isnan(old) or abs(err) > abs(old) else old
    xs = sorted({k[1] for k in cells})
    ys = sorted({k[0] for k in cells}, key=lambda v: (isinstance(v, str), v))
    m = np.full((len(ys), len(xs)), np.nan)
    xi = {x: i for i, x in enumerate(xs)}
    yi = {y: i for i, y in enumerate(ys)}
    for (y, x), val in cells.items():
        m[yi[y], xi[x]] = val
    return xs, ys, m


def _ticks(values: Sequence[Any], n: int = 8, fmt: Any = hex) -> tuple[list[int], list[str]]:
    if not values:
        return [], []
    step = max(1, math.ceil(len(values) / n))
    idx = list(range(0, len(values), step))
    return idx, [fmt(values[i]) if isinstance(values[i], int) else str(values[i]) for i in idx]


def _panel(ax: Any, records: Sequence[dict[str, Any]], variant: str, label: str, metric: str,
           y_axis: str, vmax: float, path: str | None = None) -> tuple[Any, set[int]]:
    """Draw one panel; returns the image and the category indexes its cells show."""
    xs, ys, m = matrix(records, variant, metric, y_axis, path)
    shown = {int(v) for v in np.unique(m[~np.isnan(m)])} if metric != "error" else set()
    missing = np.isnan(m)
    if metric == "error":  # NaN = not returned (grey); cells with no case are drawn white
        cases = [Case.from_json(r["case"]) for r in records if r["case"]["variant"] == variant]
        present = {(c.offset, _row_key(c, y_axis)) for c in cases
                   if path is None or path_of(c) == path}
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                missing[i, j] = (x, y) not in present
    if metric != "error":
        names, colours = _categories(metric)
        cmap = ListedColormap([colours[c] for c in names]).with_extremes(bad="#ffffff")
        img = ax.imshow(m, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5,
                        vmax=len(names) - 0.5)
    else:
        cmap = plt.get_cmap("coolwarm").with_extremes(bad="#bbbbbb")
        img = ax.imshow(m, aspect="auto", interpolation="nearest", cmap=cmap,
                        norm=SymLogNorm(linthresh=1, vmin=-vmax, vmax=vmax))
    if missing.any():
        ax.imshow(np.where(missing, 1.0, np.nan), aspect="auto", interpolation="nearest",
                  cmap=ListedColormap(["#ffffff"]))
    ax.set_title(label, fontsize=10)
    xt, xl = _ticks(xs)
    ax.set_xticks(xt, xl, fontsize=7)
    yt, yl = _ticks(ys, 40 if y_axis == "path" else 12, str if y_axis == "length" else hex)
    ax.set_yticks(yt, yl, fontsize=7)
    ax.set_ylabel("" if y_axis == "path" else y_axis, fontsize=8)
    return img, shown


def _labels(grid: Grid) -> list[tuple[str, str]]:
    out = []
    for v in grid.variants:
        name = f"{v.era.key} {v.era.versions}" if v.era else v.label
        out.append((v.spec, name))
    return out


def panels(grid: Grid, records: Sequence[dict[str, Any]], *,
           worst_over_paths: bool = False) -> list[tuple[str, str, str | None]]:
    """(variant spec, panel title, CPU path or None for all) of each panel, in grid order:
    one per CPU path of each variant, or one per variant with ``worst_over_paths``."""
    paths: dict[str, dict[str, None]] = {}
    for r in records:
        c = Case.from_json(r["case"])
        paths.setdefault(c.variant, {})[path_of(c)] = None
    out: list[tuple[str, str, str | None]] = []
    for spec, name in _labels(grid):
        mine = list(paths.get(spec, {}))
        if worst_over_paths or len(mine) <= 1:
            title = name if len(mine) <= 1 else f"{name} (worst over {len(mine)} paths)"
            out.append((spec, title, None))
        else:
            out.extend((spec, f"{name}\n{p}", p) for p in mine)
    return out


def figure(grid: Grid, records: Sequence[dict[str, Any]], *, metric: str = "class",
           y_axis: str = "auto", only: str | None = None,
           worst_over_paths: bool = False) -> Any:
    """A matplotlib figure: one panel per variant and CPU path (or only the variant
    ``only``; one panel per variant, the worst over its paths, with ``worst_over_paths``)."""
    y = choose_y(grid, y_axis)
    variants = [(s, n, p) for s, n, p in panels(grid, records,
                                                 worst_over_paths=worst_over_paths)
                if only is None or s == only]
    cases = [Case.from_json(r["case"]) for r in records]
    rows = max([len({_row_key(c, y) for c in cases
                     if c.variant == spec and (path is None or path_of(c) == path)})
                for spec, _, path in variants] or [0])
    errs = [abs(r["error"]) for r in records if r.get("error") is not None]
    vmax = max([1.0] + errs)
    strip = rows <= 2
    n = len(variants)
    if strip:   # one-row panels: each variant × path is a row of its own
        fig, axes = plt.subplots(n, 1, figsize=(12, 1.1 * n + 1.4), squeeze=False,
                                 sharex=True, layout="constrained")
        axes = list(axes[:, 0])
    else:       # a row of panels per variant, a column per CPU path
        order = list(dict.fromkeys(spec for spec, _, _ in variants))
        cols = max(sum(1 for s_, _, _ in variants if s_ == spec) for spec in order)
        wide = 2.2 if y == "path" else 0  # room for each panel's own row labels
        fig, grid_axes = plt.subplots(len(order), cols,
                                      figsize=((3.6 + wide) * cols + 1.5, 4.8 * len(order)),
                                      squeeze=False, sharey=y != "path", layout="constrained")
        axes, used = [], {spec: 0 for spec in order}
        for spec, _, _ in variants:
            axes.append(grid_axes[order.index(spec), used[spec]])
            used[spec] += 1
        for r_, spec in enumerate(order):
            for c_ in range(used[spec], cols):
                grid_axes[r_, c_].set_visible(False)
    img = None
    shown: set[int] = set()
    for ax, (spec, name, path) in zip(axes, variants):
        img, cats = _panel(ax, records, spec, name, metric, y, vmax, path)
        shown |= cats
        if not strip or ax is axes[-1]:
            ax.set_xlabel("fault offset (source byte poisoned / user page unmapped)",
                          fontsize=8)
    if metric != "error":
        names, colours = _categories(metric)
        present = {names[i] for i in shown}   # what the cells show (worst, when merged)
        handles = [Patch(color=colours[c], label=c) for c in names if c in present]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(7, len(handles)),
                   fontsize=8, frameon=False)
    elif img is not None:
        fig.colorbar(img, ax=axes, shrink=0.8,
                     label="returned - (len - bytes copied)")
    fig.suptitle(_title(grid, metric), fontsize=10)
    return fig


def _title(grid: Grid, metric: str) -> str:
    what = {"class": "outcome class", "violation": "worst violation or state"}.get(
        metric, "error of the returned value")
    lens = ",".join(str(n) for n in grid.lengths[:4]) + ("..." if len(grid.lengths) > 4 else "")
    return (f"{what}: len {lens}, faults {'+'.join(grid.kinds)}, "
            f"cpu {'/'.join(grid.cpus)}, copy_{'/'.join(grid.directions)}_user")


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}") from None


def write_png(grid: Grid, records: Sequence[dict[str, Any]], path: str, *,
              metric: str = "class", y_axis: str = "auto",
              worst_over_paths: bool = False) -> None:
    """Write the heatmap of every variant and CPU path to ``path``."""
    _write(path, _png_bytes(figure(grid, records, metric=metric, y_axis=y_axis,
                                   worst_over_paths=worst_over_paths)))


def write_html(grid: Grid, records: Sequence[dict[str, Any]], summary: dict[str, Any],
               path: str, *, metric: str = "class", y_axis: str = "auto",
               worst_over_paths: bool = False) -> None:
    """Write a self-contained HTML report: the combined heatmap, then one section per
    variant with its heatmap (inline base64 PNG) and its outcome/violation tables."""
    def img(fig: Any) -> str:
        data = base64.b64encode(_png_bytes(fig)).decode()
        return f'<img alt="heatmap" src="data:image/png;base64,{data}">'

    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             "<title>emu sweep</title><style>body{font-family:sans-serif;margin:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:13px}code{font-size:12px}img{max-width:100%}</style></head><body>",
             f"<h1>emu sweep: {summary['cases']} cases</h1>",
             f"<p>{esc(_title(grid, metric))}</p>",
             img(figure(grid, records, metric=metric, y_axis=y_axis,
                         worst_over_paths=worst_over_paths))]
    for spec, name in _labels(grid):
        v = summary["variants"][spec]
        parts.append(f'<section class="variant" id="variant-{esc(v["label"])}">')
        parts.append(f"<h2>{esc(name)}</h2><p>{v['cases']} cases</p>")
        parts.append(img(figure(grid, records, metric=metric, y_axis=y_axis, only=spec,
                                worst_over_paths=worst_over_paths)))
        parts.append("<table><tr><th>outcome</th><th>count</th>"
                     "<th>minimal reproducer</th></tr>")
        for cls, slot in v["classes"].items():
            parts.append(f"<tr><td>{esc(cls)}</td><td>{slot['count']}</td>"
                         f"<td><code>{esc(slot.get('example', '-'))}</code></td></tr>")
        parts.append("</table>")
        if v["violations"]:
            parts.append("<table><tr><th>violation</th><th>count</th><th>copy_from_user "
                         "caller</th><th>minimal reproducer</th></tr>")
            for name_, slot in v["violations"].items():
                who = ("benign (tail zero-padded)" if slot["benign_for_copy_from_user"]
                       else "not benign")
                parts.append(f"<tr><td title=\"{esc(slot['meaning'])}\">{esc(name_)}</td>"
                             f"<td>{slot['count']}</td><td>{who}</td>"
                             f"<td><code>{esc(slot.get('example', '-'))}</code></td></tr>")
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    _write(path, "\n".join(parts).encode())
